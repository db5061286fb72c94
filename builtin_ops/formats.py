"""Which image formats this server can read and write, detected at run time.

Pillow is built with or without some codecs (AVIF, WebP, libtiff), and HEIC
comes from the optional ``pillow-heif`` package with its own libheif. What is
missing is a clear 400 naming the format ("format avif is not available on
this server"), never a confusing "unrecognised image". ``dora doctor`` lists
the table :func:`supported_formats` builds.

Importing this module is cheap: Pillow and pillow-heif are imported on first
use, so the gateway may import it to describe formats without loading an
imaging library.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import threading
from collections.abc import Mapping
from types import MappingProxyType

from dora.errors import BadRequest


@dataclasses.dataclass(frozen=True, slots=True)
class FormatSupport:
    """One image format as this server handles it."""

    name: str  # the fop name: "jpg", "png", ..., "heic"
    mime: str
    pillow_format: str  # Pillow's name for it ("JPEG", "HEIF", ...)
    read: bool
    write: bool
    codec: str  # what implements it, with versions ("libjpeg-turbo 3.2.0")


# fop name -> (Pillow format, MIME type); the order is the order doctor lists them in
FORMATS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "jpg": ("JPEG", "image/jpeg"),
        "png": ("PNG", "image/png"),
        "gif": ("GIF", "image/gif"),
        "webp": ("WEBP", "image/webp"),
        "bmp": ("BMP", "image/bmp"),
        "tiff": ("TIFF", "image/tiff"),
        "avif": ("AVIF", "image/avif"),
        "heic": ("HEIF", "image/heic"),
    }
)
ALIASES: Mapping[str, str] = MappingProxyType({"jpeg": "jpg", "tif": "tiff", "heif": "heic"})

# ISO-BMFF brands (the ``ftyp`` box) of HEIF files coded with HEVC, and of AVIF.
_HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")
_AVIF_BRANDS = (b"avif", b"avis")

_heif_lock = threading.Lock()


def normalise(name: str) -> str:
    """``jpeg`` → ``jpg``, ``tif`` → ``tiff``, ``heif`` → ``heic``; lower case."""
    name = name.lower()
    return ALIASES.get(name, name)


def sniff(data: bytes) -> str | None:
    """The format of image bytes from their signature alone (``None``: not one of ours)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _AVIF_BRANDS:
            return "avif"
        if brand in _HEIC_BRANDS:
            return "heic"
        if brand in (b"mif1", b"msf1"):  # a generic HEIF brand: the compatible list says which
            box_end = int.from_bytes(data[:4], "big")
            compatible = data[16 : min(box_end, 64)]
            if any(compatible[i : i + 4] in _AVIF_BRANDS for i in range(0, len(compatible), 4)):
                return "avif"
            return "heic"
        return None
    signatures = (
        (b"\xff\xd8\xff", "jpg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"GIF87a", "gif"),
        (b"GIF89a", "gif"),
        (b"BM", "bmp"),
        (b"II*\x00", "tiff"),
        (b"MM\x00*", "tiff"),
    )
    for magic, name in signatures:
        if data.startswith(magic):
            return name
    return None


def enable_heif() -> bool:
    """Register pillow-heif's HEIF opener with Pillow (once); False when it is not installed.

    Only the HEIF opener is registered: Pillow's own plugin decodes AVIF, and
    two plugins for one format would race for it.
    """
    return _register_heif()


@functools.cache
def _register_heif() -> bool:
    with _heif_lock:
        try:
            import pillow_heif  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
        except ImportError:
            return False
        # libheif applies the HEIF rotation and mirror boxes itself, and
        # pillow-heif then resets the EXIF orientation to 1, so a HEIC is
        # never turned twice.
        pillow_heif.register_heif_opener()
        return True


def _heif_codec() -> tuple[bool, bool, str]:
    if not enable_heif():
        return False, False, "pillow-heif not installed"
    import pillow_heif  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    info = pillow_heif.libheif_info()
    decoders = info.get("decoders") or {}
    encoder = str(info.get("HEIF") or "")
    version = importlib.metadata.version("pillow-heif")
    codec = f"pillow-heif {version} (libheif {info.get('libheif', '?')})"
    return bool(decoders), bool(encoder), codec


def _pillow_codec(name: str) -> tuple[bool, bool, str]:
    from PIL import Image, features  # noqa: PLC0415

    Image.init()
    pillow_format = FORMATS[name][0]
    can_open = pillow_format in Image.OPEN
    can_save = pillow_format in Image.SAVE
    if name == "jpg":
        ok = bool(features.check("jpg"))
        if features.check("libjpeg_turbo"):
            codec = f"libjpeg-turbo {features.version('libjpeg_turbo')}"
        else:
            codec = f"libjpeg {features.version('jpg')}"
        return ok, ok, codec if ok else "libjpeg missing"
    if name == "png":
        ok = bool(features.check("zlib"))
        return ok, ok, f"zlib {features.version('zlib')}" if ok else "zlib missing"
    if name in ("webp", "avif"):
        ok = bool(features.check(name))
        return ok, ok, f"lib{name} {features.version(name)}" if ok else f"lib{name} missing"
    if name == "tiff":
        if features.check("libtiff"):
            return can_open, can_save, f"libtiff {features.version('libtiff')}"
        return can_open, can_save, "Pillow (uncompressed and simple codecs only)"
    return can_open, can_save, "Pillow"


@functools.cache
def supported_formats() -> tuple[FormatSupport, ...]:
    """Every format Dora knows, with what this server can do with it (cached)."""
    table: list[FormatSupport] = []
    for name, (pillow_format, mime) in FORMATS.items():
        read, write, codec = _heif_codec() if name == "heic" else _pillow_codec(name)
        table.append(FormatSupport(name, mime, pillow_format, read, write, codec))
    return tuple(table)


def support(name: str) -> FormatSupport | None:
    """The table row of one format (any alias), ``None`` for a name Dora does not know."""
    wanted = normalise(name)
    return next((row for row in supported_formats() if row.name == wanted), None)


def require_writable(name: str) -> FormatSupport:
    """The format's row; a 400 when this server cannot write it."""
    row = support(name)
    if row is None:
        raise BadRequest(f"cannot write format {name!r}")
    if not row.write:
        raise BadRequest(f"format {row.name} is not available on this server")
    return row


def require_readable(name: str) -> FormatSupport:
    """The format's row; a 400 when this server cannot read it."""
    row = support(name)
    if row is None:
        raise BadRequest(f"cannot read format {name!r}")
    if not row.read:
        raise BadRequest(f"format {row.name} is not available on this server")
    return row
