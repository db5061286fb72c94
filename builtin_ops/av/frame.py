"""``vframe``: one frame of a video as a JPEG or PNG image.

``offset`` seeks before opening the input (fast: from the nearest keyframe,
then decoding up to the exact time). An offset at or past the end is a 400;
an offset inside the last frame's span, where the seek finds nothing left to
decode, answers the last frame. The picture is shown as a player shows it
(the stream's rotation applied), then turned by ``rotate``, then scaled: one
of ``w``/``h`` keeps the aspect ratio, both give exactly that size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from dora.builtin_ops.av.context import AvContext
from dora.builtin_ops.av.filters import VideoChain, video_graph
from dora.builtin_ops.av.probe import MediaInfo, input_args
from dora.builtin_ops.av.process import run_ffmpeg
from dora.builtin_ops.av.speculate import run_planned
from dora.errors import BadRequest, InvalidArgument
from dora.fop import Stage
from dora.ops import Output

MIME = {"jpg": "image/jpeg", "png": "image/png"}
# How far before the end a second attempt seeks when the first finds no frame.
LAST_FRAME_WINDOW = 2.0


def vframe(stage: Stage, src: str, out_dir: str, ctx: AvContext) -> Output:
    """Answer the image bytes of the frame at ``offset``."""
    args = stage.args
    fmt: str = args["format"]
    offset: float = args["offset"]
    out = os.path.join(out_dir, f"{stage.op}.{fmt}")

    def plan_for(info: MediaInfo) -> _Plan:
        if info.video is None:
            raise BadRequest(f"{stage.op}: the source has no video stream")
        if info.duration is not None and offset >= info.duration:
            raise InvalidArgument(
                stage.op, "offset", f"{offset:g} s is past the end ({info.duration:.3f} s)"
            )
        return _Plan(info, _tail(stage, fmt, f"0:{info.video.index}", out))

    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)
    # ffmpeg may start before the probe answers (dora.builtin_ops.av.speculate)
    plan = run_planned(
        src,
        ctx,
        plan_for,
        lambda plan: [*input_args(src, seek=offset), "-frames:v", "1", *plan.tail],
        lambda plan: None,
        speculate=True,
        out_dir=out_dir,
    )
    info, tail = plan.info, plan.tail
    if _size(out) == 0 and info.duration is not None:
        # Past the last frame's timestamp but before the end: every frame from a
        # little earlier overwrites the file, and the last one stays.
        early = max(0.0, info.duration - LAST_FRAME_WINDOW)
        run_ffmpeg([*input_args(src, seek=early), *tail], ctx)
    if _size(out) == 0:
        raise BadRequest(f"invalid media: no frame could be decoded at {offset:g} s")
    try:
        with open(out, "rb") as handle:
            body = handle.read()
    finally:
        os.unlink(out)
    return Output(mime=MIME[fmt], body=body, meta={"format": fmt, "offset": offset})


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    info: MediaInfo
    tail: list[str]  # the arguments after the input's


def _tail(stage: Stage, fmt: str, source: str, out: str) -> list[str]:
    """Filters, encoder and output of the frame (``source``: its stream)."""
    args = stage.args
    rotate = args.get("rotate", "auto")
    width, height = args.get("w"), args.get("h")
    size = (width or -1, height or -1) if width or height else None
    chain = VideoChain(
        rotate=int(rotate) if rotate != "auto" else 0,
        size=size,
        pix_fmt="yuvj420p" if fmt == "jpg" else "rgb24",
    )
    codec = ["-c:v", "mjpeg", "-q:v", "2"] if fmt == "jpg" else ["-c:v", "png"]
    graph = video_graph(chain, source)
    # -update 1: one image file, overwritten by every frame written.
    tail = ["-filter_complex", graph, "-map", "[vout]", *codec, "-update", "1", "-f", "image2"]
    return [*tail, f"file:{out}"]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
