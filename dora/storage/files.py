"""File helpers of the local object store, each run in a worker thread.

Temporary objects that are hashed and sniffed while written
(:class:`TempObject`), a chunked reader of a byte range (:class:`FileChunks`),
the metadata document kept beside each object (:func:`meta_doc`,
:func:`read_meta_doc`, :func:`write_file_atomically`), durability
(:func:`fsync_dir`), the pruning of folders that deletes leave empty, and
the walk that lists a bucket's keys in order (:func:`walk_keys`).
:func:`finish_in_thread` runs one of them so that a cancelled caller never
cleans up while a thread still uses the file.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from dora.etag import EtagHasher
from dora.mime import SNIFF_BYTES, sniff_mime
from dora.storage.keys import is_valid_key

__all__ = [
    "MAX_META_BYTES",
    "FileChunks",
    "TempObject",
    "finish_in_thread",
    "fsync_dir",
    "hash_file",
    "meta_doc",
    "prune_empty_dirs",
    "read_meta_doc",
    "read_meta_doc_stat",
    "walk_keys",
    "write_file_atomically",
]

T = TypeVar("T")

MAX_META_BYTES = 64 * 1024


async def finish_in_thread(
    fn: Callable[..., T], *args: Any, abandon: Callable[[T], None] | None = None
) -> T:
    """Run ``fn`` in a thread; if cancelled meanwhile, wait for it, then re-raise.

    A thread cannot be interrupted, so cleanup after a cancellation must not
    start before the thread is done with the file it works on. ``abandon``
    releases a result nobody will receive (an open file, say).
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled() and task.exception() is None and abandon is not None:
            abandon(task.result())
        raise cancelled
    return task.result()


def fsync_dir(directory: Path) -> None:
    """Make renames and creations inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_empty_dirs(start: Path, stop: Path) -> None:
    """Remove ``start`` and its parents while empty, never ``stop`` or above."""
    current = start
    while current != stop and current.is_relative_to(stop):
        try:
            os.rmdir(current)
        except OSError:
            return
        current = current.parent


def write_file_atomically(tmp_dir: Path, target: Path, payload: bytes) -> None:
    """Write ``payload`` to a temp file, fsync it, rename it onto ``target``."""
    temp = tmp_dir / f"{uuid.uuid4().hex}.meta"
    try:
        with open(temp, "xb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.replace(temp, target)
        except IsADirectoryError:  # an empty folder left by a crash; a full one raises
            os.rmdir(target)
            os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def meta_doc(
    st: os.stat_result, size: int, mime: str, etag: str, put_time_ns: int
) -> dict[str, Any]:
    """The metadata document of an object whose data file has stat ``st``.

    The data file's identity (inode, mtime) lets a reader tell whether the
    document belongs to the bytes it sits beside.
    """
    return {
        "v": 1,
        "size": size,
        "mime": mime,
        "hash": etag,
        "put_time_ns": put_time_ns,
        "ino": st.st_ino,
        "mtime_ns": st.st_mtime_ns,
    }


def read_meta_doc(path: Path) -> dict[str, Any] | None:
    """A metadata document, or None if missing or unreadable (to be rebuilt)."""
    return read_meta_doc_stat(path)[0]


def read_meta_doc_stat(path: Path) -> tuple[dict[str, Any] | None, os.stat_result | None]:
    """A metadata document (None if missing or unreadable) and the ``fstat`` of
    the file it was read from (None if there was no such file)."""
    try:
        with open(path, "rb") as source:
            st = os.fstat(source.fileno())
            raw = source.read(MAX_META_BYTES)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None, None
    return _checked_doc(raw), st


def _checked_doc(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return None
    for name, kind in _META_FIELDS.items():
        if not isinstance(doc.get(name), kind):
            return None
    return doc


_META_FIELDS: dict[str, type] = {
    "size": int,
    "mime": str,
    "hash": str,
    "put_time_ns": int,
    "ino": int,
    "mtime_ns": int,
}


class TempObject:
    """A temporary file being filled, hashed and sniffed; used from threads."""

    def __init__(self, tmp_dir: Path) -> None:
        self.path = tmp_dir / f"{uuid.uuid4().hex}.part"
        self._file: io.BufferedWriter | None = None
        self._hasher = EtagHasher()
        self._head = bytearray()

    @property
    def size(self) -> int:
        return self._hasher.size

    def _opened(self) -> io.BufferedWriter:
        if self._file is None:  # opened lazily so that no I/O happens on the event loop
            self._file = open(self.path, "xb")  # noqa: SIM115 - closed by seal/discard
        return self._file

    def write(self, chunk: bytes) -> None:
        self._opened().write(chunk)
        self._hasher.update(chunk)
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]

    def seal(self) -> os.stat_result:
        """Flush to disk and close; the file's identity, for the metadata."""
        file = self._opened()
        file.flush()
        os.fsync(file.fileno())
        st = os.fstat(file.fileno())
        file.close()
        return st

    def etag(self) -> str:
        return self._hasher.digest()

    def sniff(self, key: str) -> str:
        return sniff_mime(bytes(self._head), key, complete=self.size <= len(self._head))

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self.path.unlink(missing_ok=True)


def hash_file(path: Path, key: str) -> tuple[str, str]:
    """The etag and sniffed MIME type of a file, read in bounded chunks."""
    hasher = EtagHasher()
    head = b""
    with open(path, "rb") as source:
        while chunk := source.read(1024 * 1024):
            if not head:
                head = chunk[:SNIFF_BYTES]
            hasher.update(chunk)
    return hasher.digest(), sniff_mime(head, key, complete=hasher.size <= len(head))


class FileChunks(AsyncIterator[bytes]):
    """Bytes ``start..stop`` (inclusive) of an open file, in bounded chunks."""

    def __init__(self, file: io.FileIO, start: int, stop: int, chunk: int) -> None:
        self._file: io.FileIO | None = file
        self._pos = start
        self._stop = stop
        self._chunk = chunk
        self._reading = False

    def __aiter__(self) -> FileChunks:
        return self

    async def __anext__(self) -> bytes:
        file = self._file
        if file is None or self._pos > self._stop:
            await self.aclose()
            raise StopAsyncIteration
        size = min(self._chunk, self._stop - self._pos + 1)
        self._reading = True
        try:
            data = await finish_in_thread(os.pread, file.fileno(), size, self._pos)
        finally:
            self._reading = False
            if self._file is None:  # closed while we read: close now that no thread uses it
                file.close()
        if not data:  # the file shrank under us (only if edited by hand)
            await self.aclose()
            raise StopAsyncIteration
        self._pos += len(data)
        return data

    async def aclose(self) -> None:
        """Close the file; harmless if already closed."""
        file, self._file = self._file, None
        if file is not None and not self._reading:
            file.close()


def walk_keys(
    directory: str, base: str, prefix: str, marker: str, max_key_bytes: int
) -> Iterator[str]:
    """Keys under ``directory`` in lexical order, starting with prefix, after marker."""
    try:
        with os.scandir(directory) as scan:
            entries = list(scan)
    except (FileNotFoundError, NotADirectoryError):
        return
    # Sorting a folder as "name/" orders it exactly where its keys sort
    # among its siblings ("a-c" < "a/b" because "-" < "/").
    named: list[tuple[str, str, bool]] = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            named.append((entry.name + "/", entry.path, True))
        elif entry.is_file(follow_symlinks=False):
            named.append((entry.name, entry.path, False))
    named.sort()
    for name, path, is_dir in named:
        full = base + name
        if full > prefix and not full.startswith(prefix):
            break  # sorted: nothing further can match the prefix
        if is_dir:
            if not (full.startswith(prefix) or prefix.startswith(full)):
                continue
            if marker > full and not marker.startswith(full):
                continue  # every key in this folder sorts before the marker
            yield from walk_keys(path, full, prefix, marker, max_key_bytes)
        elif full.startswith(prefix) and full > marker and is_valid_key(full, max_key_bytes):
            yield full
