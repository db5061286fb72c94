"""watermark: image and text marks, placed by gravity and margins, blended by dissolve.

Qiniu's three forms: ``watermark/1`` one image mark, ``watermark/2`` one
text mark, ``watermark/3`` several of either, drawn in URL order (each group
starts at ``image/`` or ``text/``). Placement follows ImageMagick's
``-gravity`` with ``-geometry +dx+dy`` (the engine of Qiniu's image ops):
``dx`` is the distance from the left edge for the West gravities, from the
right edge for the East ones, and a shift to the right from the centre for
North, Center and South; ``dy`` likewise from the top, the bottom or the
middle. Parts of a mark pushed past the edges are clipped.

``ws`` scales a mark image, keeping its aspect, so that its short side
becomes ``ws`` × the base image's short side (``wst`` 0; 1 long sides,
2 widths, 3 heights), rounding down as Qiniu's example does (91×61 on
250×250 with ws 1 is 372×250). A mark wider or taller than the image (after
scaling) leaves the image unmarked, as Qiniu documents.

Mark images come through the :class:`~dora.resources.ResourceResolver` the
chain was given, bounded (:data:`MAX_MARK_BYTES`, :data:`MAX_MARK_PIXELS`)
and decoded like any source. Every mark is fetched and prepared before the
base image is decoded, so a bad mark fails fast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from PIL import Image

from dora.builtin_ops.catalog_marks import MAX_MARK_GROUPS
from dora.builtin_ops.image import decode, text
from dora.builtin_ops.image.geometry import Size, oriented_size
from dora.builtin_ops.image.picture import Picture
from dora.config import Limits
from dora.errors import BadRequest, PayloadTooLarge
from dora.fop import Stage
from dora.resources import ResourceResolver

MAX_MARK_BYTES = 10 * 1024 * 1024
MAX_MARK_PIXELS = 25_000_000
DEFAULT_GRAVITY = "SouthEast"
DEFAULT_OFFSET = 10
DEFAULT_DISSOLVE = 100

_SHARED_KEYS = frozenset({"dissolve", "gravity", "dx", "dy"})
GROUP_KEYS: Mapping[str, frozenset[str]] = {
    "image": _SHARED_KEYS | {"image", "ws", "wst"},
    "text": _SHARED_KEYS | {"text", "font", "fontsize", "fill"},
}
_MODE_KIND = {1: "image", 2: "text"}


@dataclasses.dataclass(frozen=True, slots=True)
class MarkGroup:
    """One mark's parameters: ``kind`` is "image" or "text"."""

    kind: str
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedMark:
    """A mark ready to draw: RGBA pixels (dissolve applied) and their top-left corner."""

    image: Image.Image
    position: tuple[int, int]


def _add(group: dict[str, Any], kind: str, key: str, value: Any) -> None:
    if key not in GROUP_KEYS[kind]:
        raise BadRequest(f"watermark: {key!r} is not a parameter of {kind} marks")
    if key in group:
        raise BadRequest(f"watermark: {key!r} given twice for one mark")
    group[key] = value


def mark_groups(stage: Stage) -> list[MarkGroup]:
    """Split a watermark stage into its marks (validating the grouping)."""
    mode = stage.args["mode"]
    items = [(key, value) for key, value in stage.items if key != "mode"]
    if mode in _MODE_KIND:
        kind = _MODE_KIND[mode]
        single: dict[str, Any] = {}
        for key, value in items:
            _add(single, kind, key, value)
        return [MarkGroup(kind, single)]
    groups: list[MarkGroup] = []
    for key, value in items:
        if key in GROUP_KEYS:  # "image" or "text" opens a group
            groups.append(MarkGroup(key, {}))
        elif not groups:
            raise BadRequest(f"watermark/3: {key!r} before the first image/ or text/ group")
        _add(groups[-1].params, groups[-1].kind, key, value)
    if len(groups) > MAX_MARK_GROUPS:
        raise BadRequest(f"watermark/3: more than {MAX_MARK_GROUPS} marks")
    return groups


def scaled_mark_size(mark: Size, base: Size, ws: float, wst: int) -> Size:
    """The mark's size after ``ws``/``wst`` scaling (``ws`` 0: unscaled)."""
    if ws <= 0:
        return mark
    width, height = mark
    base_width, base_height = base
    reference = {
        0: (min(width, height), min(base_width, base_height)),
        1: (max(width, height), max(base_width, base_height)),
        2: (width, base_width),
        3: (height, base_height),
    }
    mark_side, base_side = reference[wst]
    scale = Fraction(repr(ws)) * base_side / mark_side
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def placement(base: Size, mark: Size, gravity: str, dx: int, dy: int) -> tuple[int, int]:
    """The mark's top-left corner for ImageMagick-style gravity and offsets."""
    (base_width, base_height), (width, height) = base, mark
    if gravity.endswith("West"):
        x = dx
    elif gravity.endswith("East"):
        x = base_width - width - dx
    else:
        x = (base_width - width) // 2 + dx
    if gravity.startswith("North"):
        y = dy
    elif gravity.startswith("South"):
        y = base_height - height - dy
    else:
        y = (base_height - height) // 2 + dy
    return x, y


def _larger(mark: Size, base: Size) -> bool:
    return mark[0] > base[0] or mark[1] > base[1]


def _dissolved(mark: Image.Image, dissolve: int) -> Image.Image:
    if dissolve >= 100:
        return mark
    alpha = mark.getchannel("A").point([value * dissolve // 100 for value in range(256)])
    mark.putalpha(alpha)
    return mark


def _image_mark(
    params: Mapping[str, Any], base: Size, limits: Limits, resources: ResourceResolver | None
) -> Image.Image | None:
    if resources is None:
        raise BadRequest("watermark: image marks cannot be fetched here (no resource resolver)")
    url: str = params["image"]
    data = resources.fetch(url, min(MAX_MARK_BYTES, limits.max_source_bytes))
    mark_limits = dataclasses.replace(
        limits,
        max_source_bytes=MAX_MARK_BYTES,
        max_source_pixels=min(limits.max_source_pixels, MAX_MARK_PIXELS),
    )
    try:
        mark = decode.open_picture(data, mark_limits)
        target = scaled_mark_size(mark.size, base, params.get("ws", 0.0), params.get("wst", 0))
        if _larger(target, base):
            return None
        decode.draft(mark, oriented_size(target, mark.orientation))
        image = decode.working_image(mark).convert("RGBA")
    except (BadRequest, PayloadTooLarge) as exc:
        raise type(exc)(f"watermark image {url[:200]!r}: {exc.message}") from exc
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS)
    return image


def _text_mark(params: Mapping[str, Any], base: Size) -> Image.Image | None:
    line = text.clean_text(params["text"])
    if not line.strip():
        raise BadRequest("watermark: the text is empty")
    pixels = text.twips_to_pixels(params.get("fontsize", text.DEFAULT_TWIPS))
    font = text.load_font(params.get("font"), line, pixels)
    if _larger(text.measure(line, font), base):
        return None  # measured, never drawn
    fill = text.parse_colour(params.get("fill", text.DEFAULT_FILL))
    return text.render(line, font, fill)


def prepare_marks(
    groups: Sequence[MarkGroup], base: Size, limits: Limits, resources: ResourceResolver | None
) -> list[PreparedMark]:
    """Fetch or draw each mark and place it on a base image of size ``base``;
    marks larger than the base are left out."""
    prepared: list[PreparedMark] = []
    for group in groups:
        params = group.params
        if group.kind == "image":
            mark = _image_mark(params, base, limits, resources)
        else:
            mark = _text_mark(params, base)
        if mark is None:
            continue
        mark = _dissolved(mark, params.get("dissolve", DEFAULT_DISSOLVE))
        position = placement(
            base,
            mark.size,
            params.get("gravity", DEFAULT_GRAVITY),
            params.get("dx", DEFAULT_OFFSET),
            params.get("dy", DEFAULT_OFFSET),
        )
        prepared.append(PreparedMark(mark, position))
    return prepared


def _composite_rgba(base: Image.Image, mark: PreparedMark) -> None:
    """Alpha-composite ``mark`` onto an RGBA ``base`` in place, clipped to it."""
    x, y = mark.position
    left, top = max(0, x), max(0, y)
    right = min(base.width, x + mark.image.width)
    bottom = min(base.height, y + mark.image.height)
    if left >= right or top >= bottom:
        return
    region = base.crop((left, top, right, bottom))
    piece = mark.image.crop((left - x, top - y, right - x, bottom - y))
    base.paste(Image.alpha_composite(region, piece), (left, top))


def draw_marks(image: Image.Image, marks: Sequence[PreparedMark]) -> Image.Image:
    """``image`` with the marks drawn in order (a new image; RGB, or RGBA with alpha)."""
    if image.has_transparency_data:
        base = image.convert("RGBA") if image.mode != "RGBA" else image.copy()
        for mark in marks:
            _composite_rgba(base, mark)
        return base
    base = image.convert("RGB") if image.mode != "RGB" else image.copy()
    for mark in marks:
        base.paste(mark.image, mark.position, mark.image)  # the alpha blends, paste clips
    return base


def watermark(
    picture: Picture, stage: Stage, limits: Limits, resources: ResourceResolver | None = None
) -> None:
    """Apply one ``watermark`` stage to the picture."""
    marks = prepare_marks(mark_groups(stage), picture.size, limits, resources)
    if not marks:
        return  # every mark was larger than the image: unmarked, as Qiniu does
    decode.working_image(picture)
    picture.apply(lambda image: draw_marks(image, marks))
