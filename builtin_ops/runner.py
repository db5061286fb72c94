"""Run a fused chain of builtin ops on one source: decode once, apply, encode once.

:func:`run_chain` is what a worker calls (in a thread: it is synchronous and
CPU-bound). The image ops of the chain change one :class:`Picture` in turn
and the result is encoded once at the end; an info op (``imageInfo``) ends
the chain with JSON about its input — the source, or the previous ops'
encoded output. Only :class:`~dora.errors.DoraError` escapes::

    source larger than max_source_bytes                   PayloadTooLarge (413)
    not an image, corrupt, truncated, unsupported         BadRequest (400)
    declared size past the source limits (a "bomb")       BadRequest (400), from the header
    result past the output limits                         BadRequest (400)
    anything unexpected in an op (a bug, out of memory)   ProcessingFailed (599)

With ``ignore-error/1`` on any stage, a 400 or 599 answers the original
source instead, as Qiniu does.

Implementations are registered here, by name, next to their specs in
:mod:`dora.builtin_ops.catalog`: :data:`IMAGE_OPS` change the picture,
:data:`INFO_OPS` describe it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image.average import image_ave
from dora.builtin_ops.image.decode import open_picture, sniff_mime
from dora.builtin_ops.image.encode import encode
from dora.builtin_ops.image.exif import exif
from dora.builtin_ops.image.info import image_info
from dora.builtin_ops.image.mogr import image_mogr2
from dora.builtin_ops.image.picture import Picture
from dora.builtin_ops.image.roundpic import round_pic
from dora.builtin_ops.image.view import image_view2
from dora.builtin_ops.image.watermark import watermark
from dora.config import Limits
from dora.errors import BadRequest, DoraError, PayloadTooLarge, ProcessingFailed
from dora.fop import MAX_FOP_CHARS, MAX_STAGES, Stage, parse_stage
from dora.ops import Output
from dora.resources import ResourceResolver

ImageOp = Callable[[Picture, Stage, Limits], None]
InfoOp = Callable[[Picture, Stage, Limits], Mapping[str, Any]]
# An image op that also reads resources (a watermark's mark image).
ResourceOp = Callable[[Picture, Stage, Limits, ResourceResolver | None], None]

IMAGE_OPS: Mapping[str, ImageOp] = MappingProxyType(
    {
        "imageView2": image_view2,
        "imageMogr2": image_mogr2,
        "watermark": watermark,  # also in RESOURCE_OPS, which the chain prefers
        "roundPic": round_pic,
    }
)
INFO_OPS: Mapping[str, InfoOp] = MappingProxyType(
    {
        "imageInfo": image_info,
        "exif": exif,
        "imageAve": image_ave,
    }
)
RESOURCE_OPS: Mapping[str, ResourceOp] = MappingProxyType({"watermark": watermark})

JSON_MIME = "application/json"

_P = ParamSpec("_P")
_T = TypeVar("_T")


def parse_wire_stages(wire: Sequence[Sequence[str]]) -> list[Stage]:
    """Re-parse the RPC wire form ``[[op, argtext], ...]`` against the builtin catalog."""
    if not isinstance(wire, (list, tuple)) or not wire:
        raise BadRequest("expected a non-empty list of [op, argtext] stages")
    if len(wire) > MAX_STAGES:
        raise BadRequest(f"more than {MAX_STAGES} stages in one chain")
    stages: list[Stage] = []
    for item in wire:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not all(isinstance(part, str) for part in item)
        ):
            raise BadRequest("a stage on the wire is a pair [op, argtext] of strings")
        op, argtext = item
        text = f"{op}/{argtext}" if argtext else op
        if len(text) > MAX_FOP_CHARS:
            raise BadRequest(f"fop longer than {MAX_FOP_CHARS} characters")
        stage = parse_stage(text, BUILTIN_CATALOG)
        if stage.op != op:
            raise BadRequest(f"malformed op name {op!r}")
        stages.append(stage)
    return stages


def run_chain(
    stages: Sequence[Stage],
    src: bytes,
    limits: Limits,
    *,
    resources: ResourceResolver | None = None,
) -> Output:
    """Run ``stages`` (builtin image and info ops) on the image ``src``.

    ``resources`` reads what ops name by URL (watermark images); without it
    such ops answer 400.
    """
    if not stages:
        raise BadRequest("no op to run")
    try:
        return _run(stages, src, limits, resources)
    except PayloadTooLarge:
        raise
    except (BadRequest, ProcessingFailed):
        if any(stage.get("ignore-error") for stage in stages):
            return Output(mime=sniff_mime(src), body=src, meta={"original": True})
        raise


def _run(
    stages: Sequence[Stage], src: bytes, limits: Limits, resources: ResourceResolver | None
) -> Output:
    picture = _guarded("decode", open_picture, src, limits)
    last = len(stages) - 1
    for index, stage in enumerate(stages):
        image_op = IMAGE_OPS.get(stage.op)
        info_op = INFO_OPS.get(stage.op)
        resource_op = RESOURCE_OPS.get(stage.op)
        if resource_op is not None:
            _guarded(stage.op, resource_op, picture, stage, limits, resources)
        elif image_op is not None:
            _guarded(stage.op, image_op, picture, stage, limits)
        elif info_op is not None:
            if index != last:
                raise BadRequest(f"{stage.op} answers JSON: it must be the last op of a chain")
            if picture.touched:
                picture = _guarded(stage.op, _reopen_output, picture, limits)
            info = _guarded(stage.op, info_op, picture, stage, limits)
            body = json.dumps(info, ensure_ascii=False, separators=(",", ":")).encode()
            return Output(mime=JSON_MIME, body=body)
        else:
            raise BadRequest(f"{stage.op} cannot run in a builtin image chain")
    return _guarded("encode", encode, picture, limits)


def _reopen_output(picture: Picture, limits: Limits) -> Picture:
    """Encode what the previous ops made and open that: info ops describe their input."""
    output = encode(picture, limits)
    assert output.body is not None
    size_limits = dataclasses.replace(
        limits, max_source_bytes=max(limits.max_source_bytes, len(output.body))
    )
    return open_picture(output.body, size_limits)


def _guarded(step: str, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call ``func``; anything but a DoraError becomes a 599 naming the step."""
    try:
        return func(*args, **kwargs)
    except DoraError:
        raise
    except MemoryError as exc:
        raise ProcessingFailed(f"{step}: out of memory") from exc
    except RecursionError as exc:
        raise ProcessingFailed(f"{step}: input too deeply nested") from exc
    except Exception as exc:
        raise ProcessingFailed(f"{step}: {type(exc).__name__}: {exc}") from exc
