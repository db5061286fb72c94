"""imageView2: Qiniu's basic thumbnail op (six modes, format, quality, interlace).

The sizes come from :func:`~.geometry.view2_plan`; the pixels from
:func:`~.resample.scale_and_crop`; the output settings are recorded on the
picture for the chain's single encode. The op applies the EXIF orientation
(Qiniu auto-orients in imageView2) before planning, so ``w`` and ``h`` refer
to the image as displayed.
"""

from __future__ import annotations

import dataclasses

from dora.builtin_ops.image import decode
from dora.builtin_ops.image.geometry import exceeds, view2_plan
from dora.builtin_ops.image.picture import DEFAULT_QUALITY, Picture
from dora.builtin_ops.image.resample import scale_and_crop
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import Stage
from dora.schema import Quality


def image_view2(picture: Picture, stage: Stage, limits: Limits) -> None:
    """Apply one ``imageView2`` stage to the picture."""
    plan = view2_plan(stage.args["mode"], stage.get("w"), stage.get("h"), *picture.size)
    if exceeds(plan.size, limits.max_output_side, limits.max_output_pixels):
        width, height = plan.size
        raise BadRequest(
            f"imageView2: the result would be {width}x{height}: outputs are limited to "
            f"{limits.max_output_side} px a side and {limits.max_output_pixels} pixels"
        )
    if plan.is_identity(picture.size):
        decode.orient(picture)
    else:
        scale_and_crop(picture, plan.scaled, plan.crop)
    quality: Quality | None = stage.get("q")
    fmt: str | None = stage.get("format")
    picture.options = dataclasses.replace(
        picture.options,
        # the format carries over from earlier stages (it is this stage's input
        # format); quality and interlace are this stage's own, as if it encoded
        format=fmt if fmt is not None else picture.options.format,
        quality=quality.value if quality is not None else DEFAULT_QUALITY,
        quality_forced=quality.forced if quality is not None else False,
        interlace=bool(stage.get("interlace", False)),
    )
    picture.touched = True
