"""Log lines of every Dora process, and the request id that ties them together.

One setup for every process (:func:`setup_logging`): a single handler on
stderr, its level from ``DORA_LOG_LEVEL`` (default ``INFO``) and its format
from ``DORA_LOG_FORMAT``:

- ``text`` (the default, for people)::

    2024-05-01 12:00:00,123 worker[42] INFO dora.call: call reqid=Xy3 ops=imageView2 status=200

- ``json`` (for machines): one object per line, with ``ts`` (UTC, ISO 8601
  with milliseconds), ``level``, ``role``, ``pid``, ``logger``, ``msg``, the
  request id when there is one, every ``extra=`` field, and ``exc`` for a
  traceback.

The request id lives in a context variable (:data:`REQID`): the gateway binds
it for each request (its ``X-Reqid``), the dispatcher for each job (the
job's ``reqid``). Tasks started inside inherit it, so the worker pool puts it
into every RPC call it sends, and any line logged meanwhile carries it. A
worker logs the reqid it received with each call.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Final, TextIO

__all__ = [
    "REQID",
    "JsonFormatter",
    "TextFormatter",
    "bound_reqid",
    "current_reqid",
    "setup_logging",
]

REQID: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar(
    "dora_reqid", default=None
)
FORMAT_ENV = "DORA_LOG_FORMAT"
LEVEL_ENV = "DORA_LOG_LEVEL"
MAX_FIELD_CHARS = 2048  # one extra field's text in a line; a log line stays bounded

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "reqid",
    "taskName",
}


def current_reqid() -> str | None:
    """The request id bound in this context, if any."""
    return REQID.get()


@contextlib.contextmanager
def bound_reqid(reqid: str | None) -> Iterator[None]:
    """Bind ``reqid`` for the block (and the tasks started in it)."""
    token = REQID.set(reqid or None)
    try:
        yield
    finally:
        REQID.reset(token)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _reqid(record: logging.LogRecord) -> str | None:
    given = record.__dict__.get("reqid")
    return given if isinstance(given, str) and given else None


def _clip(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "…"


class _ReqidFilter(logging.Filter):
    """Stamps each record with the request id bound where it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _reqid(record):
            record.reqid = REQID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "role": self.role,
            "pid": record.process,
            "logger": record.name,
            "msg": _clip(record.getMessage()),
        }
        reqid = _reqid(record)
        if reqid:
            line["reqid"] = reqid
        for key, value in _extras(record).items():
            line.setdefault(key, _clip(value))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def _text_value(value: Any) -> str:
    text = str(_clip(value))
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """The human format: time, role[pid], level, logger, message, then ``key=value``."""

    def __init__(self, role: str) -> None:
        super().__init__(f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields: dict[str, Any] = {}
        reqid = _reqid(record)
        if reqid:
            fields["reqid"] = reqid
        fields.update(_extras(record))
        if not fields:
            return text
        head, sep, tail = text.partition("\n")  # a traceback stays below the fields
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return f"{head} {pairs}{sep}{tail}"


def make_formatter(role: str, fmt: str | None = None) -> logging.Formatter:
    """The formatter ``DORA_LOG_FORMAT`` (or ``fmt``) asks for: ``json`` or ``text``."""
    chosen = (fmt or os.environ.get(FORMAT_ENV) or "text").strip().lower()
    return JsonFormatter(role) if chosen == "json" else TextFormatter(role)


def setup_logging(
    role: str,
    *,
    level: str | None = None,
    fmt: str | None = None,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send this process's logs to stderr as one handler on the root logger.

    ``role`` names the process in every line (gateway, worker, serve, jobs).
    Level and format come from ``DORA_LOG_LEVEL`` and ``DORA_LOG_FORMAT``
    unless given. Replaces any handler set up before; returns the new one.
    """
    environ = os.environ if env is None else env
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(role, fmt or environ.get(FORMAT_ENV)))
    handler.addFilter(_ReqidFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    chosen = (level or environ.get(LEVEL_ENV) or "INFO").upper()
    root.setLevel(chosen if chosen in logging.getLevelNamesMapping() else "INFO")
    return handler
