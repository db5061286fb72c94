"""The working state of one fused image chain.

A chain decodes its source once, lets every image op change the picture in
turn, and encodes once at the end. :class:`Picture` is what passes between
them: the Pillow image (still undecoded until an op needs pixels, so that a
JPEG can be decoded straight at 1/2, 1/4 or 1/8 of its size), the EXIF
orientation still to apply, facts about the source, and the output settings
that ops such as ``imageView2/.../format/png/q/80`` accumulate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from PIL import Image

from dora.builtin_ops.image.geometry import Size, oriented_size

DEFAULT_QUALITY = 75


@dataclasses.dataclass(frozen=True, slots=True)
class EncodeOptions:
    """How the chain's result will be written."""

    format: str | None = None  # "jpg", "png", ...; None keeps the source's format
    quality: int = DEFAULT_QUALITY
    quality_forced: bool = False  # ``q/80!``
    interlace: bool = False  # progressive JPEG


@dataclasses.dataclass(slots=True)
class Picture:
    """One image on its way through a chain (mutable: ops update it in place)."""

    image: Image.Image
    source: bytes  # the encoded input, kept for ops that read its bytes (imageInfo)
    source_format: str  # lower-case: "jpeg", "png", "gif", "webp", ... (MPO is "jpeg")
    orientation: int = 1  # EXIF orientation not yet applied to ``image`` (1: none)
    decoded: bool = False  # False: pixels not loaded yet, a JPEG may still be drafted
    icc_profile: bytes | None = None
    options: EncodeOptions = dataclasses.field(default_factory=EncodeOptions)
    touched: bool = False  # an op changed the pixels or the output settings

    @property
    def source_size(self) -> int:
        """The encoded input's size in bytes."""
        return len(self.source)

    @property
    def size(self) -> Size:
        """The displayed size: the stored size with the EXIF orientation applied."""
        return oriented_size(self.image.size, self.orientation)

    def apply(self, transform: Callable[[Image.Image], Image.Image]) -> None:
        """Change the pixels with ``transform``: every pixel op goes through here,
        so that a multi-frame picture (an animation) changes every frame alike."""
        self.image = transform(self.image)
        self.touched = True
