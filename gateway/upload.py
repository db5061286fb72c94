"""Form upload, ``POST /`` (multipart), as Qiniu's upload host answers it.

Fields: ``token`` (required), ``key``, ``x:<name>`` custom variables,
``crc32``, ``fname``, ``mimeType``, then ``file``, which must come last (as
Qiniu's documentation asks; a form field after it is ignored) and after the
token, so that a bad token is refused before any byte is stored.

Qiniu's rules, kept here:

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

``persistentOps`` is left to two hooks: :data:`~dora.gateway.context.BeforeUpload`
vets the policy before the file is read, :data:`~dora.gateway.context.AfterUpload`
runs after the object is stored and may add ``persistentId``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import BodyPartReader, web

from dora.errors import BadRequest, FileExists, Forbidden, NotFound, Unauthorized
from dora.gateway.context import GatewayContext, UploadedObject
from dora.gateway.errors import request_id
from dora.gateway.incoming import IncomingFile
from dora.gateway.magic import (
    CONTENT_VARIABLES,
    Value,
    clock_variables,
    expand_return_body,
    expand_save_key,
    split_fname,
    template_variables,
)
from dora.gateway.process import read_file_chunks
from dora.mime import OCTET_STREAM, SNIFF_BYTES, sniff_mime
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


def mime_allowed(mime: str, limit: str) -> bool:
    """Qiniu's ``mimeLimit``: ``image/*;video/mp4`` allows, ``!image/*`` forbids."""
    deny = limit.startswith("!")
    patterns = [p.strip().lower() for p in limit.lstrip("!").split(";") if p.strip()]
    mime = mime.split(";", 1)[0].strip().lower()
    hit = any(
        mime == p or (p.endswith("/*") and mime.startswith(p[:-1])) or p == "*/*" for p in patterns
    )
    return not hit if deny else hit


class FormUpload:
    """One form upload being received."""

    def __init__(self, ctx: GatewayContext, policy: UploadPolicy, fields: Mapping[str, str],
                 part: BodyPartReader) -> None:  # fmt: skip
        self.ctx = ctx
        self.policy = policy
        self.fields = fields
        self.part = part
        self.fname = fields.get("fname") or part.filename or ""
        self.custom_vars = {k: v for k, v in fields.items() if k.startswith("x:")}
        self.now = time.time()

    def variables(self, meta: ObjectMeta | None, incoming: IncomingFile | None) -> dict[str, Value]:
        fprefix, ext = split_fname(self.fname)
        values: dict[str, Value] = {
            "bucket": self.policy.bucket,
            "fname": self.fname,
            "fprefix": fprefix,
            "ext": ext,
            "endUser": self.policy.end_user,
            **clock_variables(self.now),
            **self.custom_vars,
        }
        if incoming is not None and incoming.finished:
            values.update(etag=incoming.etag, hash=incoming.etag, fsize=incoming.size)
        if meta is not None:
            values.update(key=meta.key, etag=meta.hash, hash=meta.hash, fsize=meta.size,
                          mimeType=meta.mime)  # fmt: skip
        return values

    def declared_mime(self) -> str | None:
        """The MIME type the client declared, unless the policy wants detection."""
        if self.policy.raw.get("detectMime"):
            return None
        declared = self.fields.get("mimeType") or self.part.headers.get("Content-Type") or ""
        declared = declared.strip()
        return declared if declared and declared.lower() != OCTET_STREAM else None

    def _forced_save_key(self) -> bool:
        return bool(self.policy.raw.get("forceSaveKey")) and self.policy.save_key is not None

    def _key_from_form(self) -> str | None:
        """The form's key when it decides (a forced saveKey overrides it)."""
        return None if self._forced_save_key() else self.fields.get("key")

    def needs_content_for_key(self) -> bool:
        """Whether the key can be known only after the whole file is read."""
        if self._key_from_form() is not None or self._must_name_scope_key():
            return False
        if self.policy.save_key is None:
            return True  # the hash is the key
        return bool(template_variables(self.policy.save_key) & CONTENT_VARIABLES)

    def _must_name_scope_key(self) -> bool:
        """Qiniu: with a ``bucket:key`` token the form must name that key."""
        p = self.policy
        return (
            p.key is not None
            and not p.is_prefix_scope
            and not self._forced_save_key()
            and self.fields.get("key") is None
        )

    def resolve_key(self, incoming: IncomingFile | None) -> str:
        """The key to store under, checked against the token's scope."""
        if self._must_name_scope_key():
            raise Forbidden("key doesn't match with scope")
        key = self._key_from_form()
        if key is None:
            if self.policy.save_key is not None:
                key = expand_save_key(self.policy.save_key, self.variables(None, incoming))
            else:
                assert incoming is not None and incoming.finished
                key = incoming.etag
        if not self.policy.allows_key(key):
            raise Forbidden("key doesn't match with scope")
        return key

    @property
    def insert_only(self) -> bool:
        p = self.policy
        return p.insert_only or p.key is None or p.is_prefix_scope

    @property
    def limit(self) -> int:
        limit = self.ctx.settings.limits.max_upload_bytes
        if self.policy.fsize_limit:
            limit = min(limit, self.policy.fsize_limit)
        return limit

    async def receive(self) -> ObjectMeta:
        """Stream the file into the store; the stored object's metadata."""
        crc = _parse_crc32(self.fields.get("crc32"))
        spool = self.needs_content_for_key()
        key = None if spool else self.resolve_key(None)  # refuse early when we can
        incoming = IncomingFile(
            self.part, limit=self.limit, expected_crc32=crc, want_etag=spool or self.insert_only
        )
        mime = self.declared_mime()
        if mime is None and self.policy.mime_limit:
            head = await incoming.peek()
            mime = sniff_mime(head[:SNIFF_BYTES], self.fields.get("key") or self.fname)
        if (
            mime is not None
            and self.policy.mime_limit
            and not mime_allowed(mime, self.policy.mime_limit)
        ):
            raise Forbidden(f"mimeType {mime!r} is not allowed by the upload policy")
        if key is not None:
            return await self._store(key, incoming, incoming.chunks(), mime)
        path = await incoming.spool(self.ctx.spool_dir)
        try:
            key = self.resolve_key(incoming)
            return await self._store(key, incoming, read_file_chunks(str(path)), mime)
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)

    async def _store(
        self, key: str, incoming: IncomingFile, data: AsyncIterator[bytes], mime: str | None
    ) -> ObjectMeta:
        """Put the object (``mime`` None: the store sniffs it)."""
        store = self.ctx.store
        bucket = self.policy.bucket
        try:
            return await store.put(bucket, key, data, mime=mime, overwrite=not self.insert_only,
                                   max_bytes=self.limit)  # fmt: skip
        except FileExists:
            # Qiniu: adding a key that exists succeeds when the content is the same.
            if not incoming.finished:
                await incoming.drain()
            try:
                existing = await store.stat(bucket, key)
            except NotFound:
                raise FileExists("file exists") from None
            if existing.hash != incoming.etag:
                raise FileExists("file exists") from None
            return existing


def _answer(upload: FormUpload, meta: ObjectMeta, extra: Mapping[str, Any] | None) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if upload.policy.return_body:
        variables = upload.variables(meta, None)
        persistent_id = (extra or {}).get("persistentId")
        variables["persistentId"] = None if persistent_id is None else str(persistent_id)
        body = expand_return_body(upload.policy.return_body, variables)
    else:
        body = json.dumps({"hash": meta.hash, "key": meta.key, **(extra or {})}, ensure_ascii=False)
    return web.Response(text=body, content_type="application/json", headers=headers)


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
            extra = None
            if ctx.after_upload is not None:
                # Shielded: the object is stored, so its follow-up (a job)
                # must not be lost to a client hanging up now.
                uploaded = UploadedObject(
                    meta, policy, upload.custom_vars, upload.fname, request_id(request)
                )
                extra = await asyncio.shield(ctx.after_upload(uploaded))
            return _answer(upload, meta, extra)
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
