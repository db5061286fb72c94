"""The working state of one fused image chain.

A chain decodes its source once, lets every image op change the picture in
turn, and encodes once at the end. :class:`Picture` is what passes between
them: the Pillow image (still undecoded until an op needs pixels, so that a
JPEG can be decoded straight at 1/2, 1/4 or 1/8 of its size), the EXIF
orientation still to apply, facts about the source, and the output settings
that ops such as ``imageView2/.../format/png/q/80`` accumulate.

An animated source (GIF, WebP, APNG) shows its first frame as ``image`` and
carries the other frames in ``animation``: ops change pixels only through
:meth:`Picture.apply`, which records each transform for the other frames
(see :mod:`~.animation`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from PIL import Image

from dora.builtin_ops.image.animation import Animation
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
    animation: Animation | None = None  # the other frames of an animated source
    source_quality: int | None = None  # a JPEG source's estimated quality (1-100)
    source_dimensions: Size | None = None  # the source's stored size, before any draft

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
        so that a multi-frame picture (an animation) changes every frame alike.

        The picture is decoded first (as sRGB, see :mod:`~.colour`) if no op
        has decoded it yet. ``transform`` must depend on its input image only:
        it runs again, later, on each other frame of an animation.
        """
        if not self.decoded:
            # decode imports this module, so it is looked up at call time
            importlib.import_module("dora.builtin_ops.image.decode").decode(self)
        self.image = transform(self.image)
        if self.animation is not None:
            self.animation.record(transform, self.image)
        self.touched = True

    @property
    def animated(self) -> bool:
        """True when the source has more than one frame."""
        return self.animation is not None and self.animation.count > 1
