"""imageInfo: what an image is, from its header, as Qiniu reports it.

``{"size", "format", "width", "height", "colorModel"}``, plus
``"orientation"`` (libexif's name, e.g. ``"Top-left"``) when the EXIF block
has one, plus ``"frameNumber"`` for GIFs and other animations. Width and
height are the stored ones, as Qiniu reports them (not rotated by the
orientation).

``colorModel`` follows what Qiniu's service answers, whose names are those of
Go's image models: a JPEG is ``ycbcr`` (``gray``, ``cmyk``), a PNG without
alpha ``rgba``, with alpha ``nrgba``, 16-bit ones ``rgba64``/``nrgba64``/
``gray16``, an indexed image ``palette<number of colours>`` (Qiniu's own
example is ``palette16``), a lossy WebP ``ycbcr`` (``nycbcra`` with alpha),
a lossless one ``nrgba``. No pixel is decoded.
"""

from __future__ import annotations

from typing import Any

from dora.builtin_ops.image import decode
from dora.builtin_ops.image.frames import count_frames
from dora.builtin_ops.image.geometry import ORIENTATION_NAMES
from dora.builtin_ops.image.picture import Picture
from dora.config import Limits
from dora.fop import Stage

_PNG_MODELS = {0: "gray", 2: "rgba", 4: "nrgba", 6: "nrgba"}  # by IHDR colour type
_PNG_MODELS_16 = {0: "gray16", 2: "rgba64", 4: "nrgba64", 6: "nrgba64"}
_MODE_MODELS = {
    "1": "gray",
    "L": "gray",
    "LA": "nrgba",
    "I": "gray16",
    "I;16": "gray16",
    "I;16B": "gray16",
    "I;16L": "gray16",
    "RGB": "rgba",
    "RGBA": "nrgba",
    "PA": "nrgba",
    "CMYK": "cmyk",
    "YCbCr": "ycbcr",
}
_ANIMATED_FORMATS = ("gif", "webp", "png", "avif")
# imageInfo only counts frames, a few microseconds each, so it accepts far
# longer animations than processing does (Limits.max_frames).
INFO_MAX_FRAMES = 10_000


def _palette_size(picture: Picture) -> int:
    palette = picture.image.palette
    if palette is None or not palette.palette:
        return 256
    return max(1, len(palette.palette) // len(palette.mode))


def _gif_colours(source: bytes) -> int:
    flags = source[10] if len(source) > 10 else 0
    return 2 << (flags & 0x07) if flags & 0x80 else 256  # the global colour table's size


def _webp_lossless(source: bytes) -> bool:
    """True when the first image chunk of a WebP is VP8L (lossless)."""
    offset = 12  # after "RIFF" <size> "WEBP"
    while offset + 8 <= len(source):
        fourcc = source[offset : offset + 4]
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc == b"VP8L"
        if fourcc == b"ANMF":
            offset += 8 + 16  # an animation frame's header, then its image chunks
            continue
        length = int.from_bytes(source[offset + 4 : offset + 8], "little")
        offset += 8 + length + (length & 1)
    return False


def color_model(picture: Picture) -> str:
    """Qiniu's ``colorModel`` name for the (undecoded) picture."""
    fmt, mode, source = picture.source_format, picture.image.mode, picture.source
    if fmt == "gif":
        return f"palette{_gif_colours(source)}"
    if fmt == "png" and len(source) >= 26:
        bit_depth, colour_type = source[24], source[25]  # from IHDR
        if colour_type == 3:
            return f"palette{_palette_size(picture)}"
        models = _PNG_MODELS_16 if bit_depth == 16 else _PNG_MODELS
        if colour_type in models:
            return models[colour_type]
    if mode == "P":
        return f"palette{_palette_size(picture)}"
    if fmt == "jpeg":
        return {"L": "gray", "CMYK": "cmyk"}.get(mode, "ycbcr")
    if fmt == "webp":
        if _webp_lossless(source):
            return "nrgba"
        return "nycbcra" if mode == "RGBA" else "ycbcr"
    if fmt == "avif":
        return "nycbcra" if mode == "RGBA" else "ycbcr"
    return _MODE_MODELS.get(mode, mode.lower())


def image_info(picture: Picture, stage: Stage, limits: Limits) -> dict[str, Any]:
    """The imageInfo answer for the picture (the chain's input, or the previous ops' output)."""
    width, height = picture.image.size
    info: dict[str, Any] = {
        "size": picture.source_size,
        "format": picture.source_format,
        "width": width,
        "height": height,
        "colorModel": color_model(picture),
    }
    orientation = decode.read_orientation(picture.image)
    if orientation is not None:
        info["orientation"] = ORIENTATION_NAMES[orientation]
    if picture.source_format in _ANIMATED_FORMATS:
        frames = count_frames(picture.image, picture.source, INFO_MAX_FRAMES)
        if frames > 1 or picture.source_format == "gif":
            info["frameNumber"] = frames
    return info
