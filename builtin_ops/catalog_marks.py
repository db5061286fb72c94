"""Argument schemas of the marking and information ops (no Pillow here).

``watermark`` (image, text and multiple marks), ``roundPic``, ``exif`` and
``imageAve``, as Qiniu documents them. Merged into
:data:`dora.builtin_ops.catalog.BUILTIN_CATALOG`; the implementations are in
:mod:`dora.builtin_ops.image.watermark`, ``.roundpic``, ``.exif`` and
``.average``.

Watermark parameters, with Qiniu's defaults::

    image/<b64 url>       the mark image (a bucket object or an allowed URL)
    text/<b64 text>       the mark text
    font/<b64 name>       font family name ("黑体", "宋体", "Arial", ...), default 黑体
    fontsize/<twips>      1/20 point at 72 dpi (20 twips = 1 px), default 240
    fill/<b64 colour>     "#RRGGBB", "#RGB", "#RRGGBBAA" or a colour name, default black
    dissolve/<1-100>      opacity in percent, default 100
    gravity/<g>           NorthWest ... SouthEast, default SouthEast
    dx, dy/<px>           the margin from the gravity's edges, default 10
    ws/<0-1>              scale the mark image to this share of the base image (0: none)
    wst/<0-3>             ... of its short side (0), long side (1), width (2), height (3)

``watermark/1`` takes one image group, ``watermark/2`` one text group and
``watermark/3`` any sequence of groups, each starting at ``image/`` or
``text/`` (the op checks the grouping, as only it sees the parameters'
order).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dora.b64 import decode_text
from dora.builtin_ops.gravity import GRAVITIES
from dora.errors import DoraError, InvalidArgument
from dora.schema import B64TextParam, EnumParam, FloatParam, IntParam, OpSpec

MAX_MARK_TEXT_CHARS = 256
MAX_FONT_NAME_CHARS = 64
MAX_FONT_TWIPS = 20 * 512  # 512 px
MAX_MARK_GROUPS = 10
MAX_RADIUS_PX = 30000

_COLOUR_RE = re.compile(
    r"#(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{4}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})|[A-Za-z]{1,30}"
)


@dataclasses.dataclass(frozen=True, slots=True)
class ColourParam:
    """URL-safe base64 of a colour: ``#RGB``, ``#RRGGBB``, ``#RRGGBBAA`` or a CSS name.

    Names are checked for their shape here and against Pillow's colour table
    when the op runs (this module must not import Pillow).
    """

    def parse(self, op: str, name: str, raw: str) -> str:
        try:
            text = decode_text(raw).strip()
        except DoraError as exc:
            raise InvalidArgument(op, name, exc.message) from exc
        if not _COLOUR_RE.fullmatch(text):
            raise InvalidArgument(op, name, f"{text[:32]!r} is not a colour (#RRGGBB or a name)")
        return text


@dataclasses.dataclass(frozen=True, slots=True)
class Radius:
    """A corner radius: pixels, or a percentage of a side (``!25p``)."""

    value: int
    percent: bool


@dataclasses.dataclass(frozen=True, slots=True)
class RadiusParam:
    """``<pixels>`` or ``!<0-100>p``."""

    def parse(self, op: str, name: str, raw: str) -> Radius:
        match = re.fullmatch(r"!([0-9]{1,3})p", raw)
        if match is not None:
            percent = int(match.group(1))
            if percent > 100:
                raise InvalidArgument(op, name, f"{percent}% is more than 100%")
            return Radius(percent, True)
        return Radius(IntParam(0, MAX_RADIUS_PX).parse(op, name, raw), False)


GRAVITY = EnumParam(GRAVITIES)
OFFSET = IntParam(-9999, 9999)

_WATERMARK_PARAMS: Mapping[str, Any] = MappingProxyType(
    {
        "image": B64TextParam(max_chars=2048),
        "text": B64TextParam(max_chars=MAX_MARK_TEXT_CHARS),
        "font": B64TextParam(max_chars=MAX_FONT_NAME_CHARS),
        "fontsize": IntParam(1, MAX_FONT_TWIPS),
        "fill": ColourParam(),
        "dissolve": IntParam(1, 100),
        "gravity": GRAVITY,
        "dx": OFFSET,
        "dy": OFFSET,
        "ws": FloatParam(0.0, 1.0),
        "wst": IntParam(0, 3),
    }
)


def _check_watermark(args: Mapping[str, Any]) -> None:
    mode = args["mode"]
    if mode == 1 and "image" not in args:
        raise InvalidArgument("watermark", "image", "missing (watermark/1 marks with an image)")
    if mode == 2 and "text" not in args:
        raise InvalidArgument("watermark", "text", "missing (watermark/2 marks with text)")
    if mode == 3 and "image" not in args and "text" not in args:
        raise InvalidArgument("watermark", "image", "watermark/3 needs image or text groups")


WATERMARK = OpSpec(
    name="watermark",
    kind="image",
    positional=("mode", IntParam(1, 3)),
    params=_WATERMARK_PARAMS,
    ordered=True,  # watermark/3 repeats parameters, one group after another
    cost="cpu",
    check=_check_watermark,
    doc=(
        "watermark/1/image/<b64 url>/dissolve/gravity/dx/dy/ws/wst; "
        "watermark/2/text/<b64>/font/<b64>/fontsize/<twips>/fill/<b64 colour>/dissolve/"
        "gravity/dx/dy; watermark/3/<image or text groups, in order>. A mark larger than "
        "the image leaves it unmarked."
    ),
)


def _check_round_pic(args: Mapping[str, Any]) -> None:
    if "radius" in args and ("radiusx" in args or "radiusy" in args):
        raise InvalidArgument("roundPic", "radius", "give radius, or radiusx and radiusy, not both")
    if not {"radius", "radiusx", "radiusy"} & set(args):
        raise InvalidArgument("roundPic", "radius", "missing")


ROUND_PIC = OpSpec(
    name="roundPic",
    kind="image",
    params=MappingProxyType(
        {"radius": RadiusParam(), "radiusx": RadiusParam(), "radiusy": RadiusParam()}
    ),
    cost="cpu",
    check=_check_round_pic,
    doc=(
        "roundPic/radius/<px | !Np> or roundPic/radiusx/<r>/radiusy/<r>: rounded, "
        "antialiased transparent corners; PNG output."
    ),
)

EXIF = OpSpec(
    name="exif",
    kind="info",
    cost="io",
    doc='exif: {"<Tag>": {"type": <EXIF type>, "val": "<text>"}, ...}; 400 without EXIF.',
)

IMAGE_AVE = OpSpec(
    name="imageAve",
    kind="info",
    cost="cpu",
    doc='imageAve: {"RGB": "0xrrggbb"}, the average colour.',
)

MARK_SPECS: tuple[OpSpec, ...] = (WATERMARK, ROUND_PIC, EXIF, IMAGE_AVE)
