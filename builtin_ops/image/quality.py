"""The JPEG quality of a source, and the quality a result is written at.

Qiniu's rule (API.md, imageView2 and imageMogr2's ``quality``): without
``!`` the effective quality is::

    min(q, estimated source quality × sqrt(source area / target area), 90)

so re-encoding never spends more bytes than the source had per displayed
pixel (a small thumbnail of a q=60 photo may go higher: its pixels are
averages of many), and never beyond 90 unless forced with ``q/<n>!``. The
rule applies to JPEG sources only; for any other source ``q`` is used as
given. Quality still has to mean something to the output format (JPEG, WebP,
AVIF, HEIC); PNG, GIF, BMP and TIFF are lossless here and ignore it.

The source quality is estimated the way libjpeg's ``jpeg_set_quality``
scales its standard tables (and as ImageMagick's ``identify -format %Q``
estimates): for each quality 1-100 the standard luminance (and chrominance)
tables are scaled, and the quality whose table sums come closest to the
source's is the estimate. A file written by libjpeg (Pillow, ImageMagick,
most cameras' firmware is close) gives back exactly the quality it was
written with; other encoders' custom tables give the equivalent quality.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

from dora.builtin_ops.image.geometry import Size

MAX_UNFORCED_QUALITY = 90

# The example tables of the JPEG standard (ITU T.81, Annex K), in natural order.
STANDARD_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
STANDARD_CHROMINANCE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip


def scaled_table(table: Sequence[int], quality: int) -> tuple[int, ...]:
    """A standard table scaled as libjpeg does for ``quality`` (1-100), baseline (≤ 255)."""
    quality = min(100, max(1, quality))
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(min(255, max(1, (value * scale + 50) // 100)) for value in table)


@functools.cache
def _table_sums() -> tuple[tuple[int, int], ...]:
    """(luminance sum, chrominance sum) of the scaled standard tables, for qualities 1-100."""
    return tuple(
        (sum(scaled_table(STANDARD_LUMINANCE, q)), sum(scaled_table(STANDARD_CHROMINANCE, q)))
        for q in range(1, 101)
    )


def estimate_quality(tables: Mapping[int, Sequence[int]]) -> int | None:
    """The libjpeg quality (1-100) whose scaled tables best match a JPEG's quantisation tables.

    ``tables`` is Pillow's ``JpegImageFile.quantization`` (table id → 64
    values). Only the sums matter, so the order of the values does not.
    None when there is no table to go by.
    """
    luminance = tables.get(0)
    if not luminance or len(luminance) != 64:
        return None
    chrominance = tables.get(1)
    target_l = sum(luminance)
    target_c = sum(chrominance) if chrominance and len(chrominance) == 64 else None
    best_quality, best_error = 1, math.inf
    for quality, (sum_l, sum_c) in enumerate(_table_sums(), start=1):
        error = abs(target_l - sum_l) + (abs(target_c - sum_c) if target_c is not None else 0)
        if error <= best_error:  # ties go to the higher quality
            best_quality, best_error = quality, error
    return best_quality


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (as the geometry rounds sides)."""
    return math.floor(value + 0.5)


def effective_quality(
    requested: int,
    forced: bool,
    source_quality: int | None,
    source_size: Size | None,
    target_size: Size,
) -> int:
    """The quality to encode at: ``q`` itself when forced or when the source is not a JPEG,
    else ``min(q, source quality × sqrt(source area / target area), 90)``, at least 1."""
    if forced or source_quality is None or source_size is None:
        return requested
    source_area = source_size[0] * source_size[1]
    target_area = max(1, target_size[0] * target_size[1])
    scaled = round_half_up(source_quality * math.sqrt(source_area / target_area))
    return max(1, min(requested, scaled, MAX_UNFORCED_QUALITY))
