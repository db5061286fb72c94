"""The argument schema of imageMogr2 (no Pillow: the gateway validates URLs with it).

``imageMogr2`` is an *ordered* op: its parameters may repeat and apply in
URL order (``thumbnail/300x/crop/200x200/rotate/90``), so a stage keeps every
item. The geometry parameters parse into the frozen values of
:mod:`~dora.builtin_ops.image.mogr_geometry`; ``blur`` into :class:`Blur`,
``size-limit`` into :class:`SizeLimit`; ``background`` is checked for its
syntax here and resolved to a colour by the worker.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from types import MappingProxyType
from typing import Any

from dora.builtin_ops.gravity import GRAVITIES
from dora.builtin_ops.image.mogr_geometry import (
    Crop,
    GeometryError,
    Thumbnail,
    parse_crop,
    parse_thumbnail,
)
from dora.errors import DoraError, InvalidArgument
from dora.schema import B64TextParam, EnumParam, IntParam, OpSpec, Param

OP = "imageMogr2"
MAX_BLUR_RADIUS = 50
MAX_BLUR_SIGMA = 50
MAX_SHARPEN = 50
MAX_SIZE_LIMIT = 1024 * 1024 * 1024
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


@dataclasses.dataclass(frozen=True, slots=True)
class SharedParam:
    """One of the shared parameter types of :mod:`dora.builtin_ops.catalog` (``format``,
    ``quality``, ...), looked up when used: that module imports this one, so importing
    it here would be a cycle, and copying the types would let the ops drift apart."""

    attribute: str

    def parse(self, op: str, name: str, raw: str) -> Any:
        catalog = importlib.import_module("dora.builtin_ops.catalog")
        param: Param = getattr(catalog, self.attribute)
        return param.parse(op, name, raw)


@dataclasses.dataclass(frozen=True, slots=True)
class ThumbnailParam:
    """``thumbnail/<geometry>``."""

    def parse(self, op: str, name: str, raw: str) -> Thumbnail:
        try:
            return parse_thumbnail(raw)
        except GeometryError as exc:
            raise InvalidArgument(op, name, str(exc)) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class CropParam:
    """``crop/<geometry>``."""

    def parse(self, op: str, name: str, raw: str) -> Crop:
        try:
            return parse_crop(raw)
        except GeometryError as exc:
            raise InvalidArgument(op, name, str(exc)) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class Blur:
    """A Gaussian blur: ``radius`` bounds the kernel, ``sigma`` is its deviation
    (0: derived from the radius)."""

    radius: int
    sigma: float


@dataclasses.dataclass(frozen=True, slots=True)
class BlurParam:
    """``blur/<radius>x<sigma>``, radius 1-50, sigma 0-50 (decimals allowed)."""

    def parse(self, op: str, name: str, raw: str) -> Blur:
        match = re.fullmatch(r"([0-9]{1,3})x([0-9]{1,3}(?:\.[0-9]{1,6})?)", raw)
        if match is None:
            raise InvalidArgument(op, name, f"{raw!r} is not <radius>x<sigma>")
        radius, sigma = int(match.group(1)), float(match.group(2))
        if not 1 <= radius <= MAX_BLUR_RADIUS:
            raise InvalidArgument(op, name, f"radius {radius} is out of range [1, 50]")
        if sigma > MAX_BLUR_SIGMA:
            raise InvalidArgument(op, name, f"sigma {match.group(2)} is out of range [0, 50]")
        return Blur(radius, sigma)


@dataclasses.dataclass(frozen=True, slots=True)
class SizeLimit:
    """``size-limit``: at most ``max_bytes`` (None: the source's own size); with
    ``keep_smaller`` the original answers when it is not larger than the result."""

    max_bytes: int | None
    keep_smaller: bool


@dataclasses.dataclass(frozen=True, slots=True)
class SizeLimitParam:
    """``size-limit/<n>[k|m][!]`` or Qiniu's magic ``size-limit/$(fsize)[!]``."""

    def parse(self, op: str, name: str, raw: str) -> SizeLimit:
        keep_smaller = raw.endswith("!")
        body = raw[:-1] if keep_smaller else raw
        if body == "$(fsize)":
            return SizeLimit(None, keep_smaller)
        match = re.fullmatch(r"([0-9]{1,10})([kKmM]?)", body)
        if match is None:
            raise InvalidArgument(op, name, f"{raw!r} is not <size>[k|m][!]")
        size = int(match.group(1)) * _UNITS[match.group(2).lower()]
        if not 1 <= size <= MAX_SIZE_LIMIT:
            raise InvalidArgument(op, name, f"{raw} is out of range [1, 1024m]")
        return SizeLimit(size, keep_smaller)


_COLOUR = re.compile(
    r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})|[0-9a-fA-F]{6}|[0-9a-fA-F]{8}"
    r"|[a-zA-Z]{3,24}"
)


@dataclasses.dataclass(frozen=True, slots=True)
class ColourParam:
    """URL-safe base64 of a colour: ``#RGB``, ``#RRGGBB``, ``#RRGGBBAA`` (the ``#`` may
    be left out of the long forms) or a CSS name. Names are resolved by the worker."""

    def parse(self, op: str, name: str, raw: str) -> str:
        try:
            text = B64TextParam(64).parse(op, name, raw).strip()
        except DoraError as exc:
            raise InvalidArgument(op, name, exc.message) from exc
        if not _COLOUR.fullmatch(text) or (len(text) in (7, 9) and not text.startswith("#")):
            raise InvalidArgument(op, name, f"{text!r} is not a colour")
        return text


IMAGE_MOGR2 = OpSpec(
    name=OP,
    kind="image",
    params=MappingProxyType(
        {
            "thumbnail": ThumbnailParam(),
            "gravity": EnumParam(GRAVITIES),
            "crop": CropParam(),
            "rotate": IntParam(1, 360),
            "blur": BlurParam(),
            "sharpen": IntParam(1, MAX_SHARPEN),
            "format": SharedParam("IMAGE_FORMAT"),
            "quality": SharedParam("QUALITY"),
            "interlace": SharedParam("INTERLACE"),
            "background": ColourParam(),
            "size-limit": SizeLimitParam(),
            "ignore-error": SharedParam("IGNORE_ERROR"),
        }
    ),
    flags=frozenset({"auto-orient", "strip"}),
    ordered=True,
    cost="cpu",
    doc=(
        "imageMogr2/auto-orient/thumbnail/<geometry>/gravity/<g>/crop/<geometry>/"
        "rotate/<1-360>/blur/<r>x<s>/sharpen/<n>/format/<fmt>/quality/<q>[!]/"
        "interlace/<0|1>/background/<b64 colour>/strip/size-limit/<n>[k|m][!]: "
        "advanced processing, parameters applied in URL order."
    ),
)
