"""``avconcat/2/format/<fmt>/<b64 url>/...``: the source, then other files, as one.

Only mode 2 (re-encode) exists, as in Qiniu's API. The other files are
named by URL-safe base64 URLs that the caller's resolver turns into local
paths. Every input is scaled and padded (letterboxed) to the source's
picture size and frame rate and resampled to 48 kHz stereo, so that files
of different shapes join cleanly; an input without a picture gets black, one
without sound gets silence. GIF and HLS are not concatenation targets.

The generic fop grammar has no room for a list of bare values, so the spec
is ``raw`` and :func:`parse_concat` validates the text here.
"""

from __future__ import annotations

import dataclasses
import os

from dora.b64 import decode_text
from dora.builtin_ops.av.context import AvContext, resolve
from dora.builtin_ops.av.encode import audio_args, video_args
from dora.builtin_ops.av.formats import FORMATS, Container
from dora.builtin_ops.av.probe import MediaInfo, input_args, probe
from dora.builtin_ops.av.process import run_ffmpeg
from dora.builtin_ops.av.transcode import check_output, muxer_args, size_limit
from dora.errors import BadRequest, DoraError, InvalidArgument
from dora.fop import Stage
from dora.ops import Output

OP = "avconcat"
MAX_INPUTS = 20  # files after the source
MAX_URL_CHARS = 2048
TARGETS = tuple(name for name in FORMATS if name not in ("gif", "m3u8"))
SAMPLE_RATE = 48000
DEFAULT_FPS = 25.0
MAX_FPS = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class ConcatArgs:
    mode: int
    format: str
    urls: tuple[str, ...]


def parse_concat(argtext: str) -> ConcatArgs:
    """Validate ``2/format/<fmt>/<b64 url>[/<b64 url>...]``; 400 naming what is wrong."""
    tokens = argtext.split("/") if argtext else []
    if not tokens or tokens[0] != "2":
        raise InvalidArgument(OP, "mode", "expected 2 (the only mode: re-encode)")
    if len(tokens) < 3 or tokens[1] != "format":
        raise InvalidArgument(OP, "format", "missing: avconcat/2/format/<fmt>/<b64 url>...")
    fmt = tokens[2].lower()
    if fmt not in TARGETS:
        raise InvalidArgument(OP, "format", f"{tokens[2]!r} is not one of {', '.join(TARGETS)}")
    raw_urls = tokens[3:]
    if not raw_urls:
        raise InvalidArgument(OP, "url", "at least one file to append")
    if len(raw_urls) > MAX_INPUTS:
        raise InvalidArgument(OP, "url", f"at most {MAX_INPUTS} files to append")
    urls: list[str] = []
    for index, raw in enumerate(raw_urls, start=1):
        try:
            url = decode_text(raw)
        except DoraError as exc:
            raise InvalidArgument(OP, f"url {index}", exc.message) from exc
        if not url.strip() or len(url) > MAX_URL_CHARS or not url.isprintable():
            raise InvalidArgument(OP, f"url {index}", "expected one printable URL")
        urls.append(url)
    return ConcatArgs(2, fmt, tuple(urls))


def concat(stage: Stage, src: str, out_dir: str, ctx: AvContext) -> Output:
    """Join the source and the files of ``stage`` into ``<out_dir>/avconcat.<ext>``."""
    spec = parse_concat(stage.argtext)
    box = FORMATS[spec.format]
    paths = [src] + [resolve(ctx, f"url {i}", url) for i, url in enumerate(spec.urls, start=1)]
    infos = [probe(paths[0], ctx)]
    infos += [
        probe(path, ctx, what=f"invalid media in url {i}") for i, path in enumerate(paths[1:], 1)
    ]
    for index, info in enumerate(infos):
        if info.duration is None:
            raise BadRequest(f"{OP}: input {index} has no known duration")
    with_video = box.video is not None and any(info.video for info in infos)
    with_audio = box.audio is not None and any(info.audio for info in infos)
    if not (with_video or with_audio):
        raise BadRequest(f"{OP}: the inputs have nothing a {box.name} can carry")
    graph, maps = _graph(infos, with_video, with_audio)
    codecs: list[str] = []
    if with_video:
        assert box.video is not None
        codecs += video_args(box.video, bit_rate=None, container=box.name)
    if with_audio:
        assert box.audio is not None
        codecs += audio_args(box.audio, bit_rate=None, quality=None, sample_rate=None,
                             channels=None)  # fmt: skip
    name = f"{OP}.{box.ext}"
    out = os.path.join(out_dir, name)
    inputs = [arg for path in paths for arg in input_args(path)]
    total = sum(info.duration or 0.0 for info in infos)
    run_ffmpeg(
        [
            *inputs,
            "-filter_complex",
            graph,
            *maps,
            *codecs,
            *size_limit(ctx),
            *_tail(box),
            f"file:{out}",
        ],
        ctx,
        duration=total,
    )
    check_output(out, ctx)
    meta = {"format": box.name, "inputs": len(paths), "duration": total, "files": [name]}
    return Output(mime=box.mime, path=out, meta=meta)


def _tail(box: Container) -> list[str]:
    return [*muxer_args(box), "-max_muxing_queue_size", "1024", "-f", box.muxer]


def _frame(infos: list[MediaInfo]) -> tuple[int, int, float]:
    """The picture size and frame rate every input is brought to: the first video's."""
    first = next(info.video for info in infos if info.video is not None)
    width, height = first.display_size
    fps = min(first.fps or DEFAULT_FPS, MAX_FPS)
    return max(2, width - width % 2), max(2, height - height % 2), fps


def _graph(infos: list[MediaInfo], with_video: bool, with_audio: bool) -> tuple[str, list[str]]:
    parts: list[str] = []
    joined = ""
    width, height, fps = _frame(infos) if with_video else (0, 0, 0.0)
    audio_shape = f"aformat=sample_fmts=fltp:sample_rates={SAMPLE_RATE}:channel_layouts=stereo"
    for i, info in enumerate(infos):
        seconds = f"{info.duration or 0.0:.3f}"
        if with_video:
            if info.video is not None:
                parts.append(
                    f"[{i}:{info.video.index}]scale={width}:{height}"
                    ":force_original_aspect_ratio=decrease,"
                    f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={fps:g},"
                    f"format=yuv420p[v{i}]"
                )
            else:
                parts.append(
                    f"color=c=black:s={width}x{height}:r={fps:g}:d={seconds},format=yuv420p[v{i}]"
                )
            joined += f"[v{i}]"
        if with_audio:
            if info.audio is not None:
                parts.append(f"[{i}:{info.audio.index}]aresample={SAMPLE_RATE},{audio_shape}[a{i}]")
            else:
                parts.append(
                    f"anullsrc=r={SAMPLE_RATE}:cl=stereo,atrim=duration={seconds},"
                    f"{audio_shape}[a{i}]"
                )
            joined += f"[a{i}]"
    outputs = ("[vcat]" if with_video else "") + ("[acat]" if with_audio else "")
    parts.append(f"{joined}concat=n={len(infos)}:v={int(with_video)}:a={int(with_audio)}{outputs}")
    maps = (["-map", "[vcat]"] if with_video else []) + (["-map", "[acat]"] if with_audio else [])
    return ";".join(parts), maps
