"""From untrusted bytes to a :class:`Picture`, and from a Picture to pixels.

Everything hostile input can do is decided here, before pixels are
allocated: the source's byte size (413), its format (an allowlist: Pillow's
rarer plugins are never probed), and the size its header declares (a
decompression bomb is a 400 from the header alone). Decoding errors of any
kind (corrupt, truncated, unsupported) become a 400 with a clear message.
"""

from __future__ import annotations

import functools
import io
import struct

from PIL import Image, UnidentifiedImageError

from dora.builtin_ops.image.geometry import Size, exceeds
from dora.builtin_ops.image.picture import Picture
from dora.config import Limits
from dora.errors import BadRequest, PayloadTooLarge

# Formats a source may be in (MPO, the multi-picture JPEG of cameras, opens
# through the JPEG plugin). Anything else is refused without being parsed.
SOURCE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PSD", "AVIF")
_FORMAT_NAMES = {"MPO": "jpeg"}

# What a broken file makes Pillow's plugins and decoders raise.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, TypeError)

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112


@functools.cache
def _readable_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin once, so that OPEN lists them
    return tuple(name for name in SOURCE_FORMATS if name in Image.OPEN)


def check_source_size(size: Size, limits: Limits) -> None:
    """Refuse a declared size beyond the source limits (before any pixel exists)."""
    if exceeds(size, limits.max_source_side, limits.max_source_pixels):
        raise BadRequest(
            f"image is {size[0]}x{size[1]}: sources are limited to {limits.max_source_side} px "
            f"a side and {limits.max_source_pixels} pixels"
        )


def open_picture(src: bytes, limits: Limits) -> Picture:
    """Identify ``src`` and read its header; no pixel is decoded yet."""
    if len(src) > limits.max_source_bytes:
        raise PayloadTooLarge(
            f"source is {len(src)} bytes: the limit is {limits.max_source_bytes} bytes"
        )
    if not src:
        raise BadRequest("source is empty")
    try:
        # Pillow's own pixel limit (a warning, an error at twice the limit)
        # may trip first; the authoritative check is ours, right below.
        image = Image.open(io.BytesIO(src), formats=_readable_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadRequest(f"image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadRequest("unsupported or corrupt image: format not recognised") from exc
    except DECODE_ERRORS as exc:
        raise BadRequest(f"corrupt image header: {exc}") from exc
    check_source_size(image.size, limits)
    fmt = (image.format or "").upper()
    return Picture(
        image=image,
        source=src,
        source_format=_FORMAT_NAMES.get(fmt, fmt.lower()),
        orientation=read_orientation(image) or 1,
        icc_profile=image.info.get("icc_profile") or None,
    )


def read_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation (1-8) of an opened image; None when absent or unreadable."""
    if image.format == "PNG" and "exif" not in image.info:
        return None  # looking further would make Pillow decode the whole PNG
    try:
        value = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block must not fail the image
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def draft(picture: Picture, raw_size: Size) -> int:
    """Let an undecoded JPEG decode at the smallest 1/n scale still ≥ ``raw_size``.

    ``raw_size`` is in stored (unoriented) pixels. Returns the scale divisor
    (1, 2, 4 or 8) the image will decode at; 1 for any other format.
    """
    if picture.decoded or picture.source_format != "jpeg":
        return 1
    full_width = picture.image.size[0]
    result = picture.image.draft(None, (max(1, raw_size[0]), max(1, raw_size[1])))
    if result is None:
        return 1
    return max(1, round(full_width / result[1][2]))


def decode(picture: Picture) -> Image.Image:
    """Decode the pixels (once); a corrupt or truncated image is a 400."""
    if not picture.decoded:
        try:
            picture.image.load()
        except Image.DecompressionBombError as exc:
            raise BadRequest(f"image too large: {exc}") from exc
        except DECODE_ERRORS as exc:
            raise BadRequest(f"corrupt or truncated image: {exc}") from exc
        picture.decoded = True
    return picture.image


def orient(picture: Picture) -> Image.Image:
    """Decode and apply the pending EXIF orientation."""
    image = decode(picture)
    if picture.orientation != 1:
        image = image.transpose(_TRANSPOSE[picture.orientation])
        picture.image = image
        picture.orientation = 1
    return image


def transpose_for(orientation: int) -> Image.Transpose | None:
    """The transform that displays a stored image of this orientation upright."""
    return _TRANSPOSE.get(orientation)


def to_8bit(image: Image.Image) -> Image.Image:
    """Bring 1-bit, 16-bit and 32-bit modes to 8-bit L (scaling, not clipping)."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I;16"):
        image, peak = image.convert("I"), 65535.0
    elif image.mode in ("I", "F"):
        high = float(image.getextrema()[1])  # type: ignore[arg-type]
        peak = 255.0 if high <= 255 else max(high, 65535.0) if high > 65535 else 65535.0
    else:
        return image
    factor = 255.0 / peak
    return image.point(lambda value: value * factor).convert("L")


def resampleable(image: Image.Image) -> Image.Image:
    """The image in a mode resampling handles well: L, LA, RGB, RGBA or CMYK.

    Pillow resamples palette and 1-bit images with the nearest-neighbour
    filter whatever is asked; they become RGB(A) or L first.
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    if mode == "YCbCr":
        return image.convert("RGB")
    if mode in ("1", "F", "I") or mode.startswith("I;16"):
        return to_8bit(image)
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def working_image(picture: Picture) -> Image.Image:
    """Decoded, oriented pixels in a resampleable mode (for ops that need pixels)."""
    picture.image = resampleable(orient(picture))
    return picture.image


_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"8BPS", "image/vnd.adobe.photoshop"),
)


def sniff_mime(data: bytes) -> str:
    """The MIME type of image bytes from their signature (for returning them unchanged)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "application/octet-stream"
