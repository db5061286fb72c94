"""imageMogr2's pixel effects: rotate, blur, sharpen, and the background colour.

Each effect is a function from an image to a new image, so that the op can
pass it to :meth:`~.picture.Picture.apply` (every frame of an animation
changes alike). Inputs are in a resampleable mode (L, LA, RGB, RGBA, CMYK).

- ``rotate/<deg>`` turns clockwise (ImageMagick's direction) on a canvas that
  grows to hold the whole picture; quarter turns are exact transposes. The
  uncovered corners take the ``background`` colour when one is given, else
  they are transparent when the output format keeps alpha and white when it
  does not.
- ``blur/<r>x<s>`` is ImageMagick's Gaussian blur: ``s`` is the deviation and
  the kernel stops at ``r`` pixels, so a large ``s`` under a small ``r`` is a
  small blur. Pillow's (extended box) Gaussian has no radius; it is given the
  deviation of the truncated kernel instead.
- ``sharpen/<n>`` is an unsharp mask of deviation ``n`` (``sharpen/1``, the
  value Qiniu documents, sharpens fine detail).
"""

from __future__ import annotations

import math
import re

from PIL import Image, ImageColor, ImageFilter

from dora.builtin_ops.image.mogr_geometry import rotation
from dora.errors import InvalidArgument

RGBA = tuple[int, int, int, int]
WHITE: RGBA = (255, 255, 255, 255)
CLEAR: RGBA = (255, 255, 255, 0)  # white, so that resampled edges fade to white, not black
ROTATE_RESAMPLE = Image.Resampling.BICUBIC
SHARPEN_PERCENT = 100
_QUARTER_TURNS = {
    90: Image.Transpose.ROTATE_270,  # Pillow's names count counter-clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
_HEX = re.compile(r"#?([0-9a-fA-F]{3,8})")


def parse_colour(text: str, op: str = "imageMogr2", arg: str = "background") -> RGBA:
    """``#RGB``, ``#RGBA``, ``#RRGGBB``, ``#RRGGBBAA`` (``#`` optional in the long forms)
    or a CSS colour name, as RGBA; an InvalidArgument (400) otherwise."""
    match = _HEX.fullmatch(text)
    if match is not None:
        digits = match.group(1)
        if len(digits) in (3, 4) and text.startswith("#"):
            digits = "".join(digit * 2 for digit in digits)
        if len(digits) in (6, 8):
            values = [int(digits[index : index + 2], 16) for index in range(0, len(digits), 2)]
            return values[0], values[1], values[2], values[3] if len(values) == 4 else 255
    try:
        red, green, blue, *alpha = ImageColor.getrgb(text)
    except ValueError as exc:
        raise InvalidArgument(op, arg, f"{text!r} is not a colour") from exc
    return red, green, blue, alpha[0] if alpha else 255


def _fill_mode(image: Image.Image, colour: RGBA) -> tuple[Image.Image, float | tuple[int, ...]]:
    """The image in a mode that can show ``colour``, and the colour in that mode."""
    mode = image.mode
    grey = colour[0] == colour[1] == colour[2]
    wants_alpha = colour[3] < 255 or mode in ("LA", "RGBA")
    if mode in ("L", "LA") and grey:
        target = "LA" if wants_alpha else "L"
        image = image if image.mode == target else image.convert(target)
        return image, (colour[0], colour[3]) if wants_alpha else colour[0]
    target = "RGBA" if wants_alpha else "RGB"
    image = image if image.mode == target else image.convert(target)
    return image, colour if wants_alpha else colour[:3]


def rotate(image: Image.Image, degrees: int, colour: RGBA) -> Image.Image:
    """Turn ``image`` clockwise by ``degrees`` on a grown canvas filled with ``colour``."""
    turn = degrees % 360
    if turn == 0:
        return image
    if turn in _QUARTER_TURNS:
        return image.transpose(_QUARTER_TURNS[turn])
    image, fill = _fill_mode(image, colour)
    size, matrix = rotation(image.size, turn)
    return image.transform(size, Image.Transform.AFFINE, matrix, ROTATE_RESAMPLE, fillcolor=fill)


def effective_sigma(radius: int, sigma: float) -> float:
    """The deviation of a Gaussian of ``sigma`` cut at ``radius`` pixels (sigma 0: r/2)."""
    if sigma <= 0:
        sigma = radius / 2
    weights = [
        (offset, math.exp(-(offset * offset) / (2 * sigma * sigma)))
        for offset in range(-radius, radius + 1)
    ]
    total = sum(weight for _, weight in weights)
    return math.sqrt(sum(offset * offset * weight for offset, weight in weights) / total)


def blur(image: Image.Image, radius: int, sigma: float) -> Image.Image:
    """ImageMagick's ``-blur <radius>x<sigma>``."""
    deviation = effective_sigma(radius, sigma)
    if deviation < 0.05:  # the kernel is (numerically) a single tap: nothing changes
        return image
    return image.filter(ImageFilter.GaussianBlur(deviation))


def sharpen(image: Image.Image, amount: int) -> Image.Image:
    """An unsharp mask of deviation ``amount``."""
    return image.filter(
        ImageFilter.UnsharpMask(radius=amount, percent=SHARPEN_PERCENT, threshold=0)
    )


def flatten(image: Image.Image, colour: RGBA) -> Image.Image:
    """Composite an image with transparency onto an opaque ``colour``."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", image.size, colour[:3])
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background
