"""Is an opened file inside a directory, whatever symbolic links led to it?

Keys are validated, so their text cannot climb out of a bucket; a symbolic
link placed inside the data directory still could. Checking that with
``os.path.realpath`` costs an ``lstat`` per path component, in Python, on
every read. Once the file is open, the kernel already knows where it really
is: on Linux ``/proc/self/fd/<fd>`` names it, in one ``readlink``. That is
the fast path here; ``realpath`` remains the fallback (no ``/proc``, or a
file replaced or deleted since it was opened, which the kernel names with a
`` (deleted)`` suffix).

``O_PATH`` opens a file for exactly this (and ``fstat``) without the right
to read it, so a stat can be confined the same way.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["O_PATH", "RealDirs", "fd_within", "path_within"]

O_PATH: int = getattr(os, "O_PATH", os.O_RDONLY)
_FD_LINKS = "/proc/self/fd"
_has_fd_links = os.path.isdir(_FD_LINKS)


def path_within(path: str | Path, real_dir: str) -> bool:
    """Whether ``path``, with every link resolved, is ``real_dir`` or inside it."""
    real = os.path.realpath(path)
    return os.path.commonpath((real, real_dir)) == real_dir


def fd_within(fd: int, path: str | Path, real_dir: str) -> bool:
    """Whether the file open as ``fd`` (opened from ``path``) is inside ``real_dir``.

    ``real_dir`` must itself be resolved (see :class:`RealDirs`).
    """
    if _has_fd_links:
        try:
            real = os.readlink(f"{_FD_LINKS}/{fd}")
        except OSError:
            pass
        else:
            if real.startswith(real_dir) and real[len(real_dir) : len(real_dir) + 1] == "/":
                return True
    return path_within(path, real_dir)


class RealDirs:
    """``os.path.realpath`` of a few long-lived directories (buckets), remembered.

    A bucket's directory is made by the store and is not expected to move;
    when it does (an operator replaced it), the confinement check fails safe:
    files then look outside and are refused, until the store restarts.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._known: dict[Path, str] = {}
        self._lock = threading.Lock()

    def __call__(self, directory: Path) -> str:
        real = self._known.get(directory)
        if real is None:
            real = os.path.realpath(directory)
            with self._lock:
                if len(self._known) >= self._capacity:
                    self._known.clear()
                self._known[directory] = real
        return real
