"""Argument schemas of ops: every op declares what it accepts, and the fop
parser validates a request against that declaration before any work is done.

A parameter type turns the raw URL text of one value into a typed value or
raises :class:`~dora.errors.InvalidArgument` naming the op and the argument.
Parsed values are plain Python values (int, float, str, bool, small frozen
dataclasses) so a stage can be re-parsed from its text on the worker side.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from dora.b64 import decode_entry, decode_text, urlsafe_b64decode
from dora.errors import DoraError, InvalidArgument


class Param(Protocol):
    """One parameter type."""

    def parse(self, op: str, name: str, raw: str) -> Any: ...


@dataclasses.dataclass(frozen=True, slots=True)
class IntParam:
    lo: int
    hi: int

    def parse(self, op: str, name: str, raw: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,12}", raw):
            raise InvalidArgument(op, name, f"expected an integer, got {raw!r}")
        value = int(raw)
        if not self.lo <= value <= self.hi:
            raise InvalidArgument(op, name, f"{value} is out of range [{self.lo}, {self.hi}]")
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class FloatParam:
    lo: float
    hi: float

    def parse(self, op: str, name: str, raw: str) -> float:
        if not re.fullmatch(r"-?[0-9]{1,12}(\.[0-9]{1,9})?", raw):
            raise InvalidArgument(op, name, f"expected a number, got {raw!r}")
        value = float(raw)
        if not self.lo <= value <= self.hi:
            raise InvalidArgument(op, name, f"{raw} is out of range [{self.lo:g}, {self.hi:g}]")
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class EnumParam:
    choices: tuple[str, ...]
    case_insensitive: bool = True

    def parse(self, op: str, name: str, raw: str) -> str:
        probe = raw.lower() if self.case_insensitive else raw
        for choice in self.choices:
            if probe == (choice.lower() if self.case_insensitive else choice):
                return choice
        raise InvalidArgument(op, name, f"{raw!r} is not one of {', '.join(self.choices)}")


@dataclasses.dataclass(frozen=True, slots=True)
class BoolParam:
    """``0`` or ``1``."""

    def parse(self, op: str, name: str, raw: str) -> bool:
        if raw not in ("0", "1"):
            raise InvalidArgument(op, name, f"expected 0 or 1, got {raw!r}")
        return raw == "1"


@dataclasses.dataclass(frozen=True, slots=True)
class Quality:
    value: int
    forced: bool  # ``q/80!``: use exactly this quality


@dataclasses.dataclass(frozen=True, slots=True)
class QualityParam:
    """``<1-100>`` with an optional ``!`` that forces the value."""

    def parse(self, op: str, name: str, raw: str) -> Quality:
        forced = raw.endswith("!")
        digits = raw[:-1] if forced else raw
        value = IntParam(1, 100).parse(op, name, digits)
        return Quality(value, forced)


@dataclasses.dataclass(frozen=True, slots=True)
class PatternParam:
    """Text matching a regular expression (geometry, colour names, ...)."""

    pattern: str
    description: str

    def parse(self, op: str, name: str, raw: str) -> str:
        if not re.fullmatch(self.pattern, raw):
            raise InvalidArgument(op, name, f"{raw!r} is not {self.description}")
        return raw


@dataclasses.dataclass(frozen=True, slots=True)
class B64TextParam:
    """URL-safe base64 of UTF-8 text (watermark text, URLs, fonts, colours)."""

    max_chars: int = 2048

    def parse(self, op: str, name: str, raw: str) -> str:
        try:
            text = decode_text(raw)
        except DoraError as exc:
            raise InvalidArgument(op, name, exc.message) from exc
        if len(text) > self.max_chars:
            raise InvalidArgument(op, name, f"longer than {self.max_chars} characters")
        return text


@dataclasses.dataclass(frozen=True, slots=True)
class B64BytesParam:
    max_bytes: int = 4096

    def parse(self, op: str, name: str, raw: str) -> bytes:
        try:
            data = urlsafe_b64decode(raw)
        except DoraError as exc:
            raise InvalidArgument(op, name, exc.message) from exc
        if len(data) > self.max_bytes:
            raise InvalidArgument(op, name, f"longer than {self.max_bytes} bytes")
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class EntryParam:
    """An EncodedEntryURI: ``urlsafe_b64("bucket:key")``."""

    def parse(self, op: str, name: str, raw: str) -> tuple[str, str | None]:
        try:
            return decode_entry(raw)
        except DoraError as exc:
            raise InvalidArgument(op, name, exc.message) from exc


Kind = Literal["image", "info", "av", "external"]


@dataclasses.dataclass(frozen=True, slots=True)
class OpSpec:
    """What an op accepts and what it costs.

    ``positional`` names the value that directly follows the op name
    (``imageView2/<mode>``, ``avthumb/<format>``). ``flags`` are parameters
    without a value (``imageMogr2/auto-orient``). With ``ordered`` the
    parameters may repeat and keep their URL order (``imageMogr2``,
    ``watermark/3``). ``raw`` ops (third-party handlers) receive their
    argument text unparsed.
    """

    name: str
    kind: Kind = "image"
    positional: tuple[str, Param] | None = None
    positional_required: bool = True
    params: Mapping[str, Param] = dataclasses.field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    ordered: bool = False
    raw: bool = False
    cost: Literal["cpu", "io"] = "cpu"
    sync: bool = True  # allowed in processing URLs, not only in jobs
    check: Callable[[Mapping[str, Any]], None] | None = None
    doc: str = ""
