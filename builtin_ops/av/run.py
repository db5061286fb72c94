"""The entry point the worker calls: :func:`run_av` runs one audio/video stage.

It is synchronous (the worker calls it in a thread) and bounded: every child
process of the op shares one deadline, ``timeout`` when given, else
``limits.op_timeout`` for the ops allowed in processing URLs (``avinfo``,
``vframe``) and :data:`JOB_TIMEOUT` for the job-only ones. A set ``cancel``
event kills the running ffmpeg within :data:`~dora.builtin_ops.av.process.POLL`
seconds. ``progress`` hears 0-100 (100 once the output is complete).

Outputs: ``avinfo`` and ``vframe`` answer bytes (``Output.body``); the others
write files under ``out_dir`` and answer the main one as ``Output.path``, with
``meta["files"]`` listing every file written, relative to ``out_dir`` (for
HLS: the playlist, the segments and, without ``hlsKeyUrl``, the key;
``meta["playlist"]`` names the playlist). URLs in arguments (``wmImage``,
``avconcat``'s inputs) become local paths through ``resolve_url``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType

from dora.builtin_ops.av.concat import concat, parse_concat
from dora.builtin_ops.av.context import AvContext, ProgressSink, UrlResolver
from dora.builtin_ops.av.formats import HLS_FORMATS
from dora.builtin_ops.av.frame import vframe
from dora.builtin_ops.av.hls import hls
from dora.builtin_ops.av.probe import avinfo
from dora.builtin_ops.av.specs import AV_SPECS
from dora.builtin_ops.av.transcode import transcode
from dora.config import Limits
from dora.errors import BadRequest, ProcessingFailed
from dora.fop import Stage, parse_stage
from dora.ops import Output

# A job-only op's budget when the caller names none: long enough for a feature
# film on two cores at the fast presets, short enough that a stuck job ends.
JOB_TIMEOUT = 3600.0

Handler = Callable[[Stage, str, str, AvContext], Output]


def _avinfo(stage: Stage, src: str, out_dir: str, ctx: AvContext) -> Output:
    return avinfo(src, ctx)


def _avthumb(stage: Stage, src: str, out_dir: str, ctx: AvContext) -> Output:
    if stage.args["format"] in HLS_FORMATS:
        return hls(stage, src, out_dir, ctx)
    return transcode(stage, src, out_dir, ctx)


HANDLERS: Mapping[str, Handler] = MappingProxyType(
    {"avinfo": _avinfo, "vframe": vframe, "avthumb": _avthumb, "avconcat": concat}
)


def validate_av_stage(stage: Stage) -> None:
    """Checks the generic grammar cannot make: ``avconcat``'s raw argument text."""
    if stage.op == "avconcat":
        parse_concat(stage.argtext)


def run_av(
    stage: Stage,
    src_path: str,
    out_dir: str,
    limits: Limits,
    *,
    progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
    timeout: float | None = None,
    resolve_url: UrlResolver | None = None,
) -> Output:
    """Run one audio/video ``stage`` on the file ``src_path``, writing under ``out_dir``.

    The stage is re-validated from its text, so any :class:`Stage` whose text is
    right will do (the RPC wire carries only the text).
    """
    spec = AV_SPECS.get(stage.op)
    handler = HANDLERS.get(stage.op)
    if spec is None or handler is None:
        raise BadRequest(f"{stage.op} is not an audio/video op")
    stage = parse_stage(stage.text, AV_SPECS)
    validate_av_stage(stage)
    src_path, out_dir = os.path.abspath(src_path), os.path.abspath(out_dir)
    default = limits.op_timeout if spec.sync else JOB_TIMEOUT
    budget = timeout if timeout is not None else default
    ctx = AvContext.start(
        stage.op,
        limits,
        budget,
        cancel=cancel,
        progress=progress,
        resolve_url=resolve_url,
        scrub=((src_path, "input"), (out_dir, "output")),
    )
    if not os.path.isfile(src_path):
        raise ProcessingFailed(f"{stage.op}: the source file is missing on this worker")
    try:
        os.makedirs(out_dir, exist_ok=True)
        output = handler(stage, src_path, out_dir, ctx)
    except OSError as exc:
        raise ProcessingFailed(f"{stage.op}: {ctx.public(str(exc))}") from exc
    ctx.report(100.0)
    return output
