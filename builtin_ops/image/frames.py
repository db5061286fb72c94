"""Counting the frames of an animation, with a bound on the work.

Pillow counts GIF frames by walking the whole file, a few microseconds a
frame: a 20 MB GIF of tiny frames is over a million of them. Here a GIF is
walked block by block and the walk stops as soon as the count passes the
limit. Other formats (WebP, APNG, AVIF) declare their frame count in a
header that Pillow reads for free.
"""

from __future__ import annotations

import struct

from PIL import Image

from dora.errors import BadRequest

# Frames counted when a source opens: beyond, even imageInfo refuses it. How
# many frames an op may decode is Limits.max_frames, checked when they are.
MAX_COUNTED_FRAMES = 10_000

# What a broken file makes Pillow's plugins and decoders raise.
# (RuntimeError: the AVIF and HEIF decoders report damaged data with it.)
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    TypeError,
    RuntimeError,
)

_EXTENSION, _IMAGE, _TRAILER = 0x21, 0x2C, 0x3B


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """Skip a chain of GIF data sub-blocks; the position after its terminator."""
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos
    return size


def count_gif_frames(data: bytes, limit: int) -> int:
    """The number of images in a GIF, stopping with a 400 past ``limit``.

    A truncated or damaged file counts the frames before the damage, as
    Pillow does.
    """
    if len(data) < 13 or not data.startswith((b"GIF87a", b"GIF89a")):
        raise BadRequest("not a GIF")
    flags = data[10]
    pos = 13 + (3 << ((flags & 0x07) + 1) if flags & 0x80 else 0)
    frames = 0
    size = len(data)
    while pos < size:
        block = data[pos]
        if block == _IMAGE:
            if pos + 10 > size:
                break
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 0x07) + 1) if local & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
            frames += 1
            if frames > limit:
                raise BadRequest(f"animation has more than {limit} frames")
        elif block == _EXTENSION:
            pos = _skip_sub_blocks(data, pos + 2)  # after the label
        else:  # the trailer, or damage
            break
    return max(frames, 1)


def count_frames(image: Image.Image, data: bytes, limit: int) -> int:
    """The frames of an opened image (1 for a still), a 400 past ``limit``."""
    if image.format == "GIF":
        return count_gif_frames(data, limit)
    if image.format == "MPO":
        return 1  # a camera JPEG with a preview picture, not an animation
    count = int(getattr(image, "n_frames", 1) or 1)
    if count > limit:
        raise BadRequest(f"animation has {count} frames: the limit is {limit}")
    return count
