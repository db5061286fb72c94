"""LocalStore: buckets as directories on the local file system (the default store).

Layout under ``root`` (a single file system, so renames are atomic)::

    <bucket>/<key path>          the object's bytes, one file per key
    .meta/<bucket>/<key path>    its metadata (JSON), a parallel tree
    .tmp/                        files being written
    .locks/NN                    flock stripes serialising commits per key

Bucket names cannot start with a dot, so the internal trees never collide
with a bucket and no key is reserved.

A put streams into a temporary file (hashing and sniffing on the way), fsyncs
it, then, holding the key's lock stripe, renames the data and then the
metadata into place. The metadata records the data file's identity (inode,
size, mtime), so a reader can tell whether both belong together; if not (it
raced a commit, or a crash fell between the two renames) it retries under
the lock, and rebuilds the metadata from the bytes if still needed. Readers
therefore never see a half-written object nor metadata of other bytes.

The local file system cannot hold both ``a`` and ``a/b``: such a put is
``FileExists``. All file I/O runs in threads, one bounded chunk at a time;
the file helpers it runs there live in :mod:`dora.storage.files`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import fcntl
import io
import json
import os
import stat as statmod
import time
import types
import zlib
from collections.abc import AsyncIterable, Callable, Iterator
from pathlib import Path
from typing import Any, Self

from dora.config import Limits
from dora.errors import BadRequest, FileExists, NotFound, PayloadTooLarge, ServiceUnavailable
from dora.storage.base import DEFAULT_CHUNK, MAX_CHUNK, MAX_LIST_LIMIT, ByteStream, ObjectMeta
from dora.storage.confine import O_PATH, RealDirs, fd_within, path_within
from dora.storage.files import (
    FileChunks,
    TempObject,
    finish_in_thread,
    fsync_dir,
    hash_file,
    meta_doc,
    prune_empty_dirs,
    read_meta_doc_stat,
    walk_keys,
    write_file_atomically,
)
from dora.storage.keys import validate_bucket, validate_key
from dora.storage.metacache import MetaCache, identity

LOCK_STRIPES = 64
STALE_TEMP_SECONDS = 3600.0  # a temp file idle this long belongs to a dead writer
WRITE_BATCH = 256 * 1024  # coalesce small incoming chunks into one thread hop
MAX_MIME_LENGTH = 255
KNOWN_PATHS = 8192  # object paths remembered (see _paths)


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectPaths:
    """Where one object's bytes and metadata live."""

    bucket: str
    key: str
    bucket_dir: Path
    meta_dir: Path
    data: Path
    meta: Path


def _close_loaded(loaded: tuple[ObjectMeta, io.FileIO | None]) -> None:
    if loaded[1] is not None:
        loaded[1].close()


class LocalStore:
    """An :class:`~dora.storage.base.ObjectStore` on a local directory tree."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self._root = Path(root).absolute()
        self._limits = limits
        self._tmp_dir = self._root / ".tmp"
        self._lock_dir = self._root / ".locks"
        self._meta_root = self._root / ".meta"
        self._ready = False
        self._closed = False
        self._real_dirs = RealDirs()
        self._meta_cache: MetaCache[ObjectMeta] = MetaCache()
        self._known_paths: dict[tuple[str, str], ObjectPaths] = {}

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> Self:
        """Create the directory layout and sweep temp files of dead writers."""
        await self._ensure_ready()
        return self

    async def close(self) -> None:
        self._closed = True

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()

    async def _ensure_ready(self) -> None:
        if self._closed:
            raise ServiceUnavailable("object store is closed")
        if not self._ready:
            await asyncio.to_thread(self._prepare)
            self._ready = True

    def _prepare(self) -> None:
        for directory in (self._root, self._tmp_dir, self._lock_dir, self._meta_root):
            directory.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TEMP_SECONDS
        with os.scandir(self._tmp_dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)

    # -- paths and locks ----------------------------------------------------

    def _paths(self, bucket: str, key: str) -> ObjectPaths:
        """Where ``bucket:key`` lives (validated; 400 for a bad name). Remembered:
        a hot object's paths are worked out once, not on every request."""
        paths = self._known_paths.get((bucket, key))
        if paths is None:
            paths = self._work_out_paths(bucket, key)
            if len(self._known_paths) >= KNOWN_PATHS:
                self._known_paths.clear()  # crude, but bounded and rare
            self._known_paths[(bucket, key)] = paths
        return paths

    def _work_out_paths(self, bucket: str, key: str) -> ObjectPaths:
        validate_bucket(bucket)
        validate_key(key, self._limits.max_key_bytes)
        segments = key.split("/")
        paths = ObjectPaths(
            bucket=bucket,
            key=key,
            bucket_dir=self._root / bucket,
            meta_dir=self._meta_root / bucket,
            data=self._root.joinpath(bucket, *segments),
            meta=self._meta_root.joinpath(bucket, *segments),
        )
        # Validation already rules out escapes; this keeps it true if rules change.
        if not paths.data.parent.is_relative_to(paths.bucket_dir):
            raise BadRequest(f"key {key!r} escapes its bucket")
        return paths

    @contextlib.contextmanager
    def _locked(self, paths: ObjectPaths) -> Iterator[None]:
        # zlib.crc32, unlike hash(), is the same in every process sharing the root.
        stripe = zlib.crc32(f"{paths.bucket}/{paths.key}".encode()) % LOCK_STRIPES
        fd = os.open(self._lock_dir / f"{stripe:02d}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _assert_within(self, path: Path, directory: Path, fd: int | None = None) -> None:
        """Refuse paths that symbolic links lead out of ``directory`` (``fd``: the
        file opened from ``path``, which is quicker to check)."""
        real_dir = self._real_dirs(directory)
        within = path_within(path, real_dir) if fd is None else fd_within(fd, path, real_dir)
        if not within:
            raise BadRequest(f"path of {path.name!r} leads outside its bucket")

    def local_path(self, bucket: str, key: str) -> Path | None:
        """The object's file (no I/O; it may be missing or replaced when read)."""
        return self._paths(bucket, key).data

    # -- reads --------------------------------------------------------------

    async def stat(self, bucket: str, key: str) -> ObjectMeta:
        await self._ensure_ready()
        meta, _ = await asyncio.to_thread(self._load, self._paths(bucket, key), False)
        return meta

    async def get(
        self, bucket: str, key: str, *, max_bytes: int | None = None
    ) -> tuple[ObjectMeta, bytes]:
        """The whole object. ``max_bytes`` None sets no bound beyond the upload limit."""
        await self._ensure_ready()
        return await asyncio.to_thread(self._get_sync, self._paths(bucket, key), max_bytes)

    def _get_sync(self, paths: ObjectPaths, max_bytes: int | None) -> tuple[ObjectMeta, bytes]:
        meta, file = self._load(paths, True)
        assert file is not None
        with file:
            if max_bytes is not None and meta.size > max_bytes:
                raise PayloadTooLarge(
                    f"{paths.key!r} is {meta.size} bytes; the limit here is {max_bytes} bytes"
                )
            parts = []
            remaining = meta.size
            while remaining > 0:  # one read() may return less than asked
                part = file.read(remaining)
                if not part:
                    break
                parts.append(part)
                remaining -= len(part)
        return meta, b"".join(parts) if len(parts) != 1 else parts[0]

    async def open_range(
        self,
        bucket: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        chunk: int = DEFAULT_CHUNK,
    ) -> tuple[ObjectMeta, ByteStream]:
        await self._ensure_ready()
        if start < 0 or (end is not None and end < start):
            raise BadRequest(f"invalid byte range {start}-{'' if end is None else end}")
        if chunk < 1:
            raise BadRequest(f"chunk size must be positive, not {chunk}")
        meta, file = await finish_in_thread(
            self._load, self._paths(bucket, key), True, abandon=_close_loaded
        )
        assert file is not None
        last = meta.size - 1
        if start > last and not (start == 0 and meta.size == 0):
            file.close()
            raise BadRequest(f"range start {start} is beyond the object's last byte ({last})")
        stop = last if end is None else min(end, last)
        return meta, FileChunks(file, start, stop, min(chunk, MAX_CHUNK))

    def _load(self, paths: ObjectPaths, want_file: bool) -> tuple[ObjectMeta, io.FileIO | None]:
        """Metadata matching the data file (and that file, open, if wanted)."""
        loaded = self._try_load(paths, want_file, repair=False)
        if loaded is None:  # raced a commit or found crash leftovers: settle it under the lock
            with self._locked(paths):
                loaded = self._try_load(paths, want_file, repair=True)
        assert loaded is not None
        return loaded

    def _try_load(
        self, paths: ObjectPaths, want_file: bool, *, repair: bool
    ) -> tuple[ObjectMeta, io.FileIO | None] | None:
        # O_PATH: enough to fstat the file and to ask the kernel where it is.
        flags = (os.O_RDONLY if want_file else O_PATH) | os.O_CLOEXEC
        try:
            fd = os.open(paths.data, flags)
        except (FileNotFoundError, NotADirectoryError) as exc:
            if not paths.bucket_dir.is_dir():
                raise NotFound("no such bucket") from exc
            raise NotFound(f"no such key: {paths.key!r}") from exc
        file = None
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                raise NotFound(f"no such key: {paths.key!r}")
            if want_file:
                file = io.FileIO(fd, "rb")
            self._assert_within(paths.data, paths.bucket_dir, fd)
            meta = self._matching_meta(paths, st)
            if meta is not None:
                return meta, file
            if not repair:
                if file is not None:
                    file.close()
                return None
            return self._rebuild_meta(paths, st), file
        except BaseException:
            if file is not None:
                file.close()  # and so the fd
            raise
        finally:
            if file is None:
                os.close(fd)

    def _matching_meta(self, paths: ObjectPaths, st: os.stat_result) -> ObjectMeta | None:
        """The metadata recorded for the data file ``st`` describes, if any (cached
        while both files stay the same: see :mod:`dora.storage.metacache`)."""
        name = (paths.bucket, paths.key)
        try:
            meta_st = os.stat(paths.meta)
        except (FileNotFoundError, NotADirectoryError):
            return None
        cached = self._meta_cache.get(name, identity(st, meta_st))
        if cached is not None:
            return cached
        doc, doc_st = read_meta_doc_stat(paths.meta)
        if doc is None or doc_st is None:
            return None
        if (doc["ino"], doc["size"], doc["mtime_ns"]) != (st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        meta = self._meta_from_doc(paths, doc)
        self._meta_cache.put(name, identity(st, doc_st), meta)
        return meta

    def _rebuild_meta(self, paths: ObjectPaths, st: os.stat_result) -> ObjectMeta:
        """Recompute metadata from the bytes (files placed by hand, crash leftovers)."""
        etag, mime = hash_file(paths.data, paths.key)
        doc = meta_doc(st, st.st_size, mime, etag, st.st_mtime_ns)
        self._write_meta(paths, doc)
        return self._meta_from_doc(paths, doc)

    @staticmethod
    def _meta_from_doc(paths: ObjectPaths, doc: dict[str, Any]) -> ObjectMeta:
        return ObjectMeta(
            bucket=paths.bucket,
            key=paths.key,
            size=doc["size"],
            mime=doc["mime"],
            hash=doc["hash"],
            mtime=doc["put_time_ns"] / 1e9,
            put_time_ns=doc["put_time_ns"],
        )

    def _write_meta(self, paths: ObjectPaths, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc, separators=(",", ":")).encode()
        self._with_parent(
            paths,
            paths.meta,
            lambda: write_file_atomically(self._tmp_dir, paths.meta, payload),
        )

    # -- writes -------------------------------------------------------------

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
        """Store an object (see :meth:`ObjectStore.put`).

        ``max_bytes`` None means ``Limits.max_upload_bytes``. Once the commit
        has begun, cancelling the put no longer undoes it.
        """
        await self._ensure_ready()
        paths = self._paths(bucket, key)
        if mime is not None and (not mime or len(mime) > MAX_MIME_LENGTH or not mime.isprintable()):
            raise BadRequest(f"invalid MIME type {mime[:64]!r}")
        limit = self._limits.max_upload_bytes if max_bytes is None else max_bytes
        too_large = f"object is larger than the limit of {limit} bytes"
        if isinstance(data, bytes | bytearray | memoryview) and len(data) > limit:
            raise PayloadTooLarge(too_large)
        if not overwrite and await asyncio.to_thread(os.path.isfile, paths.data):
            raise FileExists(f"{bucket}:{key} exists")
        temp = TempObject(self._tmp_dir)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                await finish_in_thread(temp.write, bytes(data))
            else:
                batch = bytearray()
                async for chunk in data:
                    if temp.size + len(batch) + len(chunk) > limit:
                        raise PayloadTooLarge(too_large)
                    batch += chunk
                    if len(batch) >= WRITE_BATCH:
                        await finish_in_thread(temp.write, bytes(batch))
                        batch.clear()
                if batch:
                    await finish_in_thread(temp.write, bytes(batch))
            return await finish_in_thread(self._commit, paths, temp, mime, overwrite)
        except BaseException:
            with contextlib.suppress(OSError):  # keep the original error
                await finish_in_thread(temp.discard)
            raise

    def _commit(
        self, paths: ObjectPaths, temp: TempObject, mime: str | None, overwrite: bool
    ) -> ObjectMeta:
        st = temp.seal()
        mime = mime or temp.sniff(paths.key)
        doc = meta_doc(st, st.st_size, mime, temp.etag(), time.time_ns())
        with self._locked(paths):
            if not overwrite and os.path.isfile(paths.data):
                raise FileExists(f"{paths.bucket}:{paths.key} exists")
            self._with_parent(paths, paths.data, lambda: self._replace(temp.path, paths))
            self._write_meta(paths, doc)
            fsync_dir(paths.data.parent)
            fsync_dir(paths.meta.parent)
        return self._meta_from_doc(paths, doc)

    def _replace(self, source: Path, paths: ObjectPaths) -> None:
        self._assert_within(paths.data.parent, paths.bucket_dir)
        try:
            os.replace(source, paths.data)
        except IsADirectoryError:
            try:  # an empty folder left by a crash may go; a folder of objects may not
                os.rmdir(paths.data)
            except OSError as exc:
                raise FileExists(
                    f"cannot store {paths.key!r}: it is the folder of other keys"
                ) from exc
            os.replace(source, paths.data)

    def _with_parent(self, paths: ObjectPaths, target: Path, action: Callable[[], None]) -> None:
        """Create ``target``'s folders, then act; again if a delete pruned them meanwhile."""
        for attempt in range(3):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise FileExists(
                    f"cannot store {paths.key!r}: a leading part of it is an object, "
                    "and the local store cannot keep both 'a' and 'a/b'"
                ) from exc
            try:
                action()
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    async def delete(self, bucket: str, key: str) -> None:
        await self._ensure_ready()
        await asyncio.to_thread(self._delete_sync, self._paths(bucket, key))

    def _delete_sync(self, paths: ObjectPaths) -> None:
        if not paths.bucket_dir.is_dir():
            raise NotFound("no such bucket")
        with self._locked(paths):
            try:
                st = os.lstat(paths.data)
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise NotFound(f"no such key: {paths.key!r}") from exc
            if not statmod.S_ISREG(st.st_mode):
                raise NotFound(f"no such key: {paths.key!r}")
            # Metadata first: data without metadata is repaired, the reverse would linger.
            paths.meta.unlink(missing_ok=True)
            paths.data.unlink(missing_ok=True)
            self._meta_cache.forget((paths.bucket, paths.key))
        prune_empty_dirs(paths.data.parent, paths.bucket_dir)
        prune_empty_dirs(paths.meta.parent, paths.meta_dir)

    # -- buckets and listing ------------------------------------------------

    async def buckets(self) -> builtins.list[str]:
        await self._ensure_ready()
        return await asyncio.to_thread(self._buckets_sync)

    def _buckets_sync(self) -> builtins.list[str]:
        with os.scandir(self._root) as entries:
            names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
        valid = []
        for name in names:
            with contextlib.suppress(BadRequest):
                valid.append(validate_bucket(name))
        return sorted(valid)

    async def create_bucket(self, name: str) -> None:
        """Create an empty bucket; ``FileExists`` if it already exists."""
        await self._ensure_ready()
        validate_bucket(name)
        await asyncio.to_thread(self._create_bucket_sync, name)

    def _create_bucket_sync(self, name: str) -> None:
        try:
            (self._root / name).mkdir()
        except FileExistsError as exc:
            raise FileExists(f"bucket {name!r} exists") from exc
        (self._meta_root / name).mkdir(parents=True, exist_ok=True)
        fsync_dir(self._root)

    async def list(
        self, bucket: str, *, prefix: str = "", marker: str = "", limit: int = MAX_LIST_LIMIT
    ) -> tuple[builtins.list[ObjectMeta], str]:
        await self._ensure_ready()
        validate_bucket(bucket)
        limit = max(1, min(limit, MAX_LIST_LIMIT))
        return await asyncio.to_thread(self._list_sync, bucket, prefix, marker, limit)

    def _list_sync(
        self, bucket: str, prefix: str, marker: str, limit: int
    ) -> tuple[builtins.list[ObjectMeta], str]:
        bucket_dir = self._root / bucket
        if not bucket_dir.is_dir():
            raise NotFound("no such bucket")
        found: builtins.list[ObjectMeta] = []
        keys = walk_keys(str(bucket_dir), "", prefix, marker, self._limits.max_key_bytes)
        for key in keys:
            try:
                found.append(self._load(self._paths(bucket, key), False)[0])
            except NotFound:  # deleted while we listed
                continue
            if len(found) == limit:
                more = next(keys, None) is not None
                return found, (found[-1].key if more else "")
        return found, ""
