"""Qiniu's magic variables in upload policies: ``saveKey`` and ``returnBody``.

A put policy may name the stored key with a template (``saveKey``:
``"photos/$(year)/$(etag)$(ext)"``) and shape the upload's answer with
another (``returnBody``: ``{"key": $(key), "size": $(fsize), "who": "$(x:user)"}``).
Supported variables: ``bucket``, ``key``, ``etag`` (also ``hash``), ``fname``,
``fprefix``, ``ext``, ``fsize``, ``mimeType``, ``endUser``,
``persistentId``, ``uuid``, ``year``, ``mon``, ``day``, ``hour``, ``min``,
``sec`` (UTC) and custom ``x:<name>`` variables from the form.

In ``returnBody`` a variable inside a JSON string is inserted as escaped
string content; outside a string it is inserted as a JSON value (strings
quoted, sizes as numbers, unknown variables as ``null``), so the answer stays
valid JSON either way, as Qiniu's does.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from dora.errors import BadRequest

_VARIABLE = re.compile(r"\$\(([A-Za-z0-9_:.-]{1,64})\)")
# Variables whose value is known only once the whole file has been read.
CONTENT_VARIABLES = frozenset({"etag", "hash", "fsize", "mimeType"})

Value = str | int | None


def template_variables(template: str) -> set[str]:
    """The names of the variables a template uses."""
    return {match.group(1) for match in _VARIABLE.finditer(template)}


def clock_variables(now: float) -> dict[str, Value]:
    stamp = datetime.fromtimestamp(now, UTC)
    return {
        "year": f"{stamp.year:04d}",
        "mon": f"{stamp.month:02d}",
        "day": f"{stamp.day:02d}",
        "hour": f"{stamp.hour:02d}",
        "min": f"{stamp.minute:02d}",
        "sec": f"{stamp.second:02d}",
    }


def split_fname(fname: str) -> tuple[str, str]:
    """``(fprefix, ext)`` of an original file name; ext keeps its dot."""
    base = fname.rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem:
        return base, ""
    return stem, f".{suffix}"


def expand_save_key(template: str, variables: Mapping[str, Value]) -> str:
    """Fill a ``saveKey`` template; an unknown variable is a 400."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "uuid":
            return str(uuid.uuid4())
        if name not in variables:
            raise BadRequest(f"saveKey: unknown magic variable $({name})")
        value = variables[name]
        return "" if value is None else str(value)

    return _VARIABLE.sub(substitute, template)


def _string_positions(template: str) -> list[bool]:
    """For each character of a JSON-ish template, whether it lies inside a string."""
    inside = False
    escaped = False
    flags: list[bool] = []
    for char in template:
        flags.append(inside)
        if escaped:
            escaped = False
        elif char == "\\" and inside:
            escaped = True
        elif char == '"':
            inside = not inside
    return flags


def expand_return_body(template: str, variables: Mapping[str, Value]) -> str:
    """Fill a ``returnBody`` template, quoting each value for where it stands."""
    inside = _string_positions(template)
    out: list[str] = []
    last = 0
    for match in _VARIABLE.finditer(template):
        out.append(template[last : match.start()])
        name = match.group(1)
        value: Value = str(uuid.uuid4()) if name == "uuid" else variables.get(name)
        if inside[match.start()]:
            out.append("" if value is None else json.dumps(str(value), ensure_ascii=False)[1:-1])
        else:
            out.append(json.dumps(value, ensure_ascii=False))
        last = match.end()
    out.append(template[last:])
    return "".join(out)
