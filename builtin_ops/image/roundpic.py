"""roundPic: rounded, transparent, antialiased corners; the result is a PNG.

``roundPic/radius/<r>`` rounds all four corners with one radius;
``roundPic/radiusx/<rx>/radiusy/<ry>`` with elliptical corners (a missing one
equals the other). A radius is in pixels or a percentage (``!25p``): of the
short side for ``radius`` (so that the corners stay circular, Qiniu's
"horizontal and vertical the same"), of the width for ``radiusx`` and of the
height for ``radiusy``. Radii are capped at half their side, so
``radius/!50p`` on a square makes a circle and on a rectangle a pill.

Antialiasing: a corner's quarter ellipse is drawn at up to 4× and reduced
with a box filter, which gives each edge pixel its covered fraction. The
supersampled tile is bounded (:data:`MAX_SUPERSAMPLED_PIXELS`); corners too
large for that are drawn at 1× and softened with a sub-pixel blur.
"""

from __future__ import annotations

import dataclasses

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from dora.builtin_ops.catalog_marks import Radius
from dora.builtin_ops.image import decode
from dora.builtin_ops.image.geometry import Size
from dora.builtin_ops.image.picture import Picture
from dora.config import Limits
from dora.fop import Stage

SUPERSAMPLE = 4
MAX_SUPERSAMPLED_PIXELS = 16_000_000
_EDGE_BLUR = 0.6


def _pixels(radius: Radius, side: int) -> int:
    return radius.value * side // 100 if radius.percent else radius.value


def corner_radii(
    size: Size, radius: Radius | None, radiusx: Radius | None, radiusy: Radius | None
) -> tuple[int, int]:
    """The horizontal and vertical corner radii in pixels, capped at half a side."""
    width, height = size
    if radius is not None:
        rx = ry = _pixels(radius, min(width, height))
    else:
        chosen_x = radiusx if radiusx is not None else radiusy
        chosen_y = radiusy if radiusy is not None else radiusx
        assert chosen_x is not None and chosen_y is not None  # the spec requires one
        rx, ry = _pixels(chosen_x, width), _pixels(chosen_y, height)
    return min(rx, width // 2), min(ry, height // 2)


def _corner(rx: int, ry: int) -> Image.Image:
    """The top-left corner's coverage (255 inside the rounded shape), rx × ry."""
    scale = SUPERSAMPLE
    while scale > 1 and rx * ry * scale * scale > MAX_SUPERSAMPLED_PIXELS:
        scale //= 2
    tile = Image.new("L", (rx * scale, ry * scale), 0)
    # The whole ellipse's box; only its top-left quarter falls on the tile.
    ImageDraw.Draw(tile).ellipse((0, 0, 2 * rx * scale - 1, 2 * ry * scale - 1), fill=255)
    if scale > 1:
        return tile.reduce(scale)
    return tile.filter(ImageFilter.GaussianBlur(_EDGE_BLUR))


def rounded_mask(size: Size, rx: int, ry: int) -> Image.Image:
    """An L mask of ``size``: opaque, but for the four rounded corners."""
    width, height = size
    mask = Image.new("L", size, 255)
    if rx < 1 or ry < 1:
        return mask
    corner = _corner(rx, ry)
    mask.paste(corner, (0, 0))
    mask.paste(corner.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (width - rx, 0))
    mask.paste(corner.transpose(Image.Transpose.FLIP_TOP_BOTTOM), (0, height - ry))
    mask.paste(corner.transpose(Image.Transpose.ROTATE_180), (width - rx, height - ry))
    return mask


def round_corners(image: Image.Image, rx: int, ry: int) -> Image.Image:
    """``image`` with transparent rounded corners (LA for grey, else RGBA)."""
    grey = image.mode in ("L", "LA", "1")
    result = image.convert("LA" if grey else "RGBA")
    mask = rounded_mask(result.size, rx, ry)
    alpha = result.getchannel("A")
    extrema = alpha.getextrema()
    opaque = extrema == (255, 255)
    result.putalpha(mask if opaque else ImageChops.multiply(alpha, mask))
    return result


def round_pic(picture: Picture, stage: Stage, limits: Limits) -> None:
    """Apply one ``roundPic`` stage: round the corners and ask for PNG output."""
    rx, ry = corner_radii(
        picture.size, stage.get("radius"), stage.get("radiusx"), stage.get("radiusy")
    )
    decode.working_image(picture)
    picture.apply(lambda image: round_corners(image, rx, ry))
    picture.options = dataclasses.replace(picture.options, format="png")
