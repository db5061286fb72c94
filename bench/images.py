"""Deterministic, photo-like test images for benchmarks and tests.

A flat or purely random image compresses nothing like a photograph: flat
colour makes JPEG decode and encode unrealistically cheap, white noise makes
them unrealistically expensive. :func:`make_photo_jpeg` layers what a photo
has: smooth colour fields (sky, walls, light falloff), objects with edges at
many scales (softened by optics) and fine sensor noise, then encodes at the
quality a camera or a CMS would use. The same ``(width, height, seed)`` gives
the same bytes for a given Pillow/libjpeg build.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter

_FIELD_CELLS = 6  # smooth colour fields across the long side
_OBJECTS = 160  # shapes of every size, largest first
_NOISE_WEIGHT = 0.05  # sensor noise, as a blend weight of uniform noise


def _smooth_field(rng: random.Random, width: int, height: int) -> Image.Image:
    long_side = max(width, height)
    cells = (
        max(2, round(_FIELD_CELLS * width / long_side)),
        max(2, round(_FIELD_CELLS * height / long_side)),
    )
    seed_pixels = Image.frombytes("RGB", cells, rng.randbytes(cells[0] * cells[1] * 3))
    return seed_pixels.resize((width, height), Image.Resampling.BICUBIC)


def _draw_objects(rng: random.Random, image: Image.Image) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    long_side = max(width, height)
    for index in range(_OBJECTS):
        # sizes fall from a third of the frame to a few pixels: edges at every scale
        size = max(2, int(long_side / 3 * (1 - index / _OBJECTS) ** 2))
        x = rng.randrange(-size // 2, width)
        y = rng.randrange(-size // 2, height)
        box = (x, y, x + rng.randrange(size // 2, size + 1), y + rng.randrange(size // 2, size + 1))
        tone = rng.randrange(40, 220)
        colour = tuple(max(0, min(255, tone + rng.randrange(-50, 51))) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)


def make_photo_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image that compresses and resamples like a photograph."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    rng = random.Random(seed)
    field = _smooth_field(rng, width, height)
    objects = field.copy()
    _draw_objects(rng, objects)
    radius = max(0.8, max(width, height) / 1500)  # lens softness
    image = Image.blend(field, objects.filter(ImageFilter.GaussianBlur(radius)), 0.7)
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    return Image.blend(image, noise, _NOISE_WEIGHT)


def make_photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A photo-like baseline JPEG (4:2:0) of ``width`` × ``height``."""
    buf = io.BytesIO()
    make_photo_image(width, height, seed).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
