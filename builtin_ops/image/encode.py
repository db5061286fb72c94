"""The chain's single encode: pick the output format, fit the pixels to it, write.

The output format is the one an op asked for, else the source's own; a
source format Dora does not write (PSD) becomes PNG when it has alpha and
JPEG otherwise. A format whose codec this server lacks (AVIF, HEIC) is a 400
naming it. Alpha is flattened onto white for formats without it (JPEG,
BMP). 16-bit grey stays 16-bit in PNG and TIFF and is scaled (not clipped)
to 8 bits elsewhere. Encoders run with speed-minded defaults: no extra
optimisation pass, baseline JPEG unless ``interlace/1`` asks for
progressive. The quality is the effective one of :mod:`~.quality`. The
pixels are sRGB (:mod:`~.colour`) and the ICC profile that says so is kept;
other metadata (EXIF, comments) is dropped: the orientation has been
applied, and thumbnails should not leak GPS tags.

An animated picture written as GIF or WebP stays animated (every frame
through the chain's transforms, :mod:`~.animation`); any other format gets
its first frame.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image

from dora.builtin_ops import formats
from dora.builtin_ops.image import decode
from dora.builtin_ops.image.animation import ANIMATED_OUTPUTS, save_animation
from dora.builtin_ops.image.geometry import exceeds
from dora.builtin_ops.image.picture import Picture
from dora.builtin_ops.image.quality import effective_quality
from dora.builtin_ops.image.sizelimit import SizeLimitedOptions, encode_limited
from dora.config import Limits
from dora.errors import BadRequest
from dora.ops import Output

# output name -> (Pillow format, MIME type): one table, in builtin_ops.formats
OUTPUT_FORMATS = formats.FORMATS
_WHITE = (255, 255, 255)
# modes each writer takes as they are; anything else is converted first
_NATIVE_MODES: Mapping[str, tuple[str, ...]] = {
    "jpg": ("L", "RGB", "CMYK"),
    "bmp": ("1", "L", "P", "RGB"),
    "png": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "gif": ("L", "P", "RGB", "RGBA"),  # Pillow builds the palette (and transparency)
    "webp": ("RGB", "RGBA"),
    "tiff": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"),
    "avif": ("RGB", "RGBA"),
    "heic": ("RGB", "RGBA"),
}
_LOSSY = ("jpg", "webp", "avif", "heic")  # formats with a quality
_FLATTENED = ("jpg", "bmp")  # formats without alpha


normalise_format = formats.normalise  # ``jpeg`` → ``jpg``, ``tif`` → ``tiff``


def output_format(picture: Picture) -> str:
    """The format the chain's result is written in."""
    if picture.options.format is not None:
        return normalise_format(picture.options.format)
    source = normalise_format(picture.source_format)
    if source in OUTPUT_FORMATS:
        return source
    return "png" if picture.image.has_transparency_data else "jpg"


def flatten(image: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white; RGB (or L for grey) without alpha."""
    grey = image.mode in ("LA", "La")
    rgba = image.convert("LA" if grey else "RGBA")
    background = Image.new("L" if grey else "RGB", image.size, 255 if grey else _WHITE)
    background.paste(rgba.convert("L" if grey else "RGB"), mask=rgba.getchannel("A"))
    return background


def binary_alpha(image: Image.Image) -> Image.Image:
    """RGBA with every pixel either opaque or clear, split at half (as ImageMagick does):
    GIF has one transparent colour, and Pillow would make any pixel not fully clear
    opaque, which rims resampled edges with a line of their colour."""
    alpha = image.getchannel("A")
    if not any(alpha.histogram()[1:255]):
        return image  # every pixel already clear or opaque
    result = image.copy()
    result.putalpha(alpha.point(lambda value: 255 if value >= 128 else 0))
    return result


def fit_mode(image: Image.Image, fmt: str) -> Image.Image:
    """Convert the pixels to a mode the writer of ``fmt`` takes, flattening alpha if needed."""
    if fmt in _FLATTENED and image.has_transparency_data:
        return flatten(image)
    if fmt == "gif" and image.mode == "RGBA":
        return binary_alpha(image)
    if image.mode in _NATIVE_MODES[fmt]:
        return image
    if image.mode.startswith("I;16") and "I;16" in _NATIVE_MODES[fmt]:
        return image.convert("I").convert("I;16")  # big-endian 16-bit (TIFF) to the native order
    if image.mode in ("1", "F", "I") or image.mode.startswith("I;16"):
        image = decode.to_8bit(image)
        if image.mode in _NATIVE_MODES[fmt]:
            return image
    alpha = image.has_transparency_data and "RGBA" in _NATIVE_MODES[fmt]
    return image.convert("RGBA" if alpha else "RGB")


def _icc_fits(profile: bytes, mode: str) -> bool:
    """True when an ICC profile describes pixels of ``mode`` (a CMYK profile does
    not describe the RGB pixels a CMYK JPEG became for PNG)."""
    colour_space = profile[16:20]
    if mode in ("1", "L", "LA", "I;16"):
        return colour_space == b"GRAY"
    if mode == "CMYK":
        return colour_space == b"CMYK"
    return colour_space == b"RGB "


def quality_for(picture: Picture) -> int:
    """The effective quality of the picture's output (see :mod:`~.quality`)."""
    options = picture.options
    return effective_quality(
        options.quality,
        options.quality_forced,
        picture.source_quality,
        picture.source_dimensions,
        picture.size,
    )


def _save_options(picture: Picture, fmt: str, mode: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if fmt in _LOSSY:
        options["quality"] = quality_for(picture)
    if fmt == "jpg":
        options["progressive"] = picture.options.interlace
        options["optimize"] = False
    icc = picture.icc_profile
    if icc and fmt in ("jpg", "png", "webp", "tiff", "avif", "heic") and _icc_fits(icc, mode):
        options["icc_profile"] = icc
    return options


def _without_profile(image: Image.Image) -> Image.Image:
    """The image without the ICC profile Pillow carries along in ``info``: writers fall
    back to it, and only :func:`_save_options` decides which profile a result has."""
    image.info.pop("icc_profile", None)
    return image


def _encode_animation(picture: Picture, fmt: str, limits: Limits) -> Output | None:
    """Every frame of an animated picture as an animated GIF or WebP; None: write a still."""
    animation = picture.animation
    if animation is None or not picture.animated or fmt not in ANIMATED_OUTPUTS:
        return None
    if not animation.replayable(picture.image):
        return None  # an op changed the image without Picture.apply: its frames cannot follow
    rendered = animation.render(picture.image, limits)
    if rendered is None or len(rendered.frames) < 2:
        return None
    rendered.frames = [_without_profile(fit_mode(frame, fmt)) for frame in rendered.frames]
    body = save_animation(rendered, fmt, quality_for(picture))
    width, height = picture.image.size
    meta = {"format": fmt, "width": width, "height": height, "frames": len(rendered.frames)}
    return Output(mime=OUTPUT_FORMATS[fmt][1], body=body, meta=meta)


def encode(picture: Picture, limits: Limits) -> Output:
    """Write the picture in its output format, within the output limits."""
    fmt = output_format(picture)
    if fmt not in OUTPUT_FORMATS:
        raise BadRequest(f"cannot write format {fmt!r}")
    pil_format, mime = OUTPUT_FORMATS[fmt]
    formats.require_writable(fmt)  # "format avif is not available on this server"
    width, height = picture.size
    if exceeds((width, height), limits.max_output_side, limits.max_output_pixels):
        raise BadRequest(
            f"the result would be {width}x{height}: outputs are limited to "
            f"{limits.max_output_side} px a side and {limits.max_output_pixels} pixels"
        )
    decode.orient(picture)
    animated = _encode_animation(picture, fmt, limits)
    if animated is not None:
        return animated
    image = _without_profile(fit_mode(picture.image, fmt))
    if isinstance(picture.options, SizeLimitedOptions):  # imageMogr2/size-limit
        save_options = _save_options(picture, fmt, image.mode)
        return encode_limited(
            picture, image, fmt=fmt, pil_format=pil_format, mime=mime, save_options=save_options
        )
    buf = io.BytesIO()
    image.save(buf, pil_format, **_save_options(picture, fmt, image.mode))
    return Output(
        mime=mime,
        body=buf.getvalue(),
        meta={"format": fmt, "width": image.size[0], "height": image.size[1]},
    )
