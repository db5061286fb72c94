"""The on-disk store of resumable uploads in progress: v1 blocks and v2 parts.

Layout under :func:`dora.layout.uploads_root` (``<data_dir>/tmp/uploads``)::

    secret                 HMAC key that signs v1 contexts (made once, 0600)
    v1/<id>                one v1 block, grown chunk by chunk
    v2/<upload id>/        one v2 multipart upload
        meta.json          its owner (access key), bucket, key and expiry
        lock               flock: part commits, completion and sweeping exclude each other
        <NNNNN>-<md5 hex>  one committed part (number, content MD5)
        .tmp-*             parts being received

Every request finds all it needs on disk, so the gateway processes sharing
a data directory may each serve any request of an upload. Nothing here is
ever visible in a bucket: completion streams the parts, in order, into the
object store's all-or-nothing put.

Bounds (:class:`PartLimits`): blocks and uploads in progress, parts per
upload, bytes on disk across all of them (a full store is 503 with
``Retry-After``), and time: blocks and uploads expire after ``ttl`` and are
swept lazily, at most once a minute, when new ones start. At most one part
of an upload may be under :data:`MIN_PART_BYTES` (Qiniu accepts only the
last one that small), which bounds the files per upload by its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from pathlib import Path
from typing import IO

from dora.config import Limits
from dora.errors import (
    BadRequest,
    DoraError,
    NoSuchUpload,
    PayloadTooLarge,
    ServiceUnavailable,
    UploadExpired,
)
from dora.storage.files import finish_in_thread, fsync_dir

__all__ = [
    "MAX_PART_BYTES",
    "MIN_PART_BYTES",
    "Digests",
    "NoSuchUpload",
    "PartInfo",
    "PartLimits",
    "PartStore",
    "Session",
    "UploadExpired",
    "read_files",
]

MiB = 1024 * 1024
MIN_PART_BYTES = 1 * MiB  # Qiniu: every part but the last is 1 MiB .. 1 GiB
MAX_PART_BYTES = 1024 * MiB
BATCH = 1 * MiB  # bytes hashed and written per thread hop
READ_CHUNK = 1 * MiB
SWEEP_INTERVAL = 60.0
SCAN_INTERVAL = 1.0  # how long a scan of the bytes on disk is trusted
STALE_TEMP_SECONDS = 3600.0
LOCK_TIMEOUT = 30.0
LOCK_POLL = 0.02
RETRY_AFTER = 10.0  # clients (urllib3 under the qiniu SDK) wait this long, then retry
_ID = re.compile(r"[0-9a-f]{32}")
_PART_FILE = re.compile(r"(\d{5})-([0-9a-f]{32})")


@dataclasses.dataclass(frozen=True, slots=True)
class PartLimits:
    """How much resumable uploads may hold at once, and for how long."""

    max_total_bytes: int  # on disk, across every upload in progress
    max_uploads: int = 256  # v2 uploads in progress
    max_blocks: int = 4096  # v1 blocks in progress
    max_parts: int = 10000  # per v2 upload (Qiniu's part numbers are 1..10000)
    ttl: float = 24 * 3600.0  # seconds a block or an upload lives

    @classmethod
    def from_limits(cls, limits: Limits) -> PartLimits:
        """Room for four uploads of the largest size at once."""
        return cls(max_total_bytes=4 * limits.max_upload_bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class Digests:
    """What was received: its size and checksums."""

    size: int
    crc32: int
    md5: str  # hex ("" when not computed)
    sha1: bytes  # (b"" when not computed)


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """One v2 multipart upload."""

    upload_id: str
    access_key: str
    bucket: str
    key: str | None  # None: the key is decided at completion
    expires_at: int
    path: Path


@dataclasses.dataclass(frozen=True, slots=True)
class PartInfo:
    """One committed part of a v2 upload."""

    number: int
    size: int
    md5: str
    put_time: int
    path: Path

    @property
    def etag(self) -> str:
        """The opaque tag the client hands back at completion."""
        return self.md5


class _Sink:
    """Thread side of receiving: checksum and write each batch.

    v1 answers with a CRC-32 and a SHA-1, v2 checks and answers an MD5;
    each computes only what it needs.
    """

    def __init__(self, file: IO[bytes], *, md5: bool, sha1: bool) -> None:
        self.file = file
        self.crc32 = 0
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.sha1 = hashlib.sha1(usedforsecurity=False) if sha1 else None
        self.size = 0

    def absorb(self, batch: bytes) -> None:
        self.crc32 = zlib.crc32(batch, self.crc32)
        if self.md5 is not None:
            self.md5.update(batch)
        if self.sha1 is not None:
            self.sha1.update(batch)
        self.file.write(batch)
        self.size += len(batch)

    def digests(self) -> Digests:
        md5 = "" if self.md5 is None else self.md5.hexdigest()
        sha1 = b"" if self.sha1 is None else self.sha1.digest()
        return Digests(self.size, self.crc32, md5, sha1)


async def _receive(sink: _Sink, body: AsyncIterable[bytes], length: int) -> Digests:
    """Exactly ``length`` bytes of ``body`` into ``sink`` (400 otherwise)."""
    batch = bytearray()
    got = 0
    async for chunk in body:
        got += len(chunk)
        if got > length:
            raise BadRequest("the body is longer than its Content-Length")
        batch += chunk
        if len(batch) >= BATCH:
            await finish_in_thread(sink.absorb, bytes(batch))
            batch.clear()
    if batch:
        await finish_in_thread(sink.absorb, bytes(batch))
    if got != length:
        raise BadRequest(f"the body ended after {got} of {length} bytes")
    return sink.digests()


async def read_files(
    files: Sequence[tuple[Path, int]], gone: type[DoraError]
) -> AsyncGenerator[bytes, None]:
    """The first ``size`` bytes of each file in turn; ``gone`` if one is missing or short."""
    for path, size in files:
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise gone(f"{path.name}: no longer here") from None
        try:
            remaining = size
            while remaining:
                chunk = await asyncio.to_thread(fh.read, min(READ_CHUNK, remaining))
                if not chunk:
                    raise gone(f"{path.name}: shorter than recorded")
                remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(fh.close)


class PartStore:
    """Blocks (v1) and multipart uploads (v2) in progress, on local disk."""

    def __init__(self, root: Path, limits: PartLimits) -> None:
        self.root = Path(root)
        self.limits = limits
        self._v1 = self.root / "v1"
        self._v2 = self.root / "v2"
        self._secret: bytes | None = None
        self._swept_at = -SWEEP_INTERVAL
        self._scanned_bytes = 0
        self._scanned_at = -SCAN_INTERVAL
        self._reserved = 0  # bytes this process is receiving now

    # -- setup, secret, sweeping, budget ----------------------------------------

    async def signing_key(self) -> bytes:
        """The key that signs v1 contexts, shared by every process on this data dir."""
        if self._secret is None:
            self._secret = await asyncio.to_thread(self._load_secret)
        return self._secret

    def _load_secret(self) -> bytes:
        for directory in (self._v1, self._v2):
            directory.mkdir(parents=True, exist_ok=True)
        path = self.root / "secret"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        # Written aside, then linked into place: a racing process either wins
        # or reads the winner's complete file, never a partial one.
        temp = self.root / f".secret-{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
        temp.unlink()
        return path.read_bytes()

    async def _prepare(self) -> None:
        await self.signing_key()  # creates the layout
        if time.monotonic() - self._swept_at >= SWEEP_INTERVAL:
            await self.sweep()

    async def sweep(self) -> None:
        """Remove expired blocks and uploads now (new ones trigger it once a minute)."""
        await self.signing_key()
        self._swept_at = time.monotonic()
        await asyncio.to_thread(self._sweep, time.time())

    def _sweep(self, now: float) -> None:
        """Remove expired blocks and uploads, and temp files of dead writers."""
        ttl = self.limits.ttl
        with os.scandir(self._v1) as entries:
            for entry in entries:
                # A block's ctx expires ttl after it was made, never after its last write.
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < now - ttl:
                        os.unlink(entry.path)
        with os.scandir(self._v2) as entries:
            sessions = [Path(e.path) for e in entries if e.is_dir()]
        for path in sessions:
            with contextlib.suppress(OSError):
                self._sweep_session(path, now)

    def _sweep_session(self, path: Path, now: float) -> None:
        try:
            expires = json.loads((path / "meta.json").read_bytes())["expires_at"]
        except (OSError, ValueError, KeyError, TypeError):
            expires = path.stat().st_mtime + STALE_TEMP_SECONDS  # never got its meta
        if expires >= now:
            for temp in path.glob(".tmp-*"):
                if temp.stat().st_mtime < now - STALE_TEMP_SECONDS:
                    temp.unlink(missing_ok=True)
            return
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # busy: next sweep
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)

    def _disk_usage(self) -> int:
        total = 0
        for directory in (self._v1, *[p for p in self._v2.iterdir() if p.is_dir()]):
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        if entry.is_file():
                            total += entry.stat().st_size
        return total

    @contextlib.asynccontextmanager
    async def _reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Room for ``nbytes`` more on disk, or 503: the store is full."""
        if time.monotonic() - self._scanned_at >= SCAN_INTERVAL:
            self._scanned_bytes = await asyncio.to_thread(self._disk_usage)
            self._scanned_at = time.monotonic()
        if self._scanned_bytes + self._reserved + nbytes > self.limits.max_total_bytes:
            raise ServiceUnavailable(
                "too many bytes of unfinished uploads; try again later", retry_after=RETRY_AFTER
            )
        self._reserved += nbytes
        try:
            yield
        finally:
            self._reserved -= nbytes
            self._scanned_bytes += nbytes  # on disk now, until the next scan says otherwise

    def _count(self, directory: Path) -> int:
        with os.scandir(directory) as entries:
            return sum(1 for e in entries if not e.name.startswith("."))

    # -- v1 blocks ----------------------------------------------------------------

    def block_path(self, block_id: str) -> Path:
        if not _ID.fullmatch(block_id):
            raise UploadExpired("no such block")
        return self._v1 / block_id

    async def new_block(self) -> str:
        """A new, empty block; its id."""
        await self._prepare()
        if await asyncio.to_thread(self._count, self._v1) >= self.limits.max_blocks:
            raise ServiceUnavailable("too many blocks in progress", retry_after=RETRY_AFTER)
        block_id = secrets.token_hex(16)
        await asyncio.to_thread(self.block_path(block_id).touch, 0o600, False)
        return block_id

    async def write_block(
        self, block_id: str, offset: int, body: AsyncIterable[bytes], length: int
    ) -> Digests:
        """Write ``length`` bytes at ``offset``; the block ends after them.

        A chunk sent again (its answer was lost) simply replaces what followed.
        """
        path = self.block_path(block_id)

        def open_at() -> IO[bytes]:
            try:
                file = open(path, "r+b")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise UploadExpired("the block is gone (expired?)") from None
            if os.fstat(file.fileno()).st_size < offset:
                file.close()
                raise UploadExpired("the block is shorter than this ctx says")
            file.seek(offset)
            return file

        async with self._reserve(length):
            file = await finish_in_thread(open_at, abandon=lambda f: f.close())
            try:
                sink = _Sink(file, md5=False, sha1=True)
                digests = await _receive(sink, body, length)
                await finish_in_thread(_finish_block, file, offset + length)
            finally:
                await finish_in_thread(file.close)
        return digests

    async def block_sizes(self, block_ids: Sequence[str]) -> list[int]:
        """The bytes on disk of each block (701 if one is gone)."""

        def sizes() -> list[int]:
            try:
                return [self.block_path(b).stat().st_size for b in block_ids]
            except FileNotFoundError:
                raise UploadExpired("a block is gone (expired?)") from None

        return await asyncio.to_thread(sizes)

    async def drop_blocks(self, block_ids: Sequence[str]) -> None:
        def drop() -> None:
            for block_id in block_ids:
                self.block_path(block_id).unlink(missing_ok=True)

        await asyncio.to_thread(drop)

    # -- v2 uploads ---------------------------------------------------------------

    async def create_session(self, access_key: str, bucket: str, key: str | None) -> Session:
        """A new multipart upload."""
        await self._prepare()
        if await asyncio.to_thread(self._count, self._v2) >= self.limits.max_uploads:
            raise ServiceUnavailable("too many uploads in progress", retry_after=RETRY_AFTER)
        upload_id = secrets.token_hex(16)
        session = Session(upload_id, access_key, bucket, key,
                          int(time.time() + self.limits.ttl), self._v2 / upload_id)  # fmt: skip
        doc = {"access_key": access_key, "bucket": bucket, "key": key,
               "expires_at": session.expires_at}  # fmt: skip

        def create() -> None:
            session.path.mkdir(mode=0o700)
            temp = session.path / ".tmp-meta"
            temp.write_text(json.dumps(doc))
            os.replace(temp, session.path / "meta.json")
            fsync_dir(session.path)

        await asyncio.to_thread(create)
        return session

    async def get_session(self, upload_id: str) -> Session:
        """An upload in progress (612 if unknown or expired)."""
        if not _ID.fullmatch(upload_id):
            raise NoSuchUpload()
        path = self._v2 / upload_id
        try:
            doc = json.loads(await asyncio.to_thread((path / "meta.json").read_bytes))
            session = Session(upload_id, doc["access_key"], doc["bucket"], doc["key"],
                              int(doc["expires_at"]), path)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            raise NoSuchUpload() from None
        if session.expires_at < time.time():
            raise NoSuchUpload("uploadId expired")
        return session

    def _parts_sync(self, session: Session) -> list[PartInfo]:
        if not (session.path / "meta.json").exists():
            raise NoSuchUpload()
        parts = []
        with os.scandir(session.path) as entries:
            for entry in entries:
                found = _PART_FILE.fullmatch(entry.name)
                if found:
                    st = entry.stat()
                    parts.append(PartInfo(int(found.group(1)), st.st_size, found.group(2),
                                          int(st.st_mtime), Path(entry.path)))  # fmt: skip
        return sorted(parts, key=lambda p: p.number)

    async def list_parts(self, session: Session) -> list[PartInfo]:
        """The committed parts, by number."""
        return await asyncio.to_thread(self._parts_sync, session)

    @contextlib.asynccontextmanager
    async def locked(self, session: Session) -> AsyncIterator[None]:
        """Hold the upload's lock (other processes too); 503 after a while."""

        def open_lock() -> int:
            try:
                return os.open(session.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                raise NoSuchUpload() from None

        fd = await finish_in_thread(open_lock, abandon=os.close)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise ServiceUnavailable("the upload is busy", retry_after=RETRY_AFTER)
                await asyncio.sleep(LOCK_POLL)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def put_part(
        self,
        session: Session,
        number: int,
        body: AsyncIterable[bytes],
        length: int,
        *,
        limit: int,
        expected_md5: str | None,
    ) -> PartInfo:
        """Receive part ``number`` and commit it, replacing an earlier one.

        ``limit`` bounds the upload's bytes (413); a Content-MD5 mismatch is 400.
        """
        others = [p for p in await self.list_parts(session) if p.number != number]
        if sum(p.size for p in others) + length > limit:
            raise PayloadTooLarge(f"the upload would exceed the limit of {limit} bytes")
        temp = session.path / f".tmp-{secrets.token_hex(8)}"

        def open_temp() -> IO[bytes]:
            return open(temp, "xb")

        try:
            async with self._reserve(length):
                file = await finish_in_thread(open_temp, abandon=lambda f: f.close())
                try:
                    sink = _Sink(file, md5=True, sha1=False)
                    digests = await _receive(sink, body, length)
                    await finish_in_thread(_finish_block, file, length)
                finally:
                    await finish_in_thread(file.close)
            if expected_md5 is not None and expected_md5 != digests.md5:
                raise BadRequest(f"Content-MD5 mismatch: the part's MD5 is {digests.md5}")
            async with self.locked(session):
                return await finish_in_thread(self._commit_part, session, number, temp,
                                              digests, limit)  # fmt: skip
        except FileNotFoundError:
            raise NoSuchUpload() from None
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(temp.unlink, True)

    def _commit_part(
        self, session: Session, number: int, temp: Path, digests: Digests, limit: int
    ) -> PartInfo:
        parts = self._parts_sync(session)
        others = [p for p in parts if p.number != number]
        if len(others) >= self.limits.max_parts:
            raise BadRequest(f"an upload holds at most {self.limits.max_parts} parts")
        if sum(p.size for p in others) + digests.size > limit:
            raise PayloadTooLarge(f"the upload would exceed the limit of {limit} bytes")
        if digests.size < MIN_PART_BYTES and any(p.size < MIN_PART_BYTES for p in others):
            raise BadRequest(
                f"only the last part may be smaller than {MIN_PART_BYTES} bytes, "
                "and another part already is"
            )
        for old in parts:
            if old.number == number:
                old.path.unlink(missing_ok=True)
        final = session.path / f"{number:05d}-{digests.md5}"
        os.replace(temp, final)
        fsync_dir(session.path)
        return PartInfo(number, digests.size, digests.md5, int(time.time()), final)

    async def drop_session(self, session: Session) -> None:
        await asyncio.to_thread(shutil.rmtree, session.path, True)


def _finish_block(file: IO[bytes], end: int) -> None:
    """Cut what a replaced chunk left beyond ``end``; make the bytes durable."""
    file.flush()
    file.truncate(end)
    os.fsync(file.fileno())


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True
