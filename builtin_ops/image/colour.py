"""Colour management: every picture's pixels are sRGB once decoded.

A thumbnail viewed in a browser is assumed to be sRGB unless it says
otherwise, and many viewers ignore what it says. So the decoder turns every
source into sRGB pixels, once, right after decoding (and after a JPEG's DCT
scaling, so the work is on the smallest image that will do):

=======================================  ===================================  ===============
source                                   pixels                               output profile
=======================================  ===================================  ===============
CMYK with an embedded CMYK profile       the profile → sRGB (LittleCMS)       sRGB
CMYK without one                         the usual naive formula              none
                                         ``R = (1 - C)(1 - K)``, as browsers
                                         and ImageMagick show such files
RGB with a non-sRGB profile (Display     the profile → sRGB                   sRGB
P3, Adobe RGB, ProPhoto)
RGB with an sRGB profile                 unchanged                            kept as it came
grey with a grey profile                 unchanged (grey stays grey)          kept
no profile                               unchanged                            none
a broken or mismatched profile           treated as absent                    none
=======================================  ===================================  ===============

The perceptual intent is used (the default intent of CMYK profiles, and the
same as relative colorimetric for the matrix profiles of RGB spaces).
Transforms are built once per (profile, mode) and shared between threads
(built without LittleCMS's one-pixel cache, the part that is not thread-safe).
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageCms

# Image modes grouped by the ICC colour space (header bytes 16-20) that describes them.
_RGB_MODES = ("RGB", "RGBA", "P", "PA", "RGBX", "RGBa")
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_SPACES = {b"RGB ": "rgb", b"CMYK": "cmyk", b"GRAY": "grey"}
_INTENT = ImageCms.Intent.PERCEPTUAL
_TRANSFORM_CACHE = 32


@functools.cache
def srgb_profile() -> bytes:
    """The compact sRGB profile (LittleCMS's built-in one) that converted outputs carry."""
    data: bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return data


def colour_space(profile: bytes) -> str | None:
    """``"rgb"``, ``"cmyk"`` or ``"grey"`` from an ICC header; ``None`` for anything else."""
    return _SPACES.get(profile[16:20]) if len(profile) >= 128 else None


def _mode_space(mode: str) -> str | None:
    if mode in _RGB_MODES:
        return "rgb"
    if mode == "CMYK":
        return "cmyk"
    if mode in _GREY_MODES:
        return "grey"
    return None


@functools.lru_cache(maxsize=_TRANSFORM_CACHE)
def _parsed(profile: bytes) -> ImageCms.ImageCmsProfile | None:
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


@functools.lru_cache(maxsize=_TRANSFORM_CACHE)
def is_srgb(profile: bytes) -> bool:
    """True for an RGB profile that says it is sRGB (then the pixels need no change)."""
    parsed = _parsed(profile)
    if parsed is None or colour_space(profile) != "rgb":
        return False
    try:
        description = ImageCms.getProfileDescription(parsed)
    except ImageCms.PyCMSError:
        return False
    return "srgb" in description.lower().replace(" ", "")


@functools.lru_cache(maxsize=_TRANSFORM_CACHE)
def _transform(profile: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
    parsed = _parsed(profile)
    if parsed is None:
        return None
    try:
        return ImageCms.buildTransform(
            parsed,
            ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")),
            in_mode,
            out_mode,
            renderingIntent=_INTENT,
            flags=ImageCms.Flags.NOCACHE,
        )
    except ImageCms.PyCMSError:
        return None  # a profile LittleCMS cannot use: treated as absent


def usable_profile(profile: bytes | None, mode: str) -> bytes | None:
    """The profile if it describes pixels of ``mode`` and LittleCMS can read it, else None."""
    if not profile or colour_space(profile) != _mode_space(mode):
        return None
    return profile if _parsed(profile) is not None else None


def to_srgb(image: Image.Image, profile: bytes | None) -> tuple[Image.Image, bytes | None]:
    """The decoded ``image`` as sRGB pixels, and the ICC profile the result should carry.

    ``profile`` is the source's embedded ICC profile (or None). Grey images
    stay grey; alpha is kept; palette images with an RGB profile become RGB(A).
    """
    profile = usable_profile(profile, image.mode)
    if image.mode == "CMYK":
        converted = _apply(profile, image, "RGB") if profile is not None else None
        return (
            (converted, srgb_profile()) if converted is not None else (image.convert("RGB"), None)
        )
    if profile is None:
        return image, None
    if colour_space(profile) != "rgb" or is_srgb(profile):
        return image, profile  # grey with a grey profile, or already sRGB
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    converted = _apply(profile, image, image.mode)
    return (converted, srgb_profile()) if converted is not None else (image, None)


def _apply(profile: bytes, image: Image.Image, out_mode: str) -> Image.Image | None:
    """``image`` through the profile → sRGB transform; None when LittleCMS refuses."""
    transform = _transform(profile, image.mode, out_mode)
    if transform is None:
        return None
    try:
        return transform.apply(image)
    except (ImageCms.PyCMSError, ValueError, OSError):
        return None
