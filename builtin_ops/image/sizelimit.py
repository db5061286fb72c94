"""``imageMogr2/.../size-limit/<n>[k|m][!]``: an encoded result of at most n bytes.

Qiniu re-encodes a JPEG at lower qualities until it fits, and with ``!``
answers the original instead when the result is not smaller than it (so
that a processed image is never larger than its source). Here the quality
is searched by bisection between the chain's quality and 1: at most
``1 + ceil(log2(quality))`` encodes, 8 for the default 75. When even
quality 1 does not fit, the smallest result is returned: the limit is a
target, not a promise (as Qiniu says too). Only the lossy formats with a
quality (JPEG, WebP) are searched; any format may answer its original
with ``!``. The original, in a fused chain, is the chain's source.

The op records the limit on the picture with :class:`SizeLimitedOptions`;
the chain's single encode (:func:`~.encode.encode`) hands a picture that
carries one to :func:`encode_limited`.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any

from PIL import Image

from dora.builtin_ops.image.decode import sniff_mime
from dora.builtin_ops.image.picture import EncodeOptions, Picture
from dora.ops import Output

SEARCHED_FORMATS = ("jpg", "webp")
MIN_QUALITY = 1


@dataclasses.dataclass(frozen=True, slots=True)
class SizeLimitedOptions(EncodeOptions):
    """Encode options with a size limit (``max_bytes`` 0: the source's own size)."""

    max_bytes: int = 0
    keep_smaller: bool = False


def smallest_fitting(write: Callable[[int], bytes], quality: int, max_bytes: int) -> bytes:
    """The output at the highest quality ≤ ``quality`` that fits in ``max_bytes``
    (the smallest one tried when none fits)."""
    body = write(quality)
    if len(body) <= max_bytes:
        return body
    smallest = body
    fitting: bytes | None = None
    low, high = MIN_QUALITY, quality - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = write(middle)
        if len(candidate) <= max_bytes:
            fitting, low = candidate, middle + 1
        else:
            high = middle - 1
            if len(candidate) < len(smallest):
                smallest = candidate
    return fitting if fitting is not None else smallest


def encode_limited(
    picture: Picture,
    image: Image.Image,
    *,
    fmt: str,
    pil_format: str,
    mime: str,
    save_options: dict[str, Any],
) -> Output:
    """Write ``image`` within the picture's size limit (see the module docstring)."""
    options = picture.options
    assert isinstance(options, SizeLimitedOptions)
    max_bytes = options.max_bytes or picture.source_size

    def write(quality: int) -> bytes:
        buf = io.BytesIO()
        image.save(buf, pil_format, **{**save_options, "quality": quality})
        return buf.getvalue()

    if fmt in SEARCHED_FORMATS:
        # from the quality the encoder would use (the effective one, see .quality)
        start = int(save_options.get("quality", options.quality))
        body = smallest_fitting(write, start, max_bytes)
    else:
        buf = io.BytesIO()
        image.save(buf, pil_format, **save_options)
        body = buf.getvalue()
    if options.keep_smaller and len(body) >= picture.source_size:
        return Output(mime=sniff_mime(picture.source), body=picture.source, meta={"original": True})
    return Output(
        mime=mime, body=body, meta={"format": fmt, "width": image.size[0], "height": image.size[1]}
    )
