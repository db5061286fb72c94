"""Cross-process wake-ups: "a job was just queued" as one Unix datagram.

Jobs are queued by gateway processes and leased by the dispatcher in the
supervisor process, through the SQLite job store they share. Polling that
store alone makes the pickup delay of a job the poll interval (a latency
paid by every job, and idle SQLite work the rest of the time). So the
dispatcher also binds a Unix datagram socket in the data directory
(:func:`dora.layout.dispatch_socket_path`), and whoever queues a job sends it
one byte there (:func:`wake`): the dispatcher leases at once.

A wake-up is only a hint, never the carrier of a job: the job is already
committed to the store when it is sent, and polling stays as the safety net
(several dispatchers, a store on another machine, a lost datagram). So the
sender never waits and never fails: no listener, a stale socket file left by
a killed dispatcher, a full receive queue (the kernel bounds it) or a path
too long for ``sun_path`` all just mean "no wake-up" — the next poll takes
the job. The listener (:class:`WakeListener`) drains at most
:data:`DRAIN_LIMIT` datagrams per readiness callback and coalesces them into
one call of its ``on_wake``: a burst of submits is one lease.

One listener per path: a second one binding the same path takes it over
(unlink, then bind — which is also how a stale file from a killed run is
replaced), and the first one, then unreachable, only polls. A listener
removes its socket file when it closes, unless another has taken it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Self

__all__ = ["DRAIN_LIMIT", "MAX_PATH_BYTES", "WakeListener", "Waker", "usable", "wake"]

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux (104 on the BSDs and macOS), its last one a NUL.
MAX_PATH_BYTES = 107 if sys.platform.startswith("linux") else 103
MESSAGE = b"!"
MAX_DATAGRAM = 64  # bytes read per datagram; anything longer is truncated, harmlessly
DRAIN_LIMIT = 256  # datagrams read per readiness callback before yielding to the loop


def usable(path: Path) -> bool:
    """Whether ``path`` fits in a Unix socket address (else: no wake-ups, polling only)."""
    return 0 < len(os.fsencode(path)) <= MAX_PATH_BYTES


def wake(path: Path) -> bool:
    """Send one wake-up to the listener at ``path``, never blocking, never raising.

    True if the datagram was queued for a listener; False when there is none
    (no file, a stale file, a full queue, a path too long): polling covers it.
    """
    if not usable(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(MESSAGE, os.fsencode(path))
    except OSError:  # ENOENT, ECONNREFUSED (stale), EAGAIN (queue full), EACCES...
        return False
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class Waker:
    """A sender bound to one listener's path: ``waker()`` after each enqueue.

    Holds no socket (each wake-up opens and closes one: a few microseconds,
    against the milliseconds of the store's commit), so it needs no closing.
    """

    path: Path

    def __call__(self) -> bool:
        return wake(self.path)


class WakeListener:
    """Binds ``path`` and calls ``on_wake()`` on the event loop when datagrams arrive.

    ``async with WakeListener(path, on_wake) as listener:``; ``listener.bound``
    tells whether it listens (False when the path is too long or cannot be
    bound: the caller then relies on polling). Closing twice is harmless.
    """

    def __init__(self, path: Path, on_wake: Callable[[], None]) -> None:
        self.path = path
        self._on_wake = on_wake
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entered = False

    @property
    def bound(self) -> bool:
        return self._sock is not None

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a WakeListener is entered once")
        self._entered = True
        if not usable(self.path):
            log.warning("no job wake-ups: %s is too long for a socket address", self.path)
            return self
        try:
            sock = self._bind()
        except OSError as exc:
            log.warning("no job wake-ups: cannot bind %s: %s", self.path, exc)
            return self
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._sock = sock
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def _bind(self) -> socket.socket:
        """Bind a fresh socket at the path (a leftover file is replaced)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # stale from a killed run, or another listener's
            sock.bind(os.fsencode(self.path))
            st = os.stat(self.path)
        except BaseException:
            sock.close()
            raise
        self._inode = (st.st_dev, st.st_ino)
        return sock

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        got = 0
        for _ in range(DRAIN_LIMIT):
            try:
                sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # not expected on a bound datagram socket
                log.warning("job wake-up socket: %s", exc)
                break
            got += 1
        if got:
            self._on_wake()

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still this one's)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
