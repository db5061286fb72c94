"""imageMogr2: Qiniu's advanced processing, its parameters applied in URL order.

A stage is planned before any pixel is touched, then run:

1. **Plan** (sizes only, exact): consecutive ``thumbnail``, ``crop`` and
   ``gravity`` items fuse into one :class:`~.mogr_geometry.Region` — a box
   of the image resampled to a size — together with an ``auto-orient``
   that opens the run. ``rotate``, ``blur`` and ``sharpen`` are steps of
   their own. Every step's size is known here, so a bad crop or a result
   past the limits is a 400 before decoding (intermediate images stay
   within the source limits, the stage's result within the output limits).
2. **Run**: the first resampling step drafts an undecoded JPEG at the
   smallest 1/2, 1/4 or 1/8 scale still at least its output size, then
   resamples only the box it keeps, in one pass (a box filter ``reduce``
   first for large factors); a crop alone is a crop. The pending EXIF
   orientation is applied to the small result, the box having been mapped
   back to stored pixels.

Without ``auto-orient`` the geometry applies to the stored pixels, as in
Qiniu (where the EXIF orientation stays in the file and viewers apply it
last); Dora's encoder writes no EXIF and applies that orientation itself,
so the result displays the same. ``format``, ``quality``, ``interlace``,
``background``, ``strip`` and ``size-limit`` hold for the whole stage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from PIL import Image

from dora.builtin_ops.catalog_mogr import OP, Blur, SizeLimit
from dora.builtin_ops.image import decode, mogr_effects
from dora.builtin_ops.image.encode import normalise_format, output_format
from dora.builtin_ops.image.geometry import Size, exceeds, oriented_size
from dora.builtin_ops.image.mogr_effects import CLEAR, RGBA, WHITE
from dora.builtin_ops.image.mogr_geometry import (
    Crop,
    GeometryError,
    Region,
    Thumbnail,
    raw_region,
    rotated_size,
)
from dora.builtin_ops.image.picture import DEFAULT_QUALITY, EncodeOptions, Picture
from dora.builtin_ops.image.resample import REDUCING_GAP, RESAMPLE
from dora.builtin_ops.image.sizelimit import SizeLimitedOptions
from dora.config import Limits
from dora.errors import InvalidArgument
from dora.fop import Stage
from dora.schema import Quality

ALPHA_FORMATS = ("png", "gif", "webp", "tiff", "avif")  # outputs that keep transparency
_STAGE_SETTINGS = ("format", "quality", "interlace", "background", "size-limit")


@dataclasses.dataclass(frozen=True, slots=True)
class Resample:
    """Resample ``region`` of the image, then apply ``orientation`` (1: none)."""

    region: Region
    orientation: int


@dataclasses.dataclass(frozen=True, slots=True)
class Effect:
    """A pixel effect (rotate, blur, sharpen) on the whole image."""

    name: str
    transform: Callable[[Image.Image], Image.Image]


Step = Resample | Effect


@dataclasses.dataclass(slots=True)
class _Planner:
    """Follows the image's size through a stage's items, fusing geometry runs."""

    size: Size  # stored size of the image the next step sees
    orientation: int  # EXIF orientation still pending on it
    limits: Limits
    fill: RGBA  # what rotate uncovers
    gravity: str = "NorthWest"
    run: Resample | None = None
    steps: list[Step] = dataclasses.field(default_factory=list)

    def auto_orient(self) -> None:
        if self.orientation == 1 or (self.run is not None and self.run.orientation != 1):
            return
        if self.run is not None and not self.run.region.is_identity:
            self.close()  # geometry on stored pixels first, then turn the result
        upright = oriented_size(self.size, self.orientation)
        self.run = Resample(Region.whole(upright), self.orientation)

    def geometry(self, name: str, value: Thumbnail | Crop) -> None:
        run = self.run or Resample(Region.whole(self.size), 1)
        try:
            if isinstance(value, Thumbnail):
                region = run.region.thumbnail(value)
            else:
                region = run.region.crop(value, self.gravity)
        except GeometryError as exc:
            raise InvalidArgument(OP, name, str(exc)) from exc
        self._check(name, region.size)
        self.run = dataclasses.replace(run, region=region)

    def effect(
        self, name: str, transform: Callable[[Image.Image], Image.Image], size: Size | None = None
    ) -> None:
        self.close()
        size = size or self.size
        self._check(name, size)
        self.steps.append(Effect(name, transform))
        self.size = size

    def close(self) -> None:
        """End the current geometry run (a step unless it changes nothing)."""
        run, self.run = self.run, None
        if run is None:
            return
        if run.orientation != 1:
            self.orientation = 1
        elif run.region.is_identity:
            return
        self.steps.append(run)
        self.size = run.region.size

    def _check(self, name: str, size: Size) -> None:
        limits = self.limits
        if exceeds(size, limits.max_source_side, limits.max_source_pixels):
            raise InvalidArgument(
                OP,
                name,
                f"it would make a {size[0]}x{size[1]} image: images are limited to "
                f"{limits.max_source_side} px a side and {limits.max_source_pixels} pixels",
            )


def image_mogr2(picture: Picture, stage: Stage, limits: Limits) -> None:
    """Apply one ``imageMogr2`` stage to the picture."""
    settings = {name: value for name, value in stage.items if name in _STAGE_SETTINGS}
    picture.options = _options(picture.options, settings)
    picture.touched = True
    fmt = output_format(picture)
    background: RGBA | None = None
    if "background" in settings:
        background = mogr_effects.parse_colour(settings["background"])
    fill = background or (CLEAR if fmt in ALPHA_FORMATS else WHITE)
    steps = plan(stage.items, picture.image.size, picture.orientation, limits, fill)
    for step in steps:
        if isinstance(step, Resample):
            resample(picture, step)
        else:
            decode.decode(picture)
            picture.apply(_on_resampleable(step.transform))
    if background is not None and fmt not in ALPHA_FORMATS and picture.image.has_transparency_data:
        decode.decode(picture)
        colour = background
        picture.apply(lambda image: mogr_effects.flatten(image, colour))
    if any(name == "strip" for name, _ in stage.items):
        picture.icc_profile = None


def plan(
    items: Sequence[tuple[str, Any]],
    size: Size,
    orientation: int,
    limits: Limits,
    fill: RGBA = WHITE,
) -> list[Step]:
    """The steps of a stage's ``items`` on an image stored at ``size`` with the EXIF
    ``orientation`` still to apply; every size is checked, no pixel is touched."""
    planner = _Planner(size, orientation, limits, fill)
    for name, value in items:
        if name == "auto-orient":
            planner.auto_orient()
        elif name == "gravity":
            planner.gravity = value
        elif name in ("thumbnail", "crop"):
            planner.geometry(name, value)
        elif name == "rotate":
            planner.close()
            planner.effect(name, _rotator(value, fill), rotated_size(planner.size, value))
        elif name == "blur":
            planner.effect(name, _blurrer(value))
        elif name == "sharpen":
            planner.effect(name, _sharpener(value))
    planner.close()
    width, height = oriented_size(planner.size, planner.orientation)
    sized = [name for name, _ in items if name in _SIZED]
    if sized and exceeds((width, height), limits.max_output_side, limits.max_output_pixels):
        raise InvalidArgument(
            OP,
            sized[-1],
            f"the result would be {width}x{height}: outputs are limited to "
            f"{limits.max_output_side} px a side and {limits.max_output_pixels} pixels",
        )
    return planner.steps


_SIZED = ("thumbnail", "crop", "rotate")


def _rotator(degrees: int, fill: RGBA) -> Callable[[Image.Image], Image.Image]:
    return lambda image: mogr_effects.rotate(image, degrees, fill)


def _blurrer(blur: Blur) -> Callable[[Image.Image], Image.Image]:
    return lambda image: mogr_effects.blur(image, blur.radius, blur.sigma)


def _sharpener(amount: int) -> Callable[[Image.Image], Image.Image]:
    return lambda image: mogr_effects.sharpen(image, amount)


def _on_resampleable(
    transform: Callable[[Image.Image], Image.Image],
) -> Callable[[Image.Image], Image.Image]:
    return lambda image: transform(decode.resampleable(image))


def resample(picture: Picture, step: Resample) -> None:
    """Run one fused geometry step: draft, decode, one resample of the box, orient."""
    region, orientation = step.region, step.orientation
    box = raw_region(region.box, region.frame, orientation)
    out = oriented_size(region.size, orientation)
    divisor = 1
    if not picture.decoded:
        stored = picture.image.size
        box_w, box_h = box[2] - box[0], box[3] - box[1]
        target = (
            math.ceil(stored[0] * out[0] / box_w),
            math.ceil(stored[1] * out[1] / box_h),
        )
        divisor = decode.draft(picture, target)
    decode.decode(picture)
    scaled = (box[0] / divisor, box[1] / divisor, box[2] / divisor, box[3] / divisor)
    width, height = picture.image.size
    left, top = float(scaled[0]), float(scaled[1])
    right, bottom = min(float(width), float(scaled[2])), min(float(height), float(scaled[3]))
    whole = region.is_identity and divisor == 1  # only the orientation to apply
    exact = all(Fraction(value).denominator == 1 for value in scaled)
    crop_only = exact and out == (int(right - left), int(bottom - top))
    transpose = decode.transpose_for(orientation)

    def transform(image: Image.Image) -> Image.Image:
        if whole:
            result = image
        elif crop_only:
            result = image.crop((int(left), int(top), int(right), int(bottom)))
        else:
            sixteen_bit = image.mode.startswith("I;16")  # resampled as 32-bit, kept 16-bit
            source = image.convert("I") if sixteen_bit else decode.resampleable(image)
            result = source.resize(
                out, RESAMPLE, box=(left, top, right, bottom), reducing_gap=REDUCING_GAP
            )
            if sixteen_bit:
                result = result.convert("I;16")
        return result.transpose(transpose) if transpose is not None else result

    picture.apply(transform)
    if orientation != 1:
        picture.orientation = 1


def _options(previous: EncodeOptions, settings: dict[str, Any]) -> EncodeOptions:
    """This stage's output settings: the format carries over from earlier stages (it is
    this stage's input format); quality, interlace and size-limit are the stage's own."""
    quality: Quality | None = settings.get("quality")
    fmt: str | None = settings.get("format")
    base = EncodeOptions(
        format=normalise_format(fmt) if fmt is not None else previous.format,
        quality=quality.value if quality is not None else DEFAULT_QUALITY,
        quality_forced=quality.forced if quality is not None else False,
        interlace=bool(settings.get("interlace", False)),
    )
    limit: SizeLimit | None = settings.get("size-limit")
    if limit is None:
        return base
    return SizeLimitedOptions(
        **dataclasses.asdict(base),
        max_bytes=limit.max_bytes or 0,
        keep_smaller=limit.keep_smaller,
    )
