"""The chain's single encode: pick the output format, fit the pixels to it, write.

The output format is the one an op asked for, else the source's own; a
source format Dora does not write (PSD) becomes PNG when it has alpha and
JPEG otherwise. Alpha is flattened onto white for formats without it (JPEG,
BMP). Encoders run with speed-minded defaults: no extra optimisation pass,
baseline JPEG unless ``interlace/1`` asks for progressive. The ICC profile
is kept (colours stay right); other metadata (EXIF, comments) is dropped:
the orientation has been applied, and thumbnails should not leak GPS tags.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image, features

from dora.builtin_ops.image import decode
from dora.builtin_ops.image.geometry import exceeds
from dora.builtin_ops.image.picture import Picture
from dora.config import Limits
from dora.errors import BadRequest
from dora.ops import Output

# output name -> (Pillow format, MIME type)
OUTPUT_FORMATS: Mapping[str, tuple[str, str]] = {
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "gif": ("GIF", "image/gif"),
    "webp": ("WEBP", "image/webp"),
    "bmp": ("BMP", "image/bmp"),
    "tiff": ("TIFF", "image/tiff"),
    "avif": ("AVIF", "image/avif"),
}
_ALIASES = {"jpeg": "jpg", "tif": "tiff"}
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
}
_FLATTENED = ("jpg", "bmp")  # formats without alpha


def normalise_format(name: str) -> str:
    """``jpeg`` → ``jpg``, ``tif`` → ``tiff``; other names as given (lower case)."""
    name = name.lower()
    return _ALIASES.get(name, name)


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


def fit_mode(image: Image.Image, fmt: str) -> Image.Image:
    """Convert the pixels to a mode the writer of ``fmt`` takes, flattening alpha if needed."""
    if fmt in _FLATTENED and image.has_transparency_data:
        return flatten(image)
    if image.mode in _NATIVE_MODES[fmt]:
        return image
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


def _save_options(picture: Picture, fmt: str, mode: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if fmt in ("jpg", "webp", "avif"):
        options["quality"] = picture.options.quality
    if fmt == "jpg":
        options["progressive"] = picture.options.interlace
        options["optimize"] = False
    icc = picture.icc_profile
    if icc and fmt in ("jpg", "png", "webp", "tiff", "avif") and _icc_fits(icc, mode):
        options["icc_profile"] = icc
    return options


def encode(picture: Picture, limits: Limits) -> Output:
    """Write the picture in its output format, within the output limits."""
    fmt = output_format(picture)
    if fmt not in OUTPUT_FORMATS:
        raise BadRequest(f"cannot write format {fmt!r}")
    pil_format, mime = OUTPUT_FORMATS[fmt]
    if fmt == "avif" and not features.check("avif"):
        raise BadRequest("format avif is not available on this server")
    width, height = picture.size
    if exceeds((width, height), limits.max_output_side, limits.max_output_pixels):
        raise BadRequest(
            f"the result would be {width}x{height}: outputs are limited to "
            f"{limits.max_output_side} px a side and {limits.max_output_pixels} pixels"
        )
    image = fit_mode(decode.orient(picture), fmt)
    buf = io.BytesIO()
    image.save(buf, pil_format, **_save_options(picture, fmt, image.mode))
    return Output(
        mime=mime,
        body=buf.getvalue(),
        meta={"format": fmt, "width": image.size[0], "height": image.size[1]},
    )
