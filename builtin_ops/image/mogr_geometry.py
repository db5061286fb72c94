"""Pure geometry of imageMogr2: the thumbnail and crop grammars, gravity, rotation. No Pillow.

Qiniu's imageMogr2 runs on ImageMagick's geometry semantics; its URL forms
spell ImageMagick's characters that are awkward in URLs with letters after a
leading ``!`` (``p`` for ``%``, ``r`` for ``^``, ``a`` for ``+``). Both
spellings are accepted here. Sizes are exact fractions and round as
ImageMagick does (``floor(x + 0.5)``), never to zero.

Thumbnail (ImageMagick ``-thumbnail``; enlarges unless ``>``)::

    !50p   50%        both sides by 50%
    !50px  50%x       width by 50%, height unchanged
    !x50p  x50%       height by 50%, width unchanged
    300x   x200       that side, the other proportional
    300x200           fit inside 300×200
    !300x200r  300x200^   cover 300×200 (both sides at least)
    300x200!          exactly 300×200, aspect ignored
    300x200>  300x200<    fit inside, but only shrink / only enlarge
    90000@            at most 90000 pixels, proportional, never enlarged

Crop (ImageMagick ``-gravity G -crop WxH±dx±dy``): ``300x``, ``x200`` and
``300x200`` keep the other side whole; ``!300x200a10a20`` moves the box by
(10, 20) from its gravity anchor, inwards for East and South anchors as
ImageMagick does; ``-`` instead of ``a`` is a negative offset, which at the
anchor's own edges takes pixels off the box instead of moving it (the box is
clipped to the image). A box that misses the image entirely is an error.
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from typing import Literal

from dora.builtin_ops.image.geometry import Box, Size, round_side

MAX_SIDE = 30000  # a bound in a geometry; larger than any image may be, on purpose
MAX_PERCENT = 999
MAX_AREA = 150_000_000

FracBox = tuple[Fraction, Fraction, Fraction, Fraction]


class GeometryError(ValueError):
    """A geometry that does not parse, or does not apply to the image."""


ThumbnailKind = Literal["scale", "fit", "cover", "exact", "area"]


@dataclasses.dataclass(frozen=True, slots=True)
class Thumbnail:
    """A parsed thumbnail geometry. For ``scale`` width/height are percentages."""

    kind: ThumbnailKind
    width: int | None = None
    height: int | None = None
    only: Literal["", "shrink", "enlarge"] = ""
    area: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Crop:
    """A parsed crop geometry: a box (None: that side whole) and a signed offset."""

    width: int | None
    height: int | None
    dx: int = 0
    dy: int = 0


_N = r"([0-9]{1,9})"
_THUMBNAIL_FORMS: tuple[tuple[str, ThumbnailKind], ...] = (
    (rf"!{_N}p|{_N}%", "scale"),
    (rf"!{_N}px|{_N}%x", "scale"),
    (rf"!x{_N}p|x{_N}%", "scale"),
    (rf"!{_N}x{_N}r|{_N}x{_N}\^", "cover"),
    (rf"{_N}x{_N}!", "exact"),
    (rf"{_N}@", "area"),
    (rf"{_N}?x{_N}?([<>]?)", "fit"),
)
_CROP = re.compile(rf"(!?){_N}?x{_N}?(?:([-+a]){_N}([-+a]){_N})?")


def _bounded(raw: str, lo: int, hi: int, what: str) -> int:
    value = int(raw)
    if not lo <= value <= hi:
        raise GeometryError(f"{what} {value} is out of range [{lo}, {hi}]")
    return value


def _groups(match: re.Match[str]) -> list[str]:
    """The numbers of whichever alternative matched, in order."""
    return [group for group in match.groups() if group is not None and group.isdigit()]


def parse_thumbnail(text: str) -> Thumbnail:
    """Parse a thumbnail geometry (see the module docstring); GeometryError if bad."""
    for index, (pattern, kind) in enumerate(_THUMBNAIL_FORMS):
        match = re.fullmatch(pattern, text)
        if match is None:
            continue
        numbers = _groups(match)
        if kind == "scale":
            percent = _bounded(numbers[0], 1, MAX_PERCENT, "scale")
            width = percent if index in (0, 1) else None
            height = percent if index in (0, 2) else None
            return Thumbnail("scale", width, height)
        if kind == "area":
            return Thumbnail("area", area=_bounded(numbers[0], 1, MAX_AREA, "area"))
        if kind == "fit":
            width_raw, height_raw, only = match.group(1), match.group(2), match.group(3)
            if width_raw is None and height_raw is None:
                break
            return Thumbnail(
                "fit",
                None if width_raw is None else _bounded(width_raw, 1, MAX_SIDE, "width"),
                None if height_raw is None else _bounded(height_raw, 1, MAX_SIDE, "height"),
                {"": "", ">": "shrink", "<": "enlarge"}[only],  # type: ignore[arg-type]
            )
        width = _bounded(numbers[0], 1, MAX_SIDE, "width")
        return Thumbnail(kind, width, _bounded(numbers[1], 1, MAX_SIDE, "height"))
    raise GeometryError(f"{text!r} is not a thumbnail geometry")


def parse_crop(text: str) -> Crop:
    """Parse a crop geometry (see the module docstring); GeometryError if bad."""
    match = _CROP.fullmatch(text)
    if match is None:
        raise GeometryError(f"{text!r} is not a crop geometry")
    bang, width_raw, height_raw, x_sign, dx_raw, y_sign, dy_raw = match.groups()
    if width_raw is None and height_raw is None:
        raise GeometryError(f"{text!r} gives neither a width nor a height")
    if "a" in (x_sign, y_sign) and not bang:
        raise GeometryError(f"{text!r}: offsets written with 'a' need a leading '!'")
    width = None if width_raw is None else _bounded(width_raw, 1, MAX_SIDE, "width")
    height = None if height_raw is None else _bounded(height_raw, 1, MAX_SIDE, "height")
    dx = dy = 0
    if dx_raw is not None and dy_raw is not None:
        dx = _bounded(dx_raw, 0, MAX_SIDE, "offset") * (-1 if x_sign == "-" else 1)
        dy = _bounded(dy_raw, 0, MAX_SIDE, "offset") * (-1 if y_sign == "-" else 1)
    return Crop(width, height, dx, dy)


def thumbnail_size(thumbnail: Thumbnail, size: Size) -> Size:
    """The size ``thumbnail`` makes of an image of ``size``."""
    width, height = size
    kind = thumbnail.kind
    if kind == "scale":
        return (
            round_side(Fraction(width * (thumbnail.width or 100), 100)),
            round_side(Fraction(height * (thumbnail.height or 100), 100)),
        )
    if kind == "exact":
        assert thumbnail.width is not None and thumbnail.height is not None
        return thumbnail.width, thumbnail.height
    if kind == "area":
        return _area_size(thumbnail.area, width, height)
    scales = [
        Fraction(bound, side)
        for bound, side in ((thumbnail.width, width), (thumbnail.height, height))
        if bound is not None
    ]
    scale = max(scales) if kind == "cover" else min(scales)
    if thumbnail.only == "shrink":
        scale = min(scale, Fraction(1))
    elif thumbnail.only == "enlarge":
        scale = max(scale, Fraction(1))
    return round_side(width * scale), round_side(height * scale)


def _area_size(area: int, width: int, height: int) -> Size:
    """At most ``area`` pixels, proportional, truncated as ImageMagick's ``@`` does."""
    if width * height <= area:
        return width, height
    # floor(w·sqrt(A/wh)) = floor(sqrt(A·w/h)) = isqrt(floor(A·w/h)), exactly
    new_width = max(1, min(math.isqrt(area * width // height), area))
    new_height = max(1, min(math.isqrt(area * height // width), area // new_width))
    return new_width, new_height


def gravity_origin(gravity: str, size: Size, box: Size, dx: int, dy: int) -> tuple[int, int]:
    """Where a ``box`` with offset (dx, dy) starts under ``gravity`` (ImageMagick's rule)."""
    width, height = size
    box_w, box_h = box
    x, y = dx, dy
    if gravity.endswith("East"):
        x = width - box_w - dx
    elif gravity in ("North", "Center", "South"):
        x = dx + width // 2 - box_w // 2
    if gravity.startswith("South"):
        y = height - box_h - dy
    elif gravity in ("West", "Center", "East"):
        y = dy + height // 2 - box_h // 2
    return x, y


def crop_box(crop: Crop, gravity: str, size: Size) -> Box:
    """The box ``crop`` keeps of an image of ``size``: clipped to it, never empty."""
    width, height = size
    box_w = crop.width if crop.width is not None else width
    box_h = crop.height if crop.height is not None else height
    x, y = gravity_origin(gravity, size, (box_w, box_h), crop.dx, crop.dy)
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + box_w), min(height, y + box_h)
    if right <= left or bottom <= top:
        raise GeometryError(f"the crop box lies outside the {width}x{height} image")
    return left, top, right, bottom


@dataclasses.dataclass(frozen=True, slots=True)
class Region:
    """A run of thumbnails and crops, fused: the virtual image of :attr:`size` is the
    :attr:`box` (exact, in the coordinates of an image of :attr:`frame`) resampled."""

    frame: Size
    box: FracBox
    size: Size

    @classmethod
    def whole(cls, frame: Size) -> Region:
        """The identity: the whole frame at its own size."""
        zero = Fraction(0)
        return cls(frame, (zero, zero, Fraction(frame[0]), Fraction(frame[1])), frame)

    @property
    def is_identity(self) -> bool:
        """True when the run leaves the frame as it is."""
        return self == Region.whole(self.frame)

    def thumbnail(self, thumbnail: Thumbnail) -> Region:
        """The region after a thumbnail: the same box at another size."""
        return dataclasses.replace(self, size=thumbnail_size(thumbnail, self.size))

    def crop(self, crop: Crop, gravity: str) -> Region:
        """The region after a crop of the virtual image."""
        left, top, right, bottom = crop_box(crop, gravity, self.size)
        x0, y0, x1, y1 = self.box
        sx, sy = (x1 - x0) / self.size[0], (y1 - y0) / self.size[1]
        box = (x0 + left * sx, y0 + top * sy, x0 + right * sx, y0 + bottom * sy)
        return Region(self.frame, box, (right - left, bottom - top))


def raw_region(box: FracBox, oriented: Size, orientation: int) -> FracBox:
    """The box of the stored image that, once oriented, is ``box`` of the ``oriented``
    image (the exact-fraction twin of :func:`~.geometry.raw_box`)."""
    width, height = oriented

    def point(x: Fraction, y: Fraction) -> tuple[Fraction, Fraction]:
        mapped = {
            2: (width - x, y),
            3: (width - x, height - y),
            4: (x, height - y),
            5: (y, x),
            6: (y, width - x),
            7: (height - y, width - x),
            8: (height - y, x),
        }
        return mapped.get(orientation, (x, y))

    x0, y0 = point(box[0], box[1])
    x1, y1 = point(box[2], box[3])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


# --- rotation ----------------------------------------------------------------------------

Affine = tuple[float, float, float, float, float, float]
_EPSILON = 1e-9  # so that cos(90°) ≈ 6e-17 does not add a pixel


def rotated_size(size: Size, degrees: int) -> Size:
    """The canvas that holds an image of ``size`` turned by ``degrees`` (clockwise)."""
    turn = degrees % 360
    if turn in (0, 180):
        return size
    if turn in (90, 270):
        return size[1], size[0]
    radians = math.radians(turn)
    cos, sin = abs(math.cos(radians)), abs(math.sin(radians))
    width, height = size
    return (
        max(1, math.ceil(width * cos + height * sin - _EPSILON)),
        max(1, math.ceil(width * sin + height * cos - _EPSILON)),
    )


def rotation(size: Size, degrees: int) -> tuple[Size, Affine]:
    """The expanded canvas and the inverse affine map (output → input, pixel centres at
    +0.5, as Pillow's ``Image.transform`` takes it) of a clockwise turn by ``degrees``."""
    out = rotated_size(size, degrees)
    radians = math.radians(degrees % 360)
    cos, sin = math.cos(radians), math.sin(radians)
    cx_in, cy_in = size[0] / 2, size[1] / 2
    cx_out, cy_out = out[0] / 2, out[1] / 2
    # input = c_in + R(-θ)·(output - c_out); with y pointing down, R(θ) turns clockwise
    return out, (
        cos,
        sin,
        cx_in - cos * cx_out - sin * cy_out,
        -sin,
        cos,
        cy_in + sin * cx_out - cos * cy_out,
    )
