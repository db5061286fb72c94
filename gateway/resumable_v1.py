"""Qiniu's resumable upload, version 1: blocks of 4 MiB, built chunk by chunk.

::

    POST /mkblk/<blockSize>              first chunk of a block   -> ctx
    POST /bput/<ctx>/<nextChunkOffset>   next chunk of that block -> ctx
    POST /mkfile/<fileSize>[/key/<b64>][/fname/<b64>][/mimeType/<b64>][/x:<var>/<b64>]...
         body: the last ctx of each block, comma-separated, in file order

Every request carries ``Authorization: UpToken <upload token>``; the token is
verified each time (a fresh one may replace an expired one, as Qiniu allows),
and ``mkfile`` applies its policy exactly like a form upload
(:mod:`dora.gateway.uploadcore`). A chunk's answer is
``{"ctx", "checksum", "crc32", "offset", "host", "expired_at"}``: the CRC-32
(which the SDK checks) and URL-safe base64 SHA-1 of the chunk, the offset
of the next chunk in its block, and the ctx's expiry (unix seconds).

The ctx is opaque and signed (HMAC-SHA256 under the part store's secret):
it names the block, its size, the next offset, the access key that made it
and its expiry. A ctx that does not verify is 400 ``invalid ctx``; one of
another access key is 400 too; an expired ctx, a block swept away, or a
chunk sent to the ctx of another offset is Qiniu's 701. Every block but the
last must be exactly 4 MiB and every block complete; the blocks' sizes must
add up to ``fileSize`` (400 otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from dora.b64 import decode_text, urlsafe_b64decode, urlsafe_b64encode
from dora.errors import BadRequest, PayloadTooLarge, UploadExpired
from dora.etag import BLOCK_SIZE
from dora.gateway.context import GatewayContext
from dora.gateway.parts import PartStore, read_files
from dora.gateway.uploadcore import (
    Assembled,
    UploadIntent,
    finish_upload,
    int_param,
    policy_from_header,
    store_assembled,
    upload_limit,
)

__all__ = ["BlockCtx", "ResumableV1", "decode_ctx", "encode_ctx"]

MAX_CTX_LENGTH = 512
READ_CHUNK = 256 * 1024
MAX_PARAMS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class BlockCtx:
    """What a ctx says: a block, how far it is written, whose it is, until when."""

    block_id: str
    access_key: str
    size: int
    offset: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, body.encode("ascii"), hashlib.sha256).digest())


def encode_ctx(key: bytes, ctx: BlockCtx) -> str:
    """The opaque, signed ctx text (no ``/`` or ``,``: it travels in paths and lists)."""
    fields = [1, ctx.block_id, ctx.access_key, ctx.size, ctx.offset, ctx.expires_at]
    body = _b64(json.dumps(fields, separators=(",", ":")).encode())
    return f"{body}.{_mac(key, body)}"


def decode_ctx(key: bytes, text: str, access_key: str, now: float | None = None) -> BlockCtx:
    """Verify a ctx for ``access_key``: 400 if forged or another's, 701 if expired."""
    body, dot, mac = text.strip().partition(".")
    if len(text) > MAX_CTX_LENGTH or not dot or not hmac.compare_digest(_mac(key, body), mac):
        raise BadRequest("invalid ctx")
    fields: Any = json.loads(urlsafe_b64decode(body))
    version, block_id, owner, size, offset, expires_at = fields
    if version != 1:
        raise BadRequest("invalid ctx")
    if owner != access_key:
        raise BadRequest("invalid ctx: it was made with another access key")
    if (time.time() if now is None else now) > expires_at:
        raise UploadExpired("ctx expired")
    return BlockCtx(block_id, owner, size, offset, expires_at)


def _content_length(request: web.Request, high: int) -> int:
    length = request.content_length
    if length is None:
        raise BadRequest("Content-Length is required")
    if not 1 <= length <= high:
        raise BadRequest(f"a chunk here is 1..{high} bytes, not {length}")
    return length


def _parse_params(tail: str) -> dict[str, str]:
    """``/name/<b64 value>/...`` after ``/mkfile/<size>``, values decoded."""
    segments = tail.strip("/").split("/") if tail.strip("/") else []
    if len(segments) % 2 or len(segments) > 2 * MAX_PARAMS:
        raise BadRequest("mkfile: want /<name>/<base64 value> pairs after the size")
    params: dict[str, str] = {}
    for name, value in zip(segments[::2], segments[1::2], strict=True):
        params.setdefault(name, decode_text(value))
    return params


class ResumableV1:
    """The v1 endpoints of one gateway, around its part store."""

    def __init__(self, ctx: GatewayContext, parts: PartStore) -> None:
        self.ctx = ctx
        self.parts = parts

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/mkblk/{size}", self.mkblk)
        router.add_post("/bput/{ctx}/{offset}", self.bput)
        router.add_post(r"/mkfile/{size:\d+}{params:(?:/.*)?}", self.mkfile)

    def _answer(self, request: web.Request, block: BlockCtx, ctx_text: str, crc32: int,
                sha1: bytes) -> web.Response:  # fmt: skip
        body = {
            "ctx": ctx_text,
            "checksum": urlsafe_b64encode(sha1),
            "crc32": crc32,
            "offset": block.offset,
            "host": f"{request.scheme}://{request.host}",
            "expired_at": block.expires_at,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _chunk(self, request: web.Request, block: BlockCtx, fresh: bool) -> web.Response:
        length = _content_length(request, block.size - block.offset)
        body = request.content.iter_chunked(READ_CHUNK)
        try:
            digests = await self.parts.write_block(block.block_id, block.offset, body, length)
        except BaseException:
            if fresh:  # a block nobody holds a ctx for
                await asyncio.shield(self.parts.drop_blocks([block.block_id]))
            raise
        done = dataclasses.replace(block, offset=block.offset + length)
        text = encode_ctx(await self.parts.signing_key(), done)
        return self._answer(request, done, text, digests.crc32, digests.sha1)

    async def mkblk(self, request: web.Request) -> web.Response:
        """``POST /mkblk/<blockSize>``: a new block and its first chunk."""
        policy = await policy_from_header(request, self.ctx)
        size = int_param(request.match_info["size"], "blockSize", 1, BLOCK_SIZE)
        limit = upload_limit(self.ctx.settings, policy)
        if size > limit:
            raise PayloadTooLarge(f"file is larger than the limit of {limit} bytes")
        _content_length(request, size)  # refuse before making a block
        block_id = await self.parts.new_block()
        expires_at = int(time.time() + self.parts.limits.ttl)
        block = BlockCtx(block_id, policy.access_key, size, 0, expires_at)
        return await self._chunk(request, block, fresh=True)

    async def bput(self, request: web.Request) -> web.Response:
        """``POST /bput/<ctx>/<offset>``: the next chunk of a block."""
        policy = await policy_from_header(request, self.ctx, vet=False)
        key = await self.parts.signing_key()
        block = decode_ctx(key, request.match_info["ctx"], policy.access_key)
        offset = int_param(request.match_info["offset"], "nextChunkOffset", 0, BLOCK_SIZE)
        if offset != block.offset:
            raise UploadExpired(f"this ctx is for the chunk at {block.offset}, not {offset}")
        if block.offset >= block.size:
            raise BadRequest("the block is complete")
        return await self._chunk(request, block, fresh=False)

    async def mkfile(self, request: web.Request) -> web.Response:
        """``POST /mkfile/<fileSize>/...``: the blocks, in order, become the object."""
        policy = await policy_from_header(request, self.ctx)
        file_size = int_param(request.match_info["size"], "fileSize", 1, 2**62)
        params = _parse_params(request.match_info["params"])
        intent = UploadIntent(
            self.ctx,
            policy,
            requested_key=params.get("key"),
            fname=params.get("fname", ""),
            custom_vars={k: v for k, v in params.items() if k.startswith("x:")},
            declared_mime=params.get("mimeType"),
        )
        intent.check_size(file_size)  # 413 before anything else
        blocks = await self._read_ctx_list(request, policy.access_key, file_size)
        ids = [b.block_id for b in blocks]
        on_disk = await self.parts.block_sizes(ids)
        if any(have != b.size for have, b in zip(on_disk, blocks, strict=True)):
            raise UploadExpired("a block changed after its ctx was issued")
        files = [(self.parts.block_path(b.block_id), b.size) for b in blocks]
        content = Assembled(file_size, lambda: read_files(files, UploadExpired))
        meta = await store_assembled(intent, content)
        await asyncio.shield(self.parts.drop_blocks(ids))
        return await finish_upload(request, intent, meta)

    async def _read_ctx_list(
        self, request: web.Request, access_key: str, file_size: int
    ) -> list[BlockCtx]:
        count = -(-file_size // BLOCK_SIZE)
        bound = count * (MAX_CTX_LENGTH + 1)
        text = bytearray()
        while chunk := await request.content.read(READ_CHUNK):
            text += chunk
            if len(text) > bound:
                raise BadRequest(f"the ctx list is longer than {count} ctx can be")
        items = [t for t in text.decode("ascii", "replace").strip().split(",") if t.strip()]
        if len(items) != count:
            raise BadRequest(f"a {file_size}-byte file has {count} blocks, not {len(items)}")
        key = await self.parts.signing_key()
        blocks = [decode_ctx(key, item, access_key) for item in items]
        for index, block in enumerate(blocks):
            if block.offset != block.size:
                raise BadRequest(f"block {index + 1} is incomplete ({block.offset}/{block.size})")
            if index < count - 1 and block.size != BLOCK_SIZE:
                raise BadRequest(f"block {index + 1} is {block.size} bytes; want {BLOCK_SIZE}")
        if sum(b.size for b in blocks) != file_size:
            raise BadRequest(f"the blocks add up to {sum(b.size for b in blocks)}, not {file_size}")
        return blocks
