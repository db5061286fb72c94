"""Where a job item's output is stored: saveas targets, automatic keys, HLS sets.

One chain's output becomes one object, or for HLS a set of objects:

- **saveas** ``bucket:key`` names the object. Without ``force`` (Qiniu's
  pfop semantics) an existing target is kept and the item reports it with
  ``returnOld: 1`` (the runner checks this before it runs the chain; a target
  that appears while the chain runs is kept too). With ``force`` it is
  overwritten.
- **no saveas** (or ``saveas`` naming only a bucket): the output is stored in
  the job's bucket (or that bucket) under its own Qiniu hash, as Qiniu
  stores such outputs under a hash-like key; the same output is stored once,
  and running the chain again is harmless. An HLS output, which is many
  files, goes to ``<persistentId>/<item index>.m3u8`` instead.
- **HLS** (``avthumb/m3u8``): the playlist is stored under its key and the
  segments next to it. A segment is ``<playlist key without .m3u8>-<segment
  name>`` (``videos/a.m3u8`` → ``videos/a-segment-000000.ts``), or with a
  ``pattern`` the pattern's name in the playlist's folder
  (``videos/clip-000000.ts``); an AES key written by the op is
  ``<playlist key without .m3u8>.key``. The playlist is rewritten to point at
  the stored keys: relative names, which resolve next to the playlist both
  over HTTP and in the local store's directory, or ``<domain>/<key>`` when the
  op was given a ``domain``. Segments are stored first and the playlist last,
  so a playlist that exists is complete.

File outputs stream from the worker's work directory in bounded chunks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from dora.builtin_ops.av.hls import base_url
from dora.errors import BadRequest, FileExists, NotFound, ProcessingFailed
from dora.etag import qiniu_etag
from dora.fop import Stage
from dora.ops import Output
from dora.storage.base import ObjectMeta, ObjectStore
from dora.storage.files import hash_file

CHUNK = 1024 * 1024
MAX_PLAYLIST_BYTES = 16 * 1024 * 1024
PLAYLIST_SUFFIX = ".m3u8"
_KEY_URI = re.compile(r'URI="([^"]*)"')


@dataclasses.dataclass(frozen=True, slots=True)
class Saved:
    """What an item reports about its stored output."""

    key: str
    hash: str
    keys: tuple[str, ...] = ()  # the other objects of an HLS set
    return_old: bool = False


async def existing(store: ObjectStore, bucket: str, key: str) -> ObjectMeta | None:
    """The object's metadata, or ``None`` when it does not exist."""
    try:
        return await store.stat(bucket, key)
    except NotFound:
        return None


def is_hls(output: Output) -> bool:
    """Whether an output is a playlist with segments (``avthumb/m3u8``)."""
    return output.path is not None and "playlist" in output.meta and "segments" in output.meta


def auto_key(job_id: str, index: int, output: Output) -> str | None:
    """The key of an output without a saveas key: a key of its own for HLS,
    ``None`` for a single object (it is stored under its hash)."""
    return f"{job_id}/{index}{PLAYLIST_SUFFIX}" if is_hls(output) else None


async def file_chunks(path: str) -> AsyncIterator[bytes]:
    """A file's bytes in bounded chunks, read off the event loop."""
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


async def save_output(
    store: ObjectStore,
    output: Output,
    bucket: str,
    key: str | None,
    *,
    overwrite: bool,
    last_stage: Stage,
    max_keys: int,
) -> Saved:
    """Store ``output`` at ``bucket:key`` (``None``: under its hash); see the module doc.

    ``overwrite`` False keeps an object that exists (``returnOld``).
    """
    if is_hls(output):
        if key is None:
            raise ValueError("an HLS output needs a key (see auto_key)")
        return await _save_hls(
            store, output, bucket, key, overwrite=overwrite, stage=last_stage, max_keys=max_keys
        )
    if key is None:
        key = await _hash_of(output)
        overwrite = True  # the key is the content: the same bytes, whoever wrote them
    data = output.body if output.body is not None else file_chunks(str(output.path))
    try:
        meta = await store.put(bucket, key, data, mime=output.mime, overwrite=overwrite)
    except FileExists:
        return await _kept(store, bucket, key)
    return Saved(meta.key, meta.hash)


async def _kept(store: ObjectStore, bucket: str, key: str) -> Saved:
    meta = await existing(store, bucket, key)
    if meta is None:  # it went away again: odd, but then nothing was kept
        raise FileExists(f"{bucket}:{key} exists and cannot be overwritten without force")
    return Saved(meta.key, meta.hash, return_old=True)


async def _hash_of(output: Output) -> str:
    if output.body is not None:
        return await asyncio.to_thread(qiniu_etag, output.body)
    etag, _ = await asyncio.to_thread(hash_file, Path(str(output.path)), "")
    return etag


def hls_keys(
    playlist_key: str, segments: list[str], key_file: str | None, stage: Stage
) -> dict[str, str]:
    """``{file name written by the op: key to store it under}`` (module doc)."""
    folder = playlist_key.rpartition("/")[0]
    folder = f"{folder}/" if folder else ""
    stem = playlist_key.removesuffix(PLAYLIST_SUFFIX) or playlist_key
    patterned = bool(stage.args.get("pattern"))
    names = {name: (f"{folder}{name}" if patterned else f"{stem}-{name}") for name in segments}
    if key_file is not None:
        names[key_file] = f"{stem}.key"
    if playlist_key in names.values():
        raise BadRequest(f"a segment would overwrite the playlist {playlist_key!r}")
    return names


def rewrite_playlist(text: str, keys: Mapping[str, str], folder: str, base: str | None) -> str:
    """The playlist with every segment (and key) URI pointing at its stored key."""

    def uri(name: str) -> str:
        key = keys.get(name)
        if key is None:
            raise ProcessingFailed(f"avthumb: the playlist lists an unexpected entry {name!r}")
        return base + key if base is not None else key.removeprefix(folder)

    def key_uri(match: re.Match[str]) -> str:
        return f'URI="{uri(match.group(1))}"' if match.group(1) in keys else match.group(0)

    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-KEY"):
            out.append(_KEY_URI.sub(key_uri, raw))
        elif line and not line.startswith("#"):
            out.append(uri(line.removeprefix(base) if base is not None else line))
        else:
            out.append(raw)
    return "\n".join(out) + "\n"


async def _save_hls(
    store: ObjectStore,
    output: Output,
    bucket: str,
    playlist_key: str,
    *,
    overwrite: bool,
    stage: Stage,
    max_keys: int,
) -> Saved:
    playlist = Path(str(output.path))
    folder_on_disk = playlist.parent
    segments = [str(name) for name in output.meta.get("segments", ())]
    key_file = output.meta.get("key")
    keys = hls_keys(playlist_key, segments, str(key_file) if key_file else None, stage)
    if len(keys) + 1 > max_keys:
        raise BadRequest(f"the HLS output has {len(keys)} segments; at most {max_keys - 1}")
    text = await asyncio.to_thread(_read_playlist, playlist)
    folder = playlist_key.rpartition("/")[0]
    base = base_url(str(stage.args["domain"])) if stage.args.get("domain") else None
    body = rewrite_playlist(text, keys, f"{folder}/" if folder else "", base).encode()
    for name, key in keys.items():
        await store.put(bucket, key, file_chunks(str(folder_on_disk / name)), overwrite=True)
    try:
        meta = await store.put(bucket, playlist_key, body, mime=output.mime, overwrite=overwrite)
    except FileExists:
        kept = await _kept(store, bucket, playlist_key)
        return dataclasses.replace(kept, keys=tuple(keys.values()))
    return Saved(meta.key, meta.hash, tuple(keys.values()))


def _read_playlist(path: Path) -> str:
    with path.open("rb") as handle:
        data = handle.read(MAX_PLAYLIST_BYTES + 1)
    if len(data) > MAX_PLAYLIST_BYTES:
        raise ProcessingFailed(f"avthumb: the playlist is larger than {MAX_PLAYLIST_BYTES} bytes")
    return data.decode("utf-8", errors="replace")
