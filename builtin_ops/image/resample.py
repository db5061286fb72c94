"""Scale and crop in one resampling pass, decoding no more pixels than needed.

The fast path for a thumbnail of a JPEG: libjpeg decodes straight at 1/2,
1/4 or 1/8 of the size (DCT scaling, :func:`~.decode.draft`) to the smallest
image still at least as large as the target, and one ``resize`` with a
source ``box`` resamples only the part the crop keeps. The EXIF orientation
is applied last, to the small result: the target and the crop are mapped
back to stored pixels instead of turning the large source.

The filter and the draft scale were measured (``bench/pillow_bound.py
--study``, 1920×1080 → cover-crop 300×200, decode + resample, one core, quiet
machine): BICUBIC from a draft ≥ 1× the target ~130 img/s at 47 dB PSNR
against a full-resolution LANCZOS reference; LANCZOS ≥ 1× ~120 img/s, 50 dB;
LANCZOS ≥ 2× (what ``Image.thumbnail`` does) ~72 img/s, 54 dB. Past ~40 dB
the difference is invisible, so speed decides.
"""

from __future__ import annotations

from PIL import Image

from dora.builtin_ops.image import decode
from dora.builtin_ops.image.geometry import Box, Size, oriented_size, raw_box
from dora.builtin_ops.image.picture import Picture

RESAMPLE = Image.Resampling.BICUBIC
# Pillow first shrinks by a whole factor with a box filter (``reduce``) while
# the remaining resampling stays ≥ this many times the target: much faster
# for large factors (PNG sources, JPEGs beyond 1/8) and visually lossless.
REDUCING_GAP = 2.0


def scale_and_crop(picture: Picture, scaled: Size, crop: Box) -> None:
    """Scale the displayed picture to ``scaled`` and keep the ``crop`` box of that.

    Sizes and boxes are in displayed (oriented) pixels; the result is upright.
    """
    orientation = picture.orientation
    if scaled == picture.size and crop == (0, 0, *scaled):
        decode.orient(picture)
        return
    stored = picture.image.size  # before any draft
    stored_scaled = oriented_size(scaled, orientation)
    left, top, right, bottom = raw_box(crop, scaled, orientation)
    out_size = (right - left, bottom - top)
    divisor = decode.draft(picture, stored_scaled)
    # The crop box in the decoded (maybe drafted) image's coordinates: one
    # division of exact integers, so the far edge never lands past the
    # image by a rounding error (Pillow refuses such a box).
    width, height = decode.decode(picture).size
    sx, sy = stored_scaled[0] * divisor, stored_scaled[1] * divisor
    box = (
        left * stored[0] / sx,
        top * stored[1] / sy,
        min(width, right * stored[0] / sx),
        min(height, bottom * stored[1] / sy),
    )
    transpose = decode.transpose_for(orientation)

    def scale(image: Image.Image) -> Image.Image:
        # through Picture.apply: an animation's every frame is scaled alike
        sixteen_bit = image.mode.startswith("I;16")  # resampled as 32-bit "I", kept 16-bit
        image = image.convert("I") if sixteen_bit else decode.resampleable(image)
        if stored_scaled == stored:
            result = image.crop((left, top, right, bottom))  # a crop alone: no resampling
        else:
            result = image.resize(out_size, RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
        if sixteen_bit:
            result = result.convert("I;16")
        return result.transpose(transpose) if transpose is not None else result

    picture.apply(scale)
    picture.orientation = 1
