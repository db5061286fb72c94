"""Processing URLs: ``GET /<bucket>/<key>?<fop>[|<fop>...][|saveas/<entry>/sign/<AK>:<sig>]``.

The order matters, because every check that can fail cheaply runs before
any work: parse the fops against the catalog (400 naming the op and the
argument), check a saveas signature (401), stat the object (404, 413), answer
a matching ``If-None-Match`` (304) — and only then read the source and run
the chain. Results are cached by ``(object hash, fops text)`` and identical
concurrent misses share one run (:mod:`dora.gateway.cache`).

Adjacent builtin ops run fused in one processor call (decode once, encode
once). A third-party op is its own segment; until the ufop runtime lands such
a segment is refused with 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web

from dora.b64 import urlsafe_b64encode
from dora.errors import (
    BadRequest,
    PayloadTooLarge,
    ProcessingFailed,
    ServiceUnavailable,
    Unauthorized,
)
from dora.etag import EtagHasher, qiniu_etag
from dora.fop import FopChain, Segment, parse_fops, plan
from dora.gateway.cache import ResultCache, SourceCache
from dora.gateway.context import GatewayContext
from dora.gateway.objects import not_modified
from dora.gateway.urls import Target
from dora.ops import Output
from dora.storage.base import ObjectMeta
from dora.tokens import verify_saveas_sign

# Beyond the op deadline the worker enforces, how long the gateway waits for
# its answer before giving up on it.
DEADLINE_SLACK = 2.0
FILE_CHUNK = 1024 * 1024


def parse_chain(ctx: GatewayContext, fops: str) -> FopChain:
    """Parse and vet a processing URL's fops: every op must be allowed in URLs."""
    chain = parse_fops(fops, ctx.catalog)
    for stage in chain.stages:
        if not ctx.catalog[stage.op].sync:
            raise BadRequest(f"{stage.op}: only available in asynchronous jobs (pfop)")
    return chain


def result_etag(object_hash: str, fops_text: str) -> str:
    """A strong validator of a processed result: the source's hash and the fops."""
    digest = hashlib.sha256(f"{object_hash}\n{fops_text}".encode()).digest()[:18]
    return f'"{urlsafe_b64encode(digest)}"'


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback and the RFC 6266 UTF-8 name."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class ChainRunner:
    """Reads a source and runs a chain's segments on it, through the processor."""

    def __init__(self, ctx: GatewayContext, sources: SourceCache) -> None:
        self._ctx = ctx
        self._sources = sources

    async def source(self, meta: ObjectMeta, chain: FopChain) -> bytes | str:
        """The source for a chain: the object's local file path when the store
        has one (the worker reads it in place: no copy through the gateway and
        the RPC), else the object's bytes (cached)."""
        store = self._ctx.store
        limit = self._ctx.settings.limits.max_source_bytes
        is_av = any(self._ctx.catalog[s.op].kind == "av" for s in chain.stages)
        if meta.size > limit and not is_av:
            raise PayloadTooLarge(f"source is {meta.size} bytes; the limit is {limit}")
        path = store.local_path(meta.bucket, meta.key)
        if path is not None:
            return str(path)
        if meta.size > limit:
            raise PayloadTooLarge(f"source is {meta.size} bytes; the limit is {limit}")

        async def read() -> tuple[bytes, str]:
            found, data = await store.get(meta.bucket, meta.key, max_bytes=limit)
            return data, found.hash

        return await self._sources.get_or_read((meta.bucket, meta.key, meta.hash), read)

    async def run(self, meta: ObjectMeta, chain: FopChain, segments: list[Segment]) -> Output:
        src: bytes | str = await self.source(meta, chain)
        timeout = self._ctx.settings.limits.op_timeout
        deadline = time.time() + timeout
        output: Output | None = None
        for segment in segments:
            if segment.service != "builtin":
                raise ServiceUnavailable(f"{segment.service}: no handler is running for this op")
            try:
                async with asyncio.timeout(max(0.0, deadline - time.time()) + DEADLINE_SLACK):
                    output = await self._ctx.processor.call(segment.stages, src, deadline=deadline)
            except TimeoutError:
                raise ProcessingFailed(f"deadline exceeded ({timeout:g} s)") from None
            src = output.body if output.body is not None else str(output.path)
        assert output is not None  # parse_fops guarantees at least one stage
        return output


async def serve_processed(
    request: web.Request,
    ctx: GatewayContext,
    runner: ChainRunner,
    results: ResultCache,
    target: Target,
) -> web.StreamResponse:
    """Answer a processing URL (the target has fops)."""
    assert target.fops is not None
    chain = parse_chain(ctx, target.fops)
    segments = plan(chain, ctx.catalog)
    if chain.saveas is not None:
        if chain.saveas.sign is None:
            raise Unauthorized(
                "saveas in a processing URL must be signed: append /sign/<AK>:<sign>"
            )
        verify_saveas_sign(request.host, target.raw_path, target.raw_query, ctx.keyring)
    meta = await ctx.store.stat(target.bucket, target.key)
    etag = result_etag(meta.hash, chain.fops_text)
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={ctx.settings.cache_max_age}",
    }
    attname = target.params.get("attname")
    if attname:
        headers["Content-Disposition"] = content_disposition(attname)
    # With saveas the request has a side effect, so it is never short-cut.
    if chain.saveas is None and not_modified(request, etag, None):
        return web.Response(status=304, headers=headers)

    output, hit = await results.get_or_compute(
        (meta.hash, chain.fops_text), lambda: runner.run(meta, chain, segments)
    )
    headers["X-Dora-Cache"] = "HIT" if hit else "MISS"
    headers["Content-Type"] = output.mime
    if chain.saveas is not None:
        await save_result(ctx, chain, output)
    if output.body is not None:
        return web.Response(body=output.body, headers=headers)
    assert output.path is not None
    return web.FileResponse(output.path, headers=headers)


async def save_result(ctx: GatewayContext, chain: FopChain, output: Output) -> None:
    """Store a result under the saveas entry (overwriting, as Qiniu does)."""
    assert chain.saveas is not None
    bucket, key = chain.saveas.bucket, chain.saveas.key
    if output.body is not None:
        data: bytes | AsyncIterator[bytes] = output.body
        if key is None:  # an entry naming the bucket alone: the result's hash is the key
            key = await asyncio.to_thread(qiniu_etag, output.body)
    else:
        assert output.path is not None
        if key is None:
            key = await asyncio.to_thread(_file_etag, output.path)
        data = read_file_chunks(output.path)
    await ctx.store.put(bucket, key, data, mime=output.mime, overwrite=True)


def _file_etag(path: str) -> str:
    hasher = EtagHasher()
    with open(path, "rb") as fh:
        while chunk := fh.read(FILE_CHUNK):
            hasher.update(chunk)
    return hasher.digest()


async def read_file_chunks(path: str) -> AsyncIterator[bytes]:
    """A file's bytes in bounded chunks, each read in a thread."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, FILE_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)
