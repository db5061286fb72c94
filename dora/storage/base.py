"""The ObjectStore seam: what the gateway and the dispatcher need from storage.

Objects live in buckets under ``/``-separated keys (see
:mod:`dora.storage.keys`) and carry their size, MIME type, Qiniu etag and
put time. Implementations: :class:`dora.storage.local.LocalStore` (local
file system, the default) and an HTTP origin (read-only mirror).

Errors, all from :mod:`dora.errors`: ``BadRequest`` for an invalid bucket
name, key or range; ``NotFound`` for a missing object or bucket (message
``"no such bucket"``); ``FileExists`` (614) when a put may not overwrite;
``PayloadTooLarge`` when an object exceeds the caller's byte limit;
``ServiceUnavailable`` once the store is closed.
"""

from __future__ import annotations

import builtins
import dataclasses
import types
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

DEFAULT_CHUNK = 256 * 1024
MAX_CHUNK = 4 * 1024 * 1024
MAX_LIST_LIMIT = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What a store knows about one object."""

    bucket: str
    key: str
    size: int
    mime: str
    hash: str  # Qiniu etag (dora.etag)
    mtime: float  # put time, Unix seconds
    put_time_ns: int  # put time, Unix nanoseconds (Qiniu's putTime is this // 100)

    @property
    def put_time(self) -> int:
        """Qiniu's ``putTime``: the put time in units of 100 ns."""
        return self.put_time_ns // 100


class ByteStream(Protocol):
    """An async iterator of byte chunks that can be closed early (``aclose``)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None:
        """Release the underlying file or connection; harmless twice."""
        ...


@runtime_checkable
class ObjectStore(Protocol):
    """An asynchronous object store (an async context manager; close is idempotent)."""

    async def stat(self, bucket: str, key: str) -> ObjectMeta:
        """Metadata of an object; ``NotFound`` if it or its bucket is missing."""
        ...

    async def get(
        self, bucket: str, key: str, *, max_bytes: int | None = None
    ) -> tuple[ObjectMeta, bytes]:
        """The whole object; ``PayloadTooLarge`` (before reading) if larger than max_bytes."""
        ...

    async def open_range(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        chunk: int = DEFAULT_CHUNK,
    ) -> tuple[ObjectMeta, ByteStream]:
        """Stream bytes ``start..end`` inclusive (``end`` None: to the last byte).

        The chunks are at most ``chunk`` bytes. ``end`` past the object is cut
        to its last byte; a ``start`` past the last byte is ``BadRequest``
        (except ``start == 0`` on an empty object, which streams nothing).
        Close the stream (``aclose``, or ``contextlib.aclosing``) when
        abandoning it early; an async generator satisfies :class:`ByteStream`.
        """
        ...

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes | AsyncIterable[bytes],
        *,
        mime: str | None = None,
        overwrite: bool = True,
        max_bytes: int | None = None,
    ) -> ObjectMeta:
        """Store an object, creating the bucket if needed; all or nothing.

        ``mime`` None sniffs it from the content (then the key). With
        ``overwrite`` False an existing key is ``FileExists``. A stream longer
        than ``max_bytes`` is ``PayloadTooLarge`` and leaves nothing behind.
        """
        ...

    async def delete(self, bucket: str, key: str) -> None:
        """Remove an object; ``NotFound`` if it is missing."""
        ...

    async def list(
        self, bucket: str, *, prefix: str = "", marker: str = "", limit: int = MAX_LIST_LIMIT
    ) -> tuple[builtins.list[ObjectMeta], str]:
        """Objects whose key starts with ``prefix`` and sorts after ``marker``.

        Keys come in lexical (code point) order, at most ``limit`` of them
        (capped at 1000). The second value is the marker for the next page,
        or ``""`` when there is none.
        """
        ...

    async def buckets(self) -> builtins.list[str]:
        """Names of all buckets, sorted."""
        ...

    async def create_bucket(self, name: str) -> None:
        """Create an empty bucket; ``FileExists`` if it exists."""
        ...

    def local_path(self, bucket: str, key: str) -> Path | None:
        """The object's file on this machine (for workers), or None for remote stores.

        No I/O: the file may be missing or replaced by the time it is read,
        so readers must still handle ``FileNotFoundError``.
        """
        ...

    async def close(self) -> None:
        """Release resources; later calls raise ``ServiceUnavailable``."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None: ...
