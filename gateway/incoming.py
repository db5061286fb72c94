"""The file part of a form upload, streamed in bounded batches.

The bytes are never held whole in memory: :class:`IncomingFile` reads the
multipart part in batches of at most :data:`BATCH` bytes and hands them on
(to the store, or to a spool file when the key depends on the content). On
the way, in a thread, it computes the CRC-32 the client may have declared
and, when asked, the Qiniu etag. A body over the limit is a 413 as soon as
it is seen; a CRC mismatch is a 400 raised from the end of the stream, so
the store's all-or-nothing put keeps nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from aiohttp import BodyPartReader

from dora.errors import BadRequest, PayloadTooLarge
from dora.etag import EtagHasher

READ_CHUNK = 256 * 1024
BATCH = 1024 * 1024


class IncomingFile:
    """One multipart file part, read once, batch by batch."""

    def __init__(
        self,
        part: BodyPartReader,
        *,
        limit: int,
        expected_crc32: int | None = None,
        want_etag: bool = False,
    ) -> None:
        self._part = part
        self._limit = limit
        self._expected_crc32 = expected_crc32
        self._hasher = EtagHasher() if want_etag else None
        self._crc32 = 0
        self._head: bytes | None = None  # a batch read ahead by peek()
        self._finished = False
        self.size = 0

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def etag(self) -> str:
        """The Qiniu etag of the whole file (only with ``want_etag``, once read)."""
        if self._hasher is None or not self._finished:
            raise RuntimeError("etag wanted before the file was read with want_etag")
        return self._hasher.digest()

    def _absorb(self, batch: bytes, sink: IO[bytes] | None) -> None:
        """Thread side: checksum (and maybe hash and spool) one batch."""
        self._crc32 = zlib.crc32(batch, self._crc32)
        if self._hasher is not None:
            self._hasher.update(batch)
        if sink is not None:
            sink.write(batch)

    async def _next_batch(self, sink: IO[bytes] | None = None) -> bytes:
        if self._head is not None:
            batch, self._head = self._head, None
            if sink is not None:
                await asyncio.to_thread(sink.write, batch)
            return batch
        if self._finished:
            return b""
        pieces: list[bytes] = []
        filled = 0
        while filled < BATCH:
            try:
                chunk = await self._part.read_chunk(READ_CHUNK)
            except ValueError as exc:
                raise BadRequest("malformed multipart body") from exc
            if not chunk:
                break
            pieces.append(chunk)
            filled += len(chunk)
            if self.size + filled > self._limit:
                raise PayloadTooLarge(f"file is larger than the limit of {self._limit} bytes")
        if not pieces:
            self._finish()
            return b""
        batch = b"".join(pieces)
        await asyncio.to_thread(self._absorb, batch, sink)
        self.size += len(batch)
        return batch

    def _finish(self) -> None:
        self._finished = True
        expected = self._expected_crc32
        if expected is not None and expected != self._crc32:
            raise BadRequest(
                f"crc32 mismatch: the form says {expected}, the file's is {self._crc32}"
            )

    async def peek(self) -> bytes:
        """The first batch (for sniffing), kept to be read again by the stream."""
        if self._head is None:
            self._head = await self._next_batch()
        return self._head

    async def chunks(self) -> AsyncIterator[bytes]:
        """The remaining bytes; raises at the end on a CRC mismatch."""
        while batch := await self._next_batch():
            yield batch

    async def drain(self) -> None:
        """Read the rest without keeping it (to learn the size, CRC and etag)."""
        while await self._next_batch():
            pass

    async def spool(self, directory: Path | None) -> Path:
        """Write the rest to a new temporary file; the caller removes it."""
        fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="dora-upload-", dir=directory)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as sink:
                while await self._next_batch(sink):
                    pass
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)
            raise
        return path
