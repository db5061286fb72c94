"""Qiniu's resumable upload, version 2 (multipart), and the resumable routes.

::

    POST   /buckets/<bucket>/objects/<b64 key | ~>/uploads                    -> uploadId
    PUT    /buckets/<bucket>/objects/<b64 key | ~>/uploads/<uploadId>/<n>     one part
    POST   /buckets/<bucket>/objects/<b64 key | ~>/uploads/<uploadId>        complete
    DELETE /buckets/<bucket>/objects/<b64 key | ~>/uploads/<uploadId>        abort
    GET    /buckets/<bucket>/objects/<b64 key | ~>/uploads/<uploadId>        list parts

Each request carries ``Authorization: UpToken <upload token>``, verified
each time; the bucket must be the token's (403). Initiating answers
``{"uploadId", "expireAt"}`` (``~``: the key is decided at completion, by
``saveKey`` or the hash). A part (number 1..10000, at most 1 GiB) answers
``{"etag", "md5"}``; its ``Content-MD5`` (hex, as the SDK sends it, or
base64) is checked (400). Completion takes ``{"parts": [{"etag",
"partNumber"}, ...], "fname", "mimeType", "customVars"}``: part numbers
ascending, each part's etag as answered, every part but the last at least
1 MiB (400 otherwise); it answers like a form upload, the same policy rules
applying (:mod:`dora.gateway.uploadcore`). An unknown or expired upload,
or one of another access key, bucket or key, is Qiniu's 612.

:func:`add_resumable_routes` adds these and the v1 routes
(:mod:`dora.gateway.resumable_v1`) around one part store.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import Any

from aiohttp import web

from dora.b64 import urlsafe_b64decode
from dora.errors import BadRequest, Forbidden, PayloadTooLarge
from dora.gateway.context import GatewayContext
from dora.gateway.parts import (
    MAX_PART_BYTES,
    MIN_PART_BYTES,
    NoSuchUpload,
    PartLimits,
    PartStore,
    Session,
    read_files,
)
from dora.gateway.resumable_v1 import ResumableV1
from dora.gateway.uploadcore import (
    Assembled,
    UploadIntent,
    finish_upload,
    int_param,
    policy_from_header,
    store_assembled,
    upload_limit,
)
from dora.layout import uploads_root
from dora.storage.keys import validate_key
from dora.tokens import UploadPolicy

__all__ = ["ResumableV2", "add_resumable_routes"]

READ_CHUNK = 256 * 1024
MAX_COMPLETE_BODY = 4 * 1024 * 1024  # 10000 parts of {"etag", "partNumber"} and the rest
MAX_LIST = 1000
_HEX_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_UPLOADS = "/buckets/{bucket}/objects/{key}/uploads"


def add_resumable_routes(
    router: web.UrlDispatcher, ctx: GatewayContext, limits: PartLimits | None = None
) -> PartStore:
    """Add the v1 and v2 resumable upload routes (before any catch-all); the store."""
    parts = PartStore(
        uploads_root(ctx.settings), limits or PartLimits.from_limits(ctx.settings.limits)
    )
    ResumableV1(ctx, parts).add_routes(router)
    ResumableV2(ctx, parts).add_routes(router)
    return parts


def _path_key(text: str) -> str | None:
    """The object key in a v2 path: ``~`` for none, else URL-safe base64."""
    if text == "~":
        return None
    try:
        return urlsafe_b64decode(text).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("the encoded object name is not UTF-8") from exc


def _content_md5(request: web.Request) -> str | None:
    given = request.headers.get("Content-MD5", "").strip()
    if not given:
        return None
    if _HEX_MD5.fullmatch(given):
        return given.lower()
    try:
        raw = base64.b64decode(given, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 16:
        raise BadRequest("Content-MD5 must be 32 hex digits or the base64 of 16 bytes")
    return raw.hex()


def _json(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _complete_parts(doc: Any, max_parts: int) -> list[tuple[int, str]]:
    """``[(partNumber, etag), ...]`` from a completion body, checked."""
    parts = doc.get("parts") if isinstance(doc, dict) else None
    if not isinstance(parts, list) or not parts:
        raise BadRequest("want a JSON object with a non-empty 'parts' list")
    if len(parts) > max_parts:
        raise BadRequest(f"at most {max_parts} parts")
    out: list[tuple[int, str]] = []
    for item in parts:
        number = item.get("partNumber") if isinstance(item, dict) else None
        etag = item.get("etag") if isinstance(item, dict) else None
        if not isinstance(number, int) or isinstance(number, bool) or not isinstance(etag, str):
            raise BadRequest("each part is {'etag': <string>, 'partNumber': <integer>}")
        if out and number <= out[-1][0]:
            raise BadRequest("part numbers must be in ascending order, without repeats")
        out.append((number, etag))
    return out


def _is_custom_var(name: Any, value: Any) -> bool:
    return isinstance(name, str) and name.startswith("x:") and isinstance(value, str)


def _opt_str(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"{name!r} must be a string")


class ResumableV2:
    """The v2 endpoints of one gateway, around its part store."""

    def __init__(self, ctx: GatewayContext, parts: PartStore) -> None:
        self.ctx = ctx
        self.parts = parts

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(_UPLOADS, self.initiate)
        router.add_put(_UPLOADS + r"/{upload_id}/{part:\d+}", self.upload_part)
        router.add_post(_UPLOADS + "/{upload_id}", self.complete)
        router.add_delete(_UPLOADS + "/{upload_id}", self.abort)
        router.add_get(_UPLOADS + "/{upload_id}", self.list_parts, allow_head=False)

    def _bucket(self, request: web.Request, policy: UploadPolicy) -> str:
        bucket = request.match_info["bucket"]
        if bucket != policy.bucket:
            raise Forbidden("bucket doesn't match with scope")
        return bucket

    async def _session(
        self, request: web.Request, *, vet: bool = False
    ) -> tuple[UploadPolicy, Session]:
        policy = await policy_from_header(request, self.ctx, vet=vet)
        bucket = self._bucket(request, policy)
        key = _path_key(request.match_info["key"])
        session = await self.parts.get_session(request.match_info["upload_id"])
        # Another's upload is as good as none: say nothing about it.
        if (session.access_key, session.bucket, session.key) != (policy.access_key, bucket, key):
            raise NoSuchUpload()
        return policy, session

    async def initiate(self, request: web.Request) -> web.Response:
        """Start an upload; ``{"uploadId", "expireAt"}``."""
        policy = await policy_from_header(request, self.ctx)
        bucket = self._bucket(request, policy)
        key = _path_key(request.match_info["key"])
        if key is not None:
            validate_key(key, self.ctx.settings.limits.max_key_bytes)  # 400 now, not at the end
        intent = UploadIntent(self.ctx, policy, requested_key=key, fname="", custom_vars={},
                              declared_mime=None)  # fmt: skip
        intent.precheck_key()
        session = await self.parts.create_session(policy.access_key, bucket, key)
        return _json({"uploadId": session.upload_id, "expireAt": session.expires_at})

    async def upload_part(self, request: web.Request) -> web.Response:
        """Receive one part; ``{"etag", "md5"}``."""
        policy, session = await self._session(request)
        number = int_param(request.match_info["part"], "partNumber", 1, self.parts.limits.max_parts)
        limit = upload_limit(self.ctx.settings, policy)
        length = request.content_length
        if length is None:
            raise BadRequest("Content-Length is required")
        if length > limit:
            raise PayloadTooLarge(f"file is larger than the limit of {limit} bytes")
        if not 1 <= length <= MAX_PART_BYTES:
            raise BadRequest(f"a part is 1..{MAX_PART_BYTES} bytes, not {length}")
        part = await self.parts.put_part(
            session,
            number,
            request.content.iter_chunked(READ_CHUNK),
            length,
            limit=limit,
            expected_md5=_content_md5(request),
        )
        return _json({"etag": part.etag, "md5": part.md5})

    async def complete(self, request: web.Request) -> web.Response:
        """Assemble the listed parts, in order, into the object."""
        policy, session = await self._session(request, vet=True)
        raw = bytearray()
        while chunk := await request.content.read(READ_CHUNK):
            raw += chunk
            if len(raw) > MAX_COMPLETE_BODY:
                raise BadRequest(f"the completion body is over {MAX_COMPLETE_BODY} bytes")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise BadRequest("the completion body is not JSON") from exc
        wanted = _complete_parts(doc, self.parts.limits.max_parts)
        custom = doc.get("customVars") or {}
        if not isinstance(custom, dict):
            raise BadRequest("'customVars' must be an object")
        intent = UploadIntent(
            self.ctx,
            policy,
            requested_key=session.key,
            fname=_opt_str(doc, "fname") or "",
            custom_vars={
                k: v for k, v in custom.items() if k.startswith("x:") and isinstance(v, str)
            },
            declared_mime=_opt_str(doc, "mimeType"),
        )
        async with self.parts.locked(session):
            stored = {p.number: p for p in await self.parts.list_parts(session)}
            files = []
            for index, (number, etag) in enumerate(wanted):
                part = stored.get(number)
                if part is None or part.etag != etag:
                    raise BadRequest(f"part {number}: no such part, or not with this etag")
                if index < len(wanted) - 1 and part.size < MIN_PART_BYTES:
                    raise BadRequest(
                        f"part {number} is under {MIN_PART_BYTES} bytes; only the last may be"
                    )
                files.append((part.path, part.size))
            total = sum(size for _, size in files)
            content = Assembled(total, lambda: read_files(files, NoSuchUpload))
            meta = await store_assembled(intent, content)
            await asyncio.shield(self.parts.drop_session(session))
        return await finish_upload(request, intent, meta)

    async def abort(self, request: web.Request) -> web.Response:
        """Drop an upload and its parts."""
        _, session = await self._session(request)
        async with self.parts.locked(session):
            await asyncio.shield(self.parts.drop_session(session))
        return web.Response(headers={"Cache-Control": "no-store"})

    async def list_parts(self, request: web.Request) -> web.Response:
        """The parts so far: ``max-parts`` (≤ 1000) after ``part-number-marker``."""
        _, session = await self._session(request)
        query = request.query
        limit = int_param(query.get("max-parts", str(MAX_LIST)), "max-parts", 1, MAX_LIST)
        marker = int_param(query.get("part-number-marker", "0"), "part-number-marker", 0, 10**6)
        after = [p for p in await self.parts.list_parts(session) if p.number > marker]
        page = after[:limit]
        body = {
            "uploadId": session.upload_id,
            "expireAt": session.expires_at,
            "partNumberMarker": page[-1].number if len(after) > limit else 0,
            "parts": [
                {"size": p.size, "etag": p.etag, "partNumber": p.number, "putTime": p.put_time}
                for p in page
            ],
        }
        return _json(body)
