"""Form upload, ``POST /`` (multipart), as Qiniu's upload host answers it.

Fields: ``token`` (required), ``key``, ``x:<name>`` custom variables,
``crc32``, ``fname``, ``mimeType``, then ``file``, which must come last (as
Qiniu's documentation asks; a form field after it is ignored) and after the
token, so that a bad token is refused before any byte is stored.

Qiniu's rules, shared with the resumable uploads (:mod:`dora.gateway.uploadcore`):

- A bad or expired token is 401. A key outside the token's scope is 403
  ``key doesn't match with scope``; with a ``bucket:key`` scope the form
  must name that key.
- With no key, the key is the policy's ``saveKey`` (magic variables
  expanded), else the file's hash.
- ``bucket:key`` scopes overwrite. ``bucket`` scopes, prefix scopes
  (``isPrefixalScope``) and ``insertOnly`` only add: an existing key is 614
  ``file exists`` — unless it holds the very same content, which succeeds.
- The file is limited by ``Limits.max_upload_bytes`` and the policy's
  ``fsizeLimit`` (413, nothing stored); ``mimeLimit`` refusals are 403.
- The answer is ``{"hash", "key"}`` or the policy's ``returnBody``, expanded.

The file is streamed: to the store when the key is known up front, else to
a spool file first (the key depends on the content).

``persistentOps`` is left to two hooks: :data:`~dora.gateway.context.BeforeUpload`
vets the policy before the file is read, :data:`~dora.gateway.context.AfterUpload`
runs after the object is stored and may add ``persistentId``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiohttp import BodyPartReader, web

from dora.errors import BadRequest, Unauthorized
from dora.gateway.context import GatewayContext
from dora.gateway.incoming import IncomingFile
from dora.gateway.process import read_file_chunks
from dora.gateway.uploadcore import UploadIntent, finish_upload, store_upload
from dora.mime import SNIFF_BYTES, sniff_mime
from dora.storage.base import ObjectMeta
from dora.tokens import UploadPolicy, verify_upload_token

MAX_FIELDS = 256
MAX_FIELD_BYTES = 64 * 1024


async def _read_field(part: BodyPartReader) -> str:
    """A form field's text, bounded in size."""
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD_BYTES):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"form field {part.name!r} is not UTF-8") from exc


def _parse_crc32(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit() or int(text) > 0xFFFFFFFF:
        raise BadRequest(f"crc32 must be a decimal unsigned 32-bit integer, got {text[:32]!r}")
    return int(text)


class FormUpload:
    """One form upload being received."""

    def __init__(self, ctx: GatewayContext, policy: UploadPolicy, fields: Mapping[str, str],
                 part: BodyPartReader) -> None:  # fmt: skip
        self.fields = fields
        self.part = part
        self.intent = UploadIntent(
            ctx,
            policy,
            requested_key=fields.get("key"),
            fname=fields.get("fname") or part.filename or "",
            custom_vars={k: v for k, v in fields.items() if k.startswith("x:")},
            declared_mime=fields.get("mimeType") or part.headers.get("Content-Type"),
        )

    async def receive(self) -> ObjectMeta:
        """Stream the file into the store; the stored object's metadata."""
        intent = self.intent
        crc = _parse_crc32(self.fields.get("crc32"))
        spool = intent.needs_content_for_key()
        key = None if spool else intent.resolve_key()  # refuse early when we can
        incoming = IncomingFile(
            self.part, limit=intent.limit, expected_crc32=crc, want_etag=spool or intent.insert_only
        )
        mime = intent.content_mime
        if mime is None and intent.policy.mime_limit:
            head = await incoming.peek()
            mime = sniff_mime(head[:SNIFF_BYTES], intent.requested_key or intent.fname)
        if mime is not None:
            intent.check_mime(mime)

        async def content_etag() -> str:
            if not incoming.finished:
                await incoming.drain()
            return incoming.etag

        if key is not None:
            return await store_upload(intent, key, incoming.chunks(), mime, content_etag)
        path = await incoming.spool(intent.ctx.spool_dir)
        try:
            key = intent.resolve_key(etag=incoming.etag, fsize=incoming.size)
            return await store_upload(intent, key, read_file_chunks(str(path)), mime, content_etag)
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)


async def handle_upload(request: web.Request, ctx: GatewayContext) -> web.Response:
    """``POST /``: a Qiniu form upload."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("want a multipart/form-data body (Qiniu form upload)")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    fields: dict[str, str] = {}
    policy: UploadPolicy | None = None
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from exc
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        name = part.name or ""
        if name == "file":
            if policy is None:
                raise Unauthorized("token not specified: the token field must precede the file")
            upload = FormUpload(ctx, policy, fields, part)
            meta = await upload.receive()
            return await finish_upload(request, upload.intent, meta)
        if len(fields) >= MAX_FIELDS:
            raise BadRequest(f"more than {MAX_FIELDS} form fields")
        value = await _read_field(part)
        if name in fields:
            continue  # the first of repeated fields counts, the token included
        fields[name] = value
        if name == "token":
            policy = verify_upload_token(value, ctx.keyring)
            if ctx.before_upload is not None:
                await ctx.before_upload(policy)
    if policy is None:
        raise Unauthorized("token not specified")
    raise BadRequest("file not specified")
