"""The error edge of the gateway: every failure leaves in one JSON shape.

A :class:`~dora.errors.DoraError` becomes ``{"code": status, "error": msg}``
with its own status (Qiniu's 599, 612 and 614 included); aiohttp's own HTTP
errors (unknown route, wrong method, body too large) take the same shape;
anything unexpected is a 500 whose details stay in the log, under the
request id. Error answers carry ``Cache-Control: no-store``.

Every response, error or not, carries ``X-Reqid``: the client's own when it
sent a sane one, else a fresh one.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from dora.errors import DoraError

log = logging.getLogger("dora.gateway")

REQID: Final = web.RequestKey("dora_reqid", str)
_SANE_REQID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Reason phrases for Qiniu's own statuses, which the HTTP registry lacks.
_REASONS: Final = {
    579: "Callback Failed",
    599: "Processing Failed",
    612: "No Such Entry",
    614: "File Exists",
}


def request_id(request: web.Request) -> str:
    """The id of this request, assigned on first use."""
    reqid = request.get(REQID)
    if reqid is None:
        given = request.headers.get("X-Reqid", "")
        reqid = given if _SANE_REQID.fullmatch(given) else secrets.token_urlsafe(12)
        request[REQID] = reqid
    return reqid


def error_response(status: int, message: str, *, retry_after: float | None = None) -> web.Response:
    """The wire form of an error: Qiniu's JSON, never cached."""
    body = json.dumps({"code": status, "error": message}, ensure_ascii=False)
    response = web.Response(
        status=status,
        reason=_REASONS.get(status),
        text=body,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate every exception leaving a handler into the JSON error form."""
    reqid = request_id(request)
    try:
        return await handler(request)
    except DoraError as exc:
        if 500 <= exc.status < 600:  # Qiniu's 6xx/7xx are the client's, not ours
            log.warning("reqid=%s %s %s -> %d %s", reqid, request.method, request.path,
                        exc.status, exc.message)  # fmt: skip
        return error_response(exc.status, exc.message, retry_after=exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
        return error_response(exc.status, message or exc.reason.lower())
    except ConnectionResetError:
        raise  # the client went away mid-answer: nobody to tell
    except Exception:
        log.exception("reqid=%s %s %s: unexpected error", reqid, request.method, request.path)
        return error_response(500, f"internal error (reqid {reqid})")


async def add_reqid_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: stamp the request id on every response."""
    response.headers["X-Reqid"] = request_id(request)
