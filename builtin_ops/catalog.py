"""The argument schemas of Dora's builtin ops: one table, nothing imported to run them.

The gateway validates processing URLs against :data:`BUILTIN_CATALOG` and so
imports this module; it must stay free of Pillow (and of ffmpeg wrappers).
The implementations live in :mod:`dora.builtin_ops.runner`'s tables. A new
op (imageMogr2, watermark, exif, imageAve, roundPic, avinfo, vframe, ...)
slots in with a spec here, in :data:`SPECS`, and its implementation there;
a test checks that every spec has one.

Shared parameter types (:data:`IMAGE_FORMAT`, :data:`QUALITY`, ...) are
defined once so that ops taking the same parameter accept the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dora.builtin_ops.av.specs import AV_SPECS
from dora.builtin_ops.catalog_marks import MARK_SPECS
from dora.builtin_ops.catalog_mogr import IMAGE_MOGR2
from dora.schema import BoolParam, EnumParam, IntParam, OpSpec, QualityParam

# Formats an image op can write (``jpeg`` is accepted as ``jpg``; avif and heic only
# where the codec is present, which the worker checks when it encodes).
IMAGE_FORMAT = EnumParam(("jpg", "jpeg", "png", "gif", "webp", "bmp", "tiff", "avif", "heic"))
QUALITY = QualityParam()  # 1-100, "!" forces it
INTERLACE = BoolParam()  # 1: progressive JPEG
IGNORE_ERROR = BoolParam()  # 1: answer the original instead of an error
# A bound on a side. Larger than any output may be (9999 px) on purpose: in
# the "at most" modes a large bound only means "no limit"; the size of the
# result is checked against the output limits when it is known.
SIDE = IntParam(1, 30000)

IMAGE_VIEW2 = OpSpec(
    name="imageView2",
    kind="image",
    positional=("mode", IntParam(0, 5)),
    params=MappingProxyType(
        {
            "w": SIDE,
            "h": SIDE,
            "format": IMAGE_FORMAT,
            "q": QUALITY,
            "interlace": INTERLACE,
            "ignore-error": IGNORE_ERROR,
        }
    ),
    cost="cpu",
    doc=(
        "imageView2/<mode>/w/<W>/h/<H>/format/<fmt>/q/<1-100>[!]/interlace/<0|1>: "
        "thumbnails in six modes (0, 2: at most; 3, 4: at least; 1, 5: at least then "
        "centre crop), never enlarged, auto-oriented."
    ),
)

IMAGE_INFO = OpSpec(
    name="imageInfo",
    kind="info",
    cost="io",
    doc='imageInfo: {"size", "format", "width", "height", "colorModel", "orientation"?, '
    '"frameNumber"?} as JSON.',
)

SPECS: tuple[OpSpec, ...] = (IMAGE_VIEW2, IMAGE_INFO, IMAGE_MOGR2, *MARK_SPECS)

BUILTIN_CATALOG: Mapping[str, OpSpec] = MappingProxyType(
    {**{spec.name: spec for spec in SPECS}, **AV_SPECS}
)
