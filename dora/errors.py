"""The one error tree of Dora.

Every error knows its HTTP status; its wire form is Qiniu's
``{"code": <status>, "error": "<message>"}``. Foreign errors are translated
at the edge (``raise BadRequest(...) from exc``)::

    DoraError (500)
    ├── BadRequest (400)
    │   └── InvalidArgument (400)      a fop argument out of its schema
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)                 contradicts the current state
    ├── PayloadTooLarge (413)
    ├── TooManyRequests (429)
    ├── ServiceUnavailable (503)
    ├── ProcessingFailed (599)         an op failed on valid-looking input
    ├── NoSuchResource (612)           Qiniu's "no such ..." beyond a plain 404
    │   ├── UnknownJob                 a persistentId that does not exist
    │   └── NoSuchUpload               a resumable v2 uploadId that does not exist
    ├── FileExists (614)
    └── UploadExpired (701)            a resumable v1 context expired or misplaced
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class DoraError(Exception):
    """Base of every error Dora raises on purpose."""

    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``{"code": status, "error": message}``."""
        return {"code": self.status, "error": self.message}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False).encode()


class BadRequest(DoraError):
    status = 400
    default_message = "bad request"


class InvalidArgument(BadRequest):
    """A fop's argument violates the op's schema."""

    def __init__(self, op: str, arg: str, reason: str) -> None:
        self.op = op
        self.arg = arg
        super().__init__(f"{op}: invalid argument {arg!r}: {reason}")


class Unauthorized(DoraError):
    status = 401
    default_message = "bad token"


class Forbidden(DoraError):
    status = 403
    default_message = "forbidden"


class NotFound(DoraError):
    status = 404
    default_message = "no such file or directory"


class Conflict(DoraError):
    """The request contradicts the current state (a pipeline exists, a job is busy)."""

    status = 409
    default_message = "conflict"


class PayloadTooLarge(DoraError):
    status = 413
    default_message = "request entity too large"


class TooManyRequests(DoraError):
    status = 429
    default_message = "too many requests"


class ServiceUnavailable(DoraError):
    status = 503
    default_message = "service unavailable"


class ProcessingFailed(DoraError):
    status = 599
    default_message = "processing failed"


class NoSuchResource(DoraError):
    status = 612
    default_message = "no such resource"


class UnknownJob(NoSuchResource):
    default_message = "no such job"


class NoSuchUpload(NoSuchResource):
    default_message = "no such uploadId"


class UploadExpired(DoraError):
    status = 701
    default_message = "ctx expired or not for this chunk"


class FileExists(DoraError):
    status = 614
    default_message = "file exists"


_BY_STATUS: dict[int, type[DoraError]] = {
    cls.status: cls
    for cls in (
        DoraError,
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        TooManyRequests,
        ServiceUnavailable,
        ProcessingFailed,
        NoSuchResource,
        FileExists,
        UploadExpired,
    )
}


def error_from_status(status: int, message: str) -> DoraError:
    """Rebuild an error received over the wire (RPC or HTTP) from its status."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        err = DoraError(message)
        err.status = status  # type: ignore[misc]
        return err
    return cls(message)
