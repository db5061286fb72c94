"""imageAve: the image's average colour, as Qiniu answers it: ``{"RGB": "0xrrggbb"}``.

The average of a large image equals the average of its box-filtered
reduction, so the work is done on a small one: a JPEG is decoded at 1/8 of
its size (DCT scaling, no full decode) and any image is then reduced by a
whole factor to at most :data:`SAMPLE_SIDE` pixels a side. Transparent
pixels count by their opacity (a fully transparent image averages its
colour channels plainly). The first frame of an animation is used.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageChops, ImageStat

from dora.builtin_ops.image import decode
from dora.builtin_ops.image.picture import Picture
from dora.config import Limits
from dora.fop import Stage

SAMPLE_SIDE = 256


def sample(picture: Picture) -> Image.Image:
    """A small RGB(A) image with (nearly) the picture's average colour."""
    decode.draft(picture, (1, 1))  # a JPEG decodes at 1/8: enough for an average
    image = decode.resampleable(decode.decode(picture))
    factor = max(1, max(image.size) // SAMPLE_SIDE)
    if factor > 1:
        image = image.reduce(factor)
    if image.mode == "CMYK":
        return image.convert("RGB")
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def average_rgb(image: Image.Image) -> tuple[int, int, int]:
    """The mean colour of an RGB or RGBA image, weighting by alpha if present."""
    if image.mode == "RGBA":
        alpha = image.getchannel("A")
        weight = ImageStat.Stat(alpha).sum[0]
        if weight > 0:
            weighted = [
                ImageStat.Stat(ImageChops.multiply(image.getchannel(band), alpha)).sum[0]
                for band in "RGB"
            ]
            # multiply() divides by 255; undo that in the ratio
            red, green, blue = (round(value * 255 / weight) for value in weighted)
            return red, green, blue
        image = image.convert("RGB")
    means = ImageStat.Stat(image).mean
    return round(means[0]), round(means[1]), round(means[2])


def image_ave(picture: Picture, stage: Stage, limits: Limits) -> dict[str, Any]:
    """The imageAve answer for the picture."""
    red, green, blue = (min(255, max(0, value)) for value in average_rgb(sample(picture)))
    return {"RGB": f"0x{red:02x}{green:02x}{blue:02x}"}
