"""Pure geometry of the image ops: sizes and boxes in whole pixels, no Pillow.

Scales are exact fractions so a result never depends on float rounding, and
sides round to nearest with halves up, as ImageMagick's ``floor(x + 0.5)``
(the engine Qiniu's image ops were built on), never to zero.

imageView2 (Qiniu's documented semantics; a bound given as ``None`` is absent):

=====  ==============================================================  ==========
mode   the scaled image                                                then
=====  ==============================================================  ==========
0      long edge ≤ w, short edge ≤ h                                    —
1      width ≥ w, height ≥ h                                            centre crop
2      width ≤ w, height ≤ h                                            —
3      width ≥ w, height ≥ h                                            —
4      long edge ≥ w, short edge ≥ h                                    —
5      long edge ≥ w, short edge ≥ h                                    centre crop
=====  ==============================================================  ==========

A missing bound is unlimited in the "at most" modes (0, 2) and equals the
other bound in the "at least" modes (1, 3, 4, 5), so one value in mode 1 asks
for a square. The result never enlarges the source: the scale is capped at 1.
The crop box of mode 1 is ``w × h``; of mode 5 it is ``w`` along the long edge
and ``h`` along the short one. When the (unenlarged) image is smaller than the
box on a side, that side is kept whole: the crop takes what fits, centred, and
never pads (ImageMagick's ``-resize WxH^>`` then ``-gravity center -crop``).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

Size = tuple[int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom

VIEW2_MODES = (0, 1, 2, 3, 4, 5)
_CROPPING_MODES = (1, 5)
_AT_MOST_MODES = (0, 2)
_EDGE_MODES = (0, 4, 5)  # bounds apply to the long and short edges, not width and height


def round_side(value: Fraction | float) -> int:
    """Round a side length to the nearest pixel, halves up, never below 1."""
    return max(1, math.floor(value + Fraction(1, 2)))


@dataclasses.dataclass(frozen=True, slots=True)
class ViewPlan:
    """The whole source scaled to :attr:`scaled`, then :attr:`crop` of that kept."""

    scaled: Size
    crop: Box

    @property
    def size(self) -> Size:
        """The size of the result."""
        left, top, right, bottom = self.crop
        return right - left, bottom - top

    def is_identity(self, source: Size) -> bool:
        """True when the plan leaves an image of size ``source`` as it is."""
        return self.scaled == source and self.crop == (0, 0, *source)


def centre_crop(size: Size, box: Size) -> Box:
    """The centred box of at most ``box`` inside ``size`` (what fits, never padded)."""
    width, height = size
    crop_w, crop_h = min(box[0], width), min(box[1], height)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def view2_plan(mode: int, w: int | None, h: int | None, width: int, height: int) -> ViewPlan:
    """Plan imageView2/<mode>/w/<w>/h/<h> on an (oriented) image of ``width × height``."""
    if mode not in VIEW2_MODES:
        raise ValueError(f"imageView2 has no mode {mode}")
    if width < 1 or height < 1:
        raise ValueError("the source must have a positive size")
    if (w is not None and w < 1) or (h is not None and h < 1):
        raise ValueError("bounds must be positive")
    whole: Box = (0, 0, width, height)
    if w is None and h is None:
        return ViewPlan((width, height), whole)
    landscape = width >= height
    long_edge, short_edge = (width, height) if landscape else (height, width)
    first_side, second_side = (long_edge, short_edge) if mode in _EDGE_MODES else (width, height)
    if mode in _AT_MOST_MODES:
        scale = min(
            Fraction(bound, side)
            for bound, side in ((w, first_side), (h, second_side))
            if bound is not None
        )
    else:
        w_bound = w if w is not None else h
        h_bound = h if h is not None else w
        assert w_bound is not None and h_bound is not None
        scale = max(Fraction(w_bound, first_side), Fraction(h_bound, second_side))
    scale = min(scale, Fraction(1))  # never enlarge
    scaled = (round_side(width * scale), round_side(height * scale))
    if mode not in _CROPPING_MODES:
        return ViewPlan(scaled, (0, 0, *scaled))
    w_box = w if w is not None else h
    h_box = h if h is not None else w
    assert w_box is not None and h_box is not None
    if mode == 5 and not landscape:
        w_box, h_box = h_box, w_box  # w bounds the long edge, here the height
    return ViewPlan(scaled, centre_crop(scaled, (w_box, h_box)))


# --- EXIF orientation -----------------------------------------------------------------------
#
# Orientation n (1-8) says how the stored ("raw") pixels must be transformed to
# be displayed upright; these are the transforms of ImageOps.exif_transpose.

ORIENTATION_NAMES = {
    1: "Top-left",
    2: "Top-right",
    3: "Bottom-right",
    4: "Bottom-left",
    5: "Left-top",
    6: "Right-top",
    7: "Right-bottom",
    8: "Left-bottom",
}


def swaps_axes(orientation: int) -> bool:
    """True for the orientations that turn a w×h image into h×w."""
    return orientation in (5, 6, 7, 8)


def oriented_size(size: Size, orientation: int) -> Size:
    """The displayed size of a stored image of ``size`` (and the inverse: it is symmetric)."""
    return (size[1], size[0]) if swaps_axes(orientation) else size


def _raw_point(x: int, y: int, oriented: Size, orientation: int) -> tuple[int, int]:
    """Where the oriented image's corner point (x, y) lies in the stored image."""
    width, height = oriented
    if orientation == 2:  # mirrored horizontally
        return width - x, y
    if orientation == 3:  # rotated 180°
        return width - x, height - y
    if orientation == 4:  # mirrored vertically
        return x, height - y
    if orientation == 5:  # transposed
        return y, x
    if orientation == 6:  # displayed after rotating 90° clockwise
        return y, width - x
    if orientation == 7:  # transversed
        return height - y, width - x
    if orientation == 8:  # displayed after rotating 90° counter-clockwise
        return height - y, x
    return x, y


def raw_box(box: Box, oriented: Size, orientation: int) -> Box:
    """The box of the stored image that, once oriented, is ``box`` of the ``oriented`` image."""
    x0, y0 = _raw_point(box[0], box[1], oriented, orientation)
    x1, y1 = _raw_point(box[2], box[3], oriented, orientation)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def exceeds(size: Size, max_side: int, max_pixels: int) -> bool:
    """True when ``size`` breaks a side or an area limit."""
    return max(size) > max_side or size[0] * size[1] > max_pixels
