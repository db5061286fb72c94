"""From untrusted bytes to a :class:`Picture`, and from a Picture to pixels.

Everything hostile input can do is decided here, before pixels are
allocated: the source's byte size (413), its format (an allowlist: Pillow's
rarer plugins are never probed), and the size its header declares (a
decompression bomb is a 400 from the header alone). Decoding errors of any
kind (corrupt, truncated, unsupported) become a 400 with a clear message; a
format whose codec this server lacks (AVIF, HEIC) is a 400 naming it.

Decoding makes the pixels sRGB (:mod:`~.colour`): CMYK, Display P3 and
other profiled sources are converted once, right after the (maybe DCT-scaled)
decode. A CMYK JPEG without Adobe's marker stores plain ink amounts, where
Pillow assumes Adobe's inverted ones; it is turned back here. An animated
source opens as its first frame plus an :class:`~.animation.Animation`.
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageChops, UnidentifiedImageError

from dora.builtin_ops import formats
from dora.builtin_ops.image import colour, frames
from dora.builtin_ops.image.animation import ANIMATED_SOURCES, Animation, source_loop
from dora.builtin_ops.image.geometry import Size, exceeds
from dora.builtin_ops.image.picture import Picture
from dora.builtin_ops.image.quality import estimate_quality
from dora.config import Limits
from dora.errors import BadRequest, PayloadTooLarge

# Formats a source may be in (MPO, the multi-picture JPEG of cameras, opens
# through the JPEG plugin). Anything else is refused without being parsed.
# HEIF is there when pillow-heif is installed (see :mod:`dora.builtin_ops.formats`).
SOURCE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PSD", "AVIF", "HEIF")
_FORMAT_NAMES = {"MPO": "jpeg", "HEIF": "heic"}

# What a broken file makes Pillow's plugins and decoders raise.
DECODE_ERRORS = frames.DECODE_ERRORS

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
    formats.enable_heif()
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
        sniffed = formats.sniff(src)
        if sniffed is not None:
            formats.require_readable(sniffed)  # a 400 naming a missing codec
        raise BadRequest("unsupported or corrupt image: format not recognised") from exc
    except DECODE_ERRORS as exc:
        raise BadRequest(f"corrupt image header: {exc}") from exc
    check_source_size(image.size, limits)
    fmt = (image.format or "").upper()
    source_format = _FORMAT_NAMES.get(fmt, fmt.lower())
    icc_profile = image.info.get("icc_profile") or None
    animation = None
    if source_format in ANIMATED_SOURCES:
        try:
            count = frames.count_frames(image, src, frames.MAX_COUNTED_FRAMES)
        except DECODE_ERRORS as exc:
            raise BadRequest(f"corrupt animation: {exc}") from exc
        if count > 1:
            animation = Animation(image, count, icc_profile=icc_profile, loop=source_loop(image))
    quantization = getattr(image, "quantization", None) if source_format == "jpeg" else None
    return Picture(
        image=image,
        source=src,
        source_format=source_format,
        orientation=read_orientation(image) or 1,
        icc_profile=icc_profile,
        animation=animation,
        source_quality=estimate_quality(quantization) if quantization else None,
        source_dimensions=image.size,
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
    """Decode the pixels (once) as sRGB; a corrupt or truncated image is a 400.

    An animation decodes its first frame (coalesced, RGBA); the other frames
    wait for the encode.
    """
    if not picture.decoded:
        animation = picture.animation
        try:
            if animation is not None:
                picture.image = animation.first_frame()
            else:
                picture.image.load()
        except Image.DecompressionBombError as exc:
            raise BadRequest(f"image too large: {exc}") from exc
        except DECODE_ERRORS as exc:
            raise BadRequest(f"corrupt or truncated image: {exc}") from exc
        if animation is not None:
            picture.icc_profile = animation.output_icc
        else:
            image = picture.image
            if (
                picture.source_format == "jpeg"
                and image.mode == "CMYK"
                and "adobe" not in image.info
            ):
                image = ImageChops.invert(image)  # plain CMYK, which Pillow took for Adobe's
            picture.image, picture.icc_profile = colour.to_srgb(image, picture.icc_profile)
        picture.decoded = True
    return picture.image


def orient(picture: Picture) -> Image.Image:
    """Decode and apply the pending EXIF orientation (every frame of an animation)."""
    decode(picture)
    transpose = _TRANSPOSE.get(picture.orientation)
    picture.orientation = 1
    if transpose is not None:
        picture.apply(lambda image: image.transpose(transpose))
    return picture.image


def auto_orient(picture: Picture) -> None:
    """Show the picture upright by its EXIF orientation, now (``imageMogr2/auto-orient``).

    All eight orientations; the result carries no orientation (the encoder
    writes no EXIF), so viewers do not turn it again.
    """
    orient(picture)


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
    image = orient(picture)
    converted = resampleable(image)
    if converted is not image:
        picture.image = converted
        if picture.animation is not None:
            picture.animation.record(resampleable, converted)
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
    sniffed = formats.sniff(data)
    if sniffed is not None:
        return formats.FORMATS[sniffed][1]
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "application/octet-stream"
