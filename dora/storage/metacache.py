"""Object metadata already read, kept while its files stay the same.

Reading an object's metadata means opening, reading and parsing its JSON
document; serving a hot object does that on every request. The document is
always replaced whole (written aside, then renamed), and so is the data
file, so both files' identities (device, inode, size, mtime) change whenever
either does. A cached entry is therefore valid exactly while a ``stat`` of
each file still shows the identity recorded when it was read — one system
call each instead of an open, a read and a parse. Several processes share
the store's directory, and this check needs no coordination between them.

Bounded (least recently used entries go first) and thread-safe: the store
reads in worker threads.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["Identity", "MetaCache", "identity"]

V = TypeVar("V")
Identity = tuple[int, int, int, int, int, int, int, int]
"""The data file's (dev, ino, size, mtime_ns), then the metadata file's."""


def identity(data: os.stat_result, meta: os.stat_result) -> Identity:
    """Both files' identities, as recorded with a cached entry."""
    return (
        data.st_dev,
        data.st_ino,
        data.st_size,
        data.st_mtime_ns,
        meta.st_dev,
        meta.st_ino,
        meta.st_size,
        meta.st_mtime_ns,
    )


class MetaCache(Generic[V]):
    """Values keyed by ``(bucket, key)``, each valid for one :data:`Identity`."""

    def __init__(self, capacity: int = 8192) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[Identity, V]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: tuple[str, str], ident: Identity) -> V | None:
        """The value recorded for ``name`` if its files still have ``ident``."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return None
            if entry[0] != ident:
                del self._entries[name]
                return None
            self._entries.move_to_end(name)
            return entry[1]

    def put(self, name: tuple[str, str], ident: Identity, value: V) -> None:
        """Remember ``value`` for ``name`` while its files have ``ident``."""
        if self._capacity == 0:
            return
        with self._lock:
            self._entries[name] = (ident, value)
            self._entries.move_to_end(name)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def forget(self, name: tuple[str, str]) -> None:
        """Drop ``name`` (its object was deleted or replaced here)."""
        with self._lock:
            self._entries.pop(name, None)
