"""Plain downloads: ``GET``/``HEAD /<bucket>/<key>`` without fops.

The object streams from the store in bounded chunks (never whole in
memory), with ``ETag: "<qiniu hash>"``, ``Last-Modified`` and
``Accept-Ranges: bytes``. Conditional requests (``If-None-Match``, else
``If-Modified-Since``) answer 304; one ``Range`` (``bytes=a-b``, ``a-``,
``-n``) answers 206, and an unsatisfiable one 416. Several ranges in one
header are answered with the whole object, which RFC 9110 allows.
"""

from __future__ import annotations

import re
from email.utils import formatdate, parsedate_to_datetime

from aiohttp import web

from dora.errors import ServiceUnavailable
from dora.gateway.errors import error_response
from dora.storage.base import ObjectMeta, ObjectStore

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
# Tries at reading an object that is being replaced under us.
_ATTEMPTS = 3


def http_date(unix: float) -> str:
    return formatdate(int(unix), usegmt=True)


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` list names ``etag`` (weak comparison)."""
    bare = etag.removeprefix("W/")
    for item in header.split(","):
        candidate = item.strip()
        if candidate == "*" or candidate.removeprefix("W/") == bare:
            return True
    return False


def not_modified(request: web.Request, etag: str, mtime: float | None) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present, else If-Modified-Since."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    if_modified_since = request.headers.get("If-Modified-Since")
    if if_modified_since is None or mtime is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since).timestamp()
    except (TypeError, ValueError, IndexError):
        return False  # an unreadable date is ignored, as the RFC says
    return int(mtime) <= since


class Unsatisfiable(Exception):
    """A Range that selects no byte of the object."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(start, end)`` one Range asks for, None for the whole object.

    Raises :class:`Unsatisfiable` when the range starts past the end (or asks
    for a zero-length suffix). A header that is not one byte range is ignored.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignore it
    if start >= size:
        raise Unsatisfiable
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def object_headers(meta: ObjectMeta) -> dict[str, str]:
    return {
        "ETag": f'"{meta.hash}"',
        "Last-Modified": http_date(meta.mtime),
        "Accept-Ranges": "bytes",
    }


async def serve_object(
    request: web.Request, store: ObjectStore, bucket: str, key: str
) -> web.StreamResponse:
    """Answer a plain GET or HEAD of one object."""
    for _ in range(_ATTEMPTS):
        response = await _try_serve(request, store, bucket, key)
        if response is not None:
            return response
    raise ServiceUnavailable("the object kept changing while being read; try again")


async def _try_serve(
    request: web.Request, store: ObjectStore, bucket: str, key: str
) -> web.StreamResponse | None:
    """One attempt; None when the object was replaced between stat and open."""
    meta = await store.stat(bucket, key)
    headers = object_headers(meta)
    if not_modified(request, headers["ETag"], meta.mtime):
        return web.Response(status=304, headers=headers)
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != headers["ETag"]:
        range_header = None  # the client's copy is stale: send it all
    try:
        selected = parse_range(range_header, meta.size)
    except Unsatisfiable:
        refusal = error_response(416, f"range not satisfiable: the object has {meta.size} bytes")
        refusal.headers["Content-Range"] = f"bytes */{meta.size}"
        return refusal
    start, end = selected if selected is not None else (0, meta.size - 1)
    response = web.StreamResponse(status=206 if selected is not None else 200, headers=headers)
    response.headers["Content-Type"] = meta.mime
    response.content_length = end - start + 1 if meta.size else 0
    if selected is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{meta.size}"
    if request.method == "HEAD" or meta.size == 0:
        await response.prepare(request)
        await response.write_eof()
        return response
    opened, chunks = await store.open_range(bucket, key, start, end)
    try:
        if opened.hash != meta.hash:
            return None  # replaced since the stat: the headers would lie
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    except ConnectionResetError:
        return response  # the client left mid-body; aiohttp ends the exchange quietly
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    await response.write_eof()
    return response
