"""``avthumb/m3u8``: HLS slicing, a VOD playlist and MPEG-TS segments, optionally AES-128.

The transcoding parameters of ``avthumb`` apply (H.264 + AAC by default);
then ``segtime`` (2-120 s, default 10) sets the segment length, with
keyframes forced on the boundaries so that segments really are that long.
``pattern`` names the segments, ``$(count)`` standing for a six-digit index
from ``000000`` (default ``segment-$(count).ts``); the playlist is
``playlist.m3u8``. Segment URIs are relative (``noDomain/1``, and the default,
since the platform, not the worker, knows a bucket's domain) unless
``domain`` gives a base URL.

``hlsKey`` (16 bytes) encrypts every segment with AES-128-CBC through
ffmpeg's key info file; the IV is the segment's sequence number, as the HLS
specification defaults it. The playlist points at ``hlsKeyUrl``; without
one, the key is written next to the playlist as ``playlist.key`` and
referenced relatively. The key info file itself lives in a private
temporary directory, never among the outputs.
"""

from __future__ import annotations

import os
import tempfile

from dora.builtin_ops.av.context import AvContext
from dora.builtin_ops.av.formats import COPY, FORMATS
from dora.builtin_ops.av.probe import MediaInfo
from dora.builtin_ops.av.speculate import run_planned, speculative
from dora.builtin_ops.av.transcode import Plan, check_output, plan_transcode
from dora.errors import ProcessingFailed
from dora.fop import Stage
from dora.ops import Output

PLAYLIST = "playlist.m3u8"
KEY_FILE = "playlist.key"
DEFAULT_PATTERN = "segment-$(count).ts"
DEFAULT_SEGTIME = 10
MAX_SEGMENTS = 100_000


def segment_template(pattern: str) -> str:
    """ffmpeg's name template for a Qiniu ``pattern`` (validated: no ``%`` in it)."""
    return pattern.replace("$(count)", "%06d")


def base_url(domain: str) -> str:
    """``domain`` as a URL prefix ending in ``/``."""
    url = domain if domain.startswith(("http://", "https://")) else f"http://{domain}"
    return url.rstrip("/") + "/"


def hls(stage: Stage, src: str, out_dir: str, ctx: AvContext) -> Output:
    """Slice ``src`` into ``<out_dir>/playlist.m3u8`` and its segments."""
    args = stage.args
    box = FORMATS["m3u8"]
    segtime = args.get("segtime", DEFAULT_SEGTIME)
    template = segment_template(args.get("pattern") or DEFAULT_PATTERN)
    base = base_url(args["domain"]) if "domain" in args else None
    playlist = os.path.join(out_dir, PLAYLIST)
    key: bytes | None = args.get("hlsKey")
    key_written = False
    with tempfile.TemporaryDirectory(prefix="dora-av-") as work:
        muxer = [
            "-f",
            "hls",
            "-hls_time",
            str(segtime),
            "-hls_list_size",
            "0",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_type",
            "mpegts",
            "-hls_segment_filename",
            # Relative to out_dir (the cwd): ffmpeg expands % anywhere in this name.
            template,
        ]
        if base is not None:
            muxer += ["-hls_base_url", base]
        if key is not None:
            uri = args.get("hlsKeyUrl")
            key_path = os.path.join(work if uri else out_dir, KEY_FILE)
            _write_private(key_path, key)
            key_written = uri is None
            info_path = os.path.join(work, "key.info")
            _write_private(info_path, f"{uri or KEY_FILE}\n{key_path}\n".encode())
            muxer += ["-hls_key_info_file", info_path]

        def plan_for(info: MediaInfo) -> Plan:
            return plan_transcode(stage, info, src, box, ctx=ctx, work=work)

        def argv_of(plan: Plan) -> list[str]:
            # Cut points fall on keyframes only: force one at every boundary.
            keys = ["-force_key_frames", f"expr:gte(t,n_forced*{segtime})"]
            forced = keys if plan.video not in (None, COPY) else []
            return [*plan.args(), *forced, *muxer, PLAYLIST]

        # ffmpeg may start before the probe answers (dora.builtin_ops.av.speculate)
        plan = run_planned(
            src,
            ctx,
            plan_for,
            argv_of,
            lambda plan: plan.duration,
            speculate=speculative(stage, box.name),
            out_dir=out_dir,
            cwd=out_dir,
        )
    check_output(playlist, ctx)
    segments = _segments(playlist, base)
    files = [PLAYLIST, *segments, *([KEY_FILE] if key_written else [])]
    meta = {
        **plan.meta,
        "files": files,
        "playlist": PLAYLIST,
        "segments": segments,
        "encrypted": key is not None,
        "segtime": segtime,
    }
    if key_written:
        meta["key"] = KEY_FILE
    return Output(mime=box.mime, path=playlist, meta=meta)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _segments(playlist: str, base: str | None) -> list[str]:
    """The segment file names a playlist lists, in order, each checked to exist."""
    names: list[str] = []
    folder = os.path.dirname(playlist)
    with open(playlist, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if base is not None and line.startswith(base):
                line = line[len(base) :]
            if os.path.basename(line) != line or not os.path.isfile(os.path.join(folder, line)):
                raise ProcessingFailed(f"avthumb: the playlist lists an unexpected entry {line!r}")
            names.append(line)
            if len(names) > MAX_SEGMENTS:
                raise ProcessingFailed(f"avthumb: more than {MAX_SEGMENTS} segments")
    return names
