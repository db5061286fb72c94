"""Animations (GIF, WebP, APNG) through a chain: every frame changes alike.

A :class:`~.picture.Picture` of an animated source shows its first frame as
``picture.image``, like any still, and carries an :class:`Animation` for the
rest. Every pixel op changes the picture through ``picture.apply(fn)``; the
animation records ``fn``, and the chain's encode replays the recorded
transforms on every other frame (:meth:`Animation.render`). So frames are
decoded one at a time, only when the output keeps the animation (GIF or WebP;
JPEG, PNG and the rest get the first frame), and only the transformed frames
are held in memory.

Frames are *coalesced*: each is the full canvas as it is shown (Pillow's
seek composites a frame over the previous ones, following the source's
disposal and blending), in RGBA, in sRGB. That is what makes a resize, a
crop or a watermark work on every frame the same way. When written back,
each frame's duration and the loop count are kept; a GIF frame's disposal is
chosen so the coalesced frames show as the source did ("restore to
background" only where a pixel turns transparent, else "leave in place",
which lets the GIF writer store just the changed rectangle).

Bounds, checked before the first frame after the first is decoded: at most
``Limits.max_frames`` frames, and at most ``Limits.max_source_pixels`` pixels
over all frames, decoded or rendered; either breach is a 400.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageChops

from dora.builtin_ops.image import colour
from dora.builtin_ops.image.frames import DECODE_ERRORS
from dora.config import Limits
from dora.errors import BadRequest

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Image.Image]

ANIMATED_SOURCES = ("gif", "webp", "png", "avif")
ANIMATED_OUTPUTS = ("gif", "webp")
_KEEP, _CLEAR = 1, 2  # GIF disposal methods: leave the frame in place, restore to background


class FrameDamaged(Exception):
    """A frame after the first cannot be shown as part of the animation."""


@dataclasses.dataclass(slots=True)
class Rendered:
    """Every frame of an animation after the chain's transforms, ready to write."""

    frames: list[Image.Image]
    durations: list[int]  # milliseconds, one per frame
    loop: int | None  # 0: forever; n: n times; None: once (no loop extension)


@dataclasses.dataclass(slots=True)
class Animation:
    """The frames of an animated source beyond the one ``Picture.image`` shows."""

    source: Image.Image  # the opened, seekable source
    count: int  # frames, as the header declares (bounded when counted)
    icc_profile: bytes | None = None  # the source's profile, each frame converts from it
    output_icc: bytes | None = None  # the profile of the converted frames
    loop: int | None = None
    transforms: list[Transform] = dataclasses.field(default_factory=list)
    head: Image.Image | None = None  # what the transforms made of frame 0
    first_duration: int = 0
    canvas: tuple[int, int] | None = None  # the size every frame must have

    def frame(self, index: int) -> Image.Image:
        """Frame ``index`` as shown (coalesced), RGBA, sRGB; before any transform."""
        if self.canvas is None:
            self.canvas = self.source.size
        self.source.seek(index)
        if self.source.size != self.canvas:
            # a GIF frame reaching past the canvas grows Pillow's canvas: damage
            raise FrameDamaged(f"frame {index} is {self.source.size}, not {self.canvas}")
        image = self.source.convert("RGBA")
        if index == 0:
            self.first_duration = _duration(self.source.info)
        image, self.output_icc = colour.to_srgb(image, self.icc_profile)
        return image

    def first_frame(self) -> Image.Image:
        """Frame 0, the picture's image until the first transform."""
        self.head = self.frame(0)
        return self.head

    def record(self, transform: Transform, result: Image.Image) -> None:
        """Remember a transform ``Picture.apply`` made on frame 0 (its ``result``)."""
        self.transforms.append(transform)
        self.head = result

    def replayable(self, image: Image.Image) -> bool:
        """True when ``image`` (the picture's) came from frame 0 through the recorded transforms
        only: an op that set ``picture.image`` directly cannot be replayed on other frames."""
        return image is self.head

    def render(self, first: Image.Image, limits: Limits) -> Rendered | None:
        """Every frame transformed; ``first`` is frame 0's result.

        None when the frames do not come out alike (a transform whose result
        depends on the frame's content changed their sizes): the caller then
        writes the first frame alone. A frame that fails to decode ends the
        animation there, as browsers show a damaged GIF.
        """
        self.check(first.size, limits)
        frames, durations = [first], [self.first_duration]
        for index in range(1, self.count):
            try:
                image = self.frame(index)
            except EOFError:
                break
            except (FrameDamaged, Image.DecompressionBombError, *DECODE_ERRORS) as exc:
                log.info("animation frame %d does not decode (%s): stopping there", index, exc)
                break
            duration = _duration(self.source.info)
            for transform in self.transforms:
                image = transform(image)
            if image.size != first.size:
                log.warning("animation frames came out of different sizes: writing a still")
                return None
            frames.append(image)
            durations.append(duration)
        return Rendered(frames, durations, self.loop)

    def check(self, output_size: tuple[int, int], limits: Limits) -> None:
        """Refuse an animation beyond the frame or total-pixel limits (a 400)."""
        if self.count > limits.max_frames:
            raise BadRequest(f"animation has {self.count} frames: the limit is {limits.max_frames}")
        width, height = self.source.size
        for what, (w, h) in (("source", (width, height)), ("result", output_size)):
            total = self.count * w * h
            if total > limits.max_source_pixels:
                raise BadRequest(
                    f"animation {what} is {self.count} frames of {w}x{h}, {total} pixels: "
                    f"the limit is {limits.max_source_pixels} pixels over all frames"
                )


def _duration(info: dict[str | tuple[int, int], Any]) -> int:
    value = info.get("duration", 0)
    return max(0, round(value)) if isinstance(value, (int, float)) else 0


def source_loop(image: Image.Image) -> int | None:
    """The loop count an opened animation declares (None: play once)."""
    value = image.info.get("loop")
    return int(value) if isinstance(value, int) else None


def gif_disposals(frames: list[Image.Image]) -> list[int]:
    """Disposal methods that show full-canvas frames as they are: "restore to background"
    after a frame only where the next one is transparent where it was not."""
    disposals = []
    for current, following in itertools.pairwise(frames):
        lost = ImageChops.subtract(current.getchannel("A"), following.getchannel("A"))
        disposals.append(_CLEAR if lost.getbbox() is not None else _KEEP)
    disposals.append(_KEEP)
    return disposals


def _same(a: Image.Image, b: Image.Image) -> bool:
    if a.mode != b.mode or a.size != b.size:
        return False
    if a.mode == "P":  # equal indices mean nothing under different palettes
        a, b = a.convert("RGBA"), b.convert("RGBA")
    return ImageChops.difference(a, b).getbbox(alpha_only=False) is None


def merge_repeats(rendered: Rendered) -> Rendered:
    """Consecutive equal frames as one frame shown for their summed durations."""
    frames, durations = [rendered.frames[0]], [rendered.durations[0]]
    for frame, duration in zip(rendered.frames[1:], rendered.durations[1:], strict=True):
        if _same(frame, frames[-1]):
            durations[-1] += duration
        else:
            frames.append(frame)
            durations.append(duration)
    return Rendered(frames, durations, rendered.loop)


def save_animation(rendered: Rendered, fmt: str, quality: int) -> bytes:
    """Write rendered frames as an animated GIF or WebP."""
    rendered = merge_repeats(rendered)
    frames = rendered.frames
    buf = io.BytesIO()
    options: dict[str, Any] = {
        "save_all": True,
        "append_images": frames[1:],
        "duration": rendered.durations,
    }
    if fmt == "gif":
        if rendered.loop is not None:
            options["loop"] = rendered.loop
        try:
            frames[0].save(buf, "GIF", disposal=gif_disposals(frames), optimize=False, **options)
        except TypeError:
            # Pillow merges frames that are equal once quantised; when one
            # frame is left, its still writer chokes on the per-frame lists.
            buf = io.BytesIO()
            frames[0].save(buf, "GIF", optimize=False)
    elif fmt == "webp":
        # WebP has no "play once" marker but a count: a GIF without a loop
        # extension plays once.
        loop = 1 if rendered.loop is None else rendered.loop
        frames[0].save(buf, "WEBP", loop=loop, quality=quality, method=4, **options)
    else:
        raise ValueError(f"{fmt} is not an animated output format")
    return buf.getvalue()
