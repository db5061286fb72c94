"""Signed management requests: read a bounded body, check its signature.

``pfop`` and the management API (:mod:`dora.gateway.manage`) take requests
signed with an access key, ``Authorization: QBox <AK>:<sign>`` or
``Authorization: Qiniu <AK>:<sign>`` (:func:`dora.auth.verify_authorization`),
over the raw path and query exactly as they came on the wire.

A signature must cover the body it arrives with: QBox signs a body only when
it is form-encoded, Qiniu signs any body that is not
``application/octet-stream``. A non-empty body the signature does not cover
is refused (401), since anyone could otherwise replace it under a captured
header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from dora.auth import FORM_CONTENT_TYPE, OCTET_STREAM, KeyRing, verify_authorization
from dora.errors import BadRequest, PayloadTooLarge, Unauthorized

# Bounds on a signed request: far above any real pfop (its fops are at most
# 32 KiB) or management call, far below anything that could hurt.
MAX_SIGNED_BODY = 128 * 1024
MAX_FORM_FIELDS = 32

JSON_CONTENT_TYPE = "application/json"


async def read_body(request: web.Request, limit: int = MAX_SIGNED_BODY) -> bytes:
    """The whole request body, or :class:`PayloadTooLarge` past ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _body_is_signed(header: str, content_type: str | None) -> bool:
    if header.startswith("QBox "):
        return content_type == FORM_CONTENT_TYPE
    return bool(content_type) and content_type != OCTET_STREAM


def verify_request(request: web.Request, body: bytes, keyring: KeyRing) -> str:
    """Check the request's signature over its raw target, host, type and body; the AK."""
    header = request.headers.get("Authorization")
    content_type = request.headers.get("Content-Type")
    access_key = verify_authorization(
        header,
        request.method,
        request.raw_path,
        request.host,
        content_type,
        request.headers,
        body,
        keyring,
    )
    if body and not _body_is_signed(header or "", content_type):
        raise Unauthorized(
            "the signature does not cover the request body: a QBox signature covers only "
            f"{FORM_CONTENT_TYPE} bodies, a Qiniu one any but {OCTET_STREAM}"
        )
    return access_key


async def signed_body(request: web.Request, keyring: KeyRing) -> bytes:
    """Read the body (bounded) and verify the request's signature; the body."""
    body = await read_body(request)
    verify_request(request, body, keyring)
    return body


def parse_form(body: bytes) -> dict[str, str]:
    """A form-encoded body as ``{name: first value}`` (bounded number of fields)."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError as exc:
        raise BadRequest("the form body is not UTF-8") from exc
    except ValueError as exc:
        raise BadRequest(f"malformed form body: {exc}") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def parse_fields(request: web.Request, body: bytes) -> Mapping[str, Any]:
    """A management body's fields: form-encoded, JSON (an object) or empty."""
    if not body:
        return {}
    if request.content_type == JSON_CONTENT_TYPE:
        try:
            fields = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"malformed JSON body: {exc}") from exc
        if not isinstance(fields, dict):
            raise BadRequest("the JSON body must be an object")
        return fields
    if request.content_type == FORM_CONTENT_TYPE:
        return parse_form(body)
    raise BadRequest(f"want a {FORM_CONTENT_TYPE} or {JSON_CONTENT_TYPE} body")
