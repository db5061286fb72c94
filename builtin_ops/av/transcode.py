"""``avthumb``: transcode a source into one file of another format.

:func:`plan_transcode` turns a validated stage and the source's probe into
ffmpeg arguments (inputs, filter graph, stream maps, encoders, trimming,
metadata); :func:`transcode` runs them into ``<out_dir>/avthumb.<ext>``, and
:mod:`dora.builtin_ops.av.hls` adds its muxer to the same plan.

Semantics, after Qiniu's: ``ss``/``t`` trim (fast, frame-accurate seek);
``s`` scales exactly, or to fit with ``autoscale/1``; ``rotate`` turns the
picture clockwise after the source's own rotation is applied (``auto``:
only that); ``vb``/``ab`` above the source's bitrate fall back to it;
``an``/``vn`` drop a stream; ``stripmeta/1`` drops metadata and chapters;
``wmImage`` (through the resolver seam) and ``wmText`` mark the picture,
``wmFontSize`` in twips as Qiniu documents (0: 24 px). A GIF is made in two
passes (a palette, then the picture) with at most ``max_frames`` frames.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

from dora.builtin_ops.av.context import AvContext, resolve, scaled
from dora.builtin_ops.av.encode import audio_args, capped, video_args
from dora.builtin_ops.av.filters import ImageMark, TextMark, VideoChain, video_graph
from dora.builtin_ops.av.formats import COPY, EVEN_SIDED, Container, container
from dora.builtin_ops.av.formats import audio_encoder as pick_audio
from dora.builtin_ops.av.formats import video_encoder as pick_video
from dora.builtin_ops.av.probe import MediaInfo, input_args, probe
from dora.builtin_ops.av.process import run_ffmpeg
from dora.builtin_ops.av.speculate import run_planned, speculative
from dora.errors import BadRequest, InvalidArgument, PayloadTooLarge
from dora.fop import Stage
from dora.ops import Output

DEFAULT_FONT = "Sans"
DEFAULT_FONT_PX = 24
DEFAULT_COLOUR = "black"
GIF_MAX_FPS = 15.0
GIF_DEFAULT_FPS = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """ffmpeg arguments for one transcode, output file and muxer aside."""

    inputs: list[str]
    graph: str | None  # -filter_complex text ending in [vout]
    maps: list[str]
    codecs: list[str]
    tail: list[str]  # trimming and metadata options
    duration: float | None  # seconds of output, for progress
    video: str | None  # the video encoder in use (None: no video)
    audio: str | None
    input_count: int
    meta: dict[str, Any]

    def args(self, graph: str | None = None) -> list[str]:
        """Inputs to options; ``graph`` replaces the plan's filter graph."""
        text = graph if graph is not None else self.graph
        return [
            *self.inputs,
            *(["-filter_complex", text] if text else []),
            *self.maps,
            *self.codecs,
            *self.tail,
        ]


def time_window(op: str, info: MediaInfo, seek: float | None, length: float | None) -> float | None:
    """The output's duration for ``ss``/``t``; 400 when ``ss`` is past the end."""
    if info.duration is None:
        return length
    if seek and seek >= info.duration:
        raise InvalidArgument(op, "ss", f"{seek:g} s is past the end ({info.duration:.3f} s)")
    left = info.duration - (seek or 0.0)
    return min(length, left) if length else left


def plan_transcode(
    stage: Stage, info: MediaInfo, src: str, box: Container, *, ctx: AvContext, work: str
) -> Plan:
    """The arguments turning ``src`` into ``box`` as ``stage`` asks."""
    op, args = stage.op, stage.args
    video_enc = pick_video(op, box, args.get("vcodec"))
    audio_enc = pick_audio(op, box, args.get("acodec"))
    if box.audio is None and info.video is None:
        raise BadRequest(f"{op}: the source has no video stream to make a {box.name}")
    if box.video is None and info.audio is None:
        raise BadRequest(f"{op}: the source has no audio stream to make {box.name}")
    use_video = video_enc is not None and info.video is not None and not args.get("vn")
    use_audio = audio_enc is not None and info.audio is not None and not args.get("an")
    if not (use_video or use_audio):
        raise BadRequest(f"{op}: nothing left to write once an/vn and the source's streams apply")
    seek, length = args.get("ss"), args.get("t")
    duration = time_window(op, info, seek, length)
    inputs = input_args(src, seek=seek)
    count = 1
    graph: str | None = None
    maps: list[str] = []
    codecs: list[str] = []
    meta: dict[str, Any] = {"format": box.name}
    if use_video:
        assert info.video is not None and video_enc is not None
        chain, extra = _video_chain(
            stage,
            info,
            box,
            encoder=video_enc,
            ctx=ctx,
            work=work,
            next_input=count,
            duration=duration,
        )
        inputs += extra
        count += 1 if extra else 0
        source = f"0:{info.video.index}"
        if video_enc == COPY:
            maps += ["-map", source]
        else:
            graph = video_graph(chain, source)
            maps += ["-map", "[vout]"]
        vb = capped(args.get("vb"), info.video_bit_rate()) if video_enc != COPY else None
        codecs += video_args(video_enc, bit_rate=vb, container=box.name)
        if "aspect" in args:
            codecs += ["-aspect", args["aspect"]]
        meta.update(vcodec=video_enc, vb=vb)
    if use_audio:
        assert info.audio is not None and audio_enc is not None
        ab = capped(args.get("ab"), info.audio.bit_rate) if audio_enc != COPY else None
        maps += ["-map", f"0:{info.audio.index}"]
        codecs += audio_args(
            audio_enc,
            bit_rate=ab,
            quality=args.get("aq"),
            sample_rate=args.get("ar"),
            channels=args.get("ac"),
        )
        meta.update(acodec=audio_enc, ab=ab)
    tail = ["-t", f"{length:.3f}"] if length else []
    if args.get("stripmeta"):
        tail += ["-map_metadata", "-1", "-map_chapters", "-1"]
    tail += ["-max_muxing_queue_size", "1024"]
    if box.name == "gif":
        tail += ["-frames:v", str(ctx.limits.max_frames)]
    return Plan(inputs, graph, maps, codecs, tail, duration, video_enc if use_video else None,
                audio_enc if use_audio else None, count, meta)  # fmt: skip


def _video_chain(
    stage: Stage,
    info: MediaInfo,
    box: Container,
    *,
    encoder: str,
    ctx: AvContext,
    work: str,
    next_input: int,
    duration: float | None,
) -> tuple[VideoChain, list[str]]:
    """The picture's chain and the extra inputs it needs (a watermark image)."""
    assert info.video is not None
    args = stage.args
    extra: list[str] = []
    image: ImageMark | None = None
    if "wmImage" in args:
        path = resolve(ctx, "wmImage", args["wmImage"])
        mark = probe(path, ctx, what="wmImage: not an image")
        if mark.video is None:
            raise BadRequest(f"{stage.op}: wmImage: not an image")
        extra = input_args(path)
        image = ImageMark(
            next_input,
            args.get("wmGravity", "NorthEast"),
            args.get("wmOffsetX", 0),
            args.get("wmOffsetY", 0),
        )
    text: TextMark | None = None
    if "wmText" in args:
        text_file = os.path.join(work, "wmtext.txt")
        with open(text_file, "w", encoding="utf-8") as handle:
            handle.write(args["wmText"])
        twips = args.get("wmFontSize", 0)
        text = TextMark(
            text_file,
            font=args.get("wmFont", DEFAULT_FONT),
            color=args.get("wmFontColor", DEFAULT_COLOUR),
            size=max(1, round(twips / 20)) if twips else DEFAULT_FONT_PX,
            gravity=args.get("wmGravityText", "NorthEast"),
        )
    fps = args.get("r")
    if box.name == "gif":
        fps = fps or min(info.video.fps or GIF_DEFAULT_FPS, GIF_MAX_FPS)
        frames = (duration or 0.0) * fps
        if frames > ctx.limits.max_frames:
            raise BadRequest(
                f"{stage.op}: a GIF of {frames:.0f} frames is more than {ctx.limits.max_frames}; "
                "shorten it with t or lower r"
            )
    rotate = args.get("rotate", "auto")
    chain = VideoChain(
        rotate=int(rotate) if rotate != "auto" else 0,
        size=args.get("s"),
        fit=bool(args.get("autoscale")),
        even=encoder in EVEN_SIDED,
        fps=fps,
        image=image,
        text=text,
        pix_fmt="yuv420p" if encoder in EVEN_SIDED else None,
    )
    return chain, extra


def muxer_args(box: Container) -> list[str]:
    """Options of the output format itself."""
    return ["-movflags", "+faststart"] if box.faststart else []


def size_limit(ctx: AvContext) -> list[str]:
    """ffmpeg stops writing a file past this size (checked by :func:`check_output`)."""
    return ["-fs", str(ctx.limits.max_upload_bytes)]


def check_output(path: str, ctx: AvContext) -> None:
    """A run that wrote nothing decoded nothing: the input is unusable; one that
    reached :func:`size_limit` was cut short: the result would be too large."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    if size == 0:
        raise BadRequest(f"invalid media: {ctx.op} could not decode anything from the source")
    if size >= ctx.limits.max_upload_bytes:
        raise PayloadTooLarge(
            f"{ctx.op}: the result would be larger than {ctx.limits.max_upload_bytes} bytes"
        )


def transcode(stage: Stage, src: str, out_dir: str, ctx: AvContext) -> Output:
    """``avthumb/<format>`` into ``<out_dir>/avthumb.<ext>``."""
    box = container(stage.args["format"])
    name = f"{stage.op}.{box.ext}"
    out = os.path.join(out_dir, name)
    tail = [*muxer_args(box), *size_limit(ctx), "-f", box.muxer, f"file:{out}"]
    with tempfile.TemporaryDirectory(prefix="dora-av-") as work:

        def plan_for(info: MediaInfo) -> Plan:
            return plan_transcode(stage, info, src, box, ctx=ctx, work=work)

        if box.name == "gif":  # two passes when it draws the picture itself
            plan = plan_for(probe(src, ctx))
            if plan.graph is not None:
                _gif(plan, out, ctx, work)
            else:
                run_ffmpeg([*plan.args(), *tail], ctx, duration=plan.duration)
        else:  # ffmpeg may start before the probe answers (dora.builtin_ops.av.speculate)
            plan = run_planned(
                src,
                ctx,
                plan_for,
                lambda plan: [*plan.args(), *tail],
                lambda plan: plan.duration,
                speculate=speculative(stage, box.name),
                out_dir=out_dir,
            )
    check_output(out, ctx)
    return Output(mime=box.mime, path=out, meta={**plan.meta, "files": [name]})


def _gif(plan: Plan, out: str, ctx: AvContext, work: str) -> None:
    """A palette from the whole clip, then the clip drawn with it: bounded memory,
    unlike a one-pass palettegen, which holds every frame until the end."""
    assert plan.graph is not None
    palette = os.path.join(work, "palette.png")
    first = ctx.with_progress(scaled(ctx.progress, 0.0, 30.0))
    graph = f"{plan.graph};[vout]palettegen=stats_mode=full[pal]"
    pass1 = [*plan.inputs, "-filter_complex", graph, "-map", "[pal]", *plan.tail]
    pass1 += ["-c:v", "png", "-update", "1", "-f", "image2", f"file:{palette}"]
    run_ffmpeg(pass1, first, duration=plan.duration)
    second = ctx.with_progress(scaled(ctx.progress, 30.0, 100.0))
    graph = f"{plan.graph};[vout][{plan.input_count}:v]paletteuse=dither=bayer:bayer_scale=3[gif]"
    pass2 = [*plan.inputs, *input_args(palette), "-filter_complex", graph, "-map", "[gif]"]
    pass2 += [*plan.codecs, *plan.tail, *size_limit(ctx), "-f", "gif", f"file:{out}"]
    run_ffmpeg(pass2, second, duration=plan.duration)
