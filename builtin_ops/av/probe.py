"""``avinfo`` and the probe every other op starts with: ffprobe's view of a file.

:func:`probe` runs ffprobe once and keeps both its JSON (what ``avinfo``
answers, shaped as Qiniu's: ``{"streams": [...], "format": {...}}``) and the
few facts the other ops need: the duration, the first video and audio
streams, their bitrates and the rotation a player applies.

Inputs are opened as ``file:`` URLs with only the file protocol and a list of
ordinary demuxers allowed: a source that is itself a playlist or a concat
script (HLS, ffconcat, DASH, SDP) could otherwise make ffmpeg read other
files on the worker, such as other tenants' objects. Such a source is
"invalid media" (400), as is anything ffprobe cannot read.

Probes are remembered, per worker process, in a bounded LRU
(:class:`ProbeCache`, :data:`PROBE_CACHE_ENTRIES` files): a job often runs
several chains on one source (an mp4, a poster frame, an HLS set), each of
which starts with a probe, and an ffprobe costs ~0.1 s however small the file,
most of it loading ffprobe's shared libraries. An entry is keyed by the
file's identity — real path, device, inode, size and mtime — so a source
that is rewritten (the object store replaces files, a new inode) or touched
is probed again; a file that changed while it was probed is not
remembered. A remembered probe still honours the op's cancel and deadline.
Failures are not remembered: a timeout or a cancel belongs to the call that
hit it, not to the file, and an error's wording depends on the caller
(``what``); a bad file fails its first chain anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dora.builtin_ops.av.context import AvContext
from dora.builtin_ops.av.process import check_time, run_process, summarise, tool
from dora.errors import BadRequest
from dora.ops import Output

JSON_MIME = "application/json"
PROBE_CACHE_ENTRIES = 128  # files whose probe a worker process remembers

# Demuxers an input may be read with: containers and raw streams that carry
# their media inline, never a list of other files or URLs.
DEMUXERS = ",".join(
    (
        "mov", "matroska", "avi", "flv", "live_flv", "mpegts", "mpeg", "mpegvideo", "mp3", "aac",
        "loas", "ac3", "eac3", "dts", "wav", "w64", "ogg", "flac", "asf", "amr", "amrnb", "amrwb",
        "aiff", "caf", "au", "wv", "ape", "tta", "truehd", "mlp", "mpc", "mpc8", "dv", "nut",
        "mxf", "rm", "h264", "hevc", "m4v", "obu", "ivf", "vc1", "mjpeg", "yuv4mpegpipe", "gif",
        "apng", "image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe",
    )
)  # fmt: skip


def input_args(path: str, *, seek: float | None = None) -> list[str]:
    """ffmpeg arguments opening ``path`` as one safe input, optionally fast-seeked."""
    args = ["-ss", f"{seek:.3f}"] if seek else []
    return [
        *args,
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        DEMUXERS,
        "-i",
        f"file:{path}",
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class VideoStream:
    index: int  # the stream's index in the file (for -map 0:<index>)
    codec: str
    width: int
    height: int
    rotation: int  # clockwise degrees a player turns the picture: 0, 90, 180, 270
    fps: float | None
    bit_rate: int | None

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as shown, after the rotation."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


@dataclasses.dataclass(frozen=True, slots=True)
class AudioStream:
    index: int
    codec: str
    sample_rate: int | None
    channels: int | None
    bit_rate: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class MediaInfo:
    """What ffprobe found in one file (shared through the cache: read, never mutate)."""

    raw: Mapping[str, Any]  # ffprobe's JSON
    format_name: str
    duration: float | None
    bit_rate: int | None
    video: VideoStream | None
    audio: AudioStream | None

    def video_bit_rate(self) -> int | None:
        """The video stream's bitrate, or the container's less the audio's when unknown."""
        if self.video is None:
            return None
        if self.video.bit_rate:
            return self.video.bit_rate
        if self.bit_rate is None:
            return None
        audio = self.audio.bit_rate if self.audio is not None and self.audio.bit_rate else 0
        rest = self.bit_rate - audio
        return rest if rest > 0 else None


FileIdentity = tuple[str, int, int, int, int]  # real path, st_dev, st_ino, st_size, st_mtime_ns


def file_identity(path: str) -> FileIdentity | None:
    """What tells one version of a file from another; None if it cannot be stat'ed."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ProbeCache:
    """A bounded, thread-safe LRU of :class:`MediaInfo` by :func:`file_identity`."""

    def __init__(self, entries: int = PROBE_CACHE_ENTRIES) -> None:
        if entries < 1:
            raise ValueError("a ProbeCache holds at least one entry")
        self.entries = entries
        self._items: OrderedDict[FileIdentity, MediaInfo] = OrderedDict()
        self._lock = threading.Lock()  # ops run in the worker's threads

    def __len__(self) -> int:
        with self._lock:  # never the moment between an insert and its eviction
            return len(self._items)

    def get(self, identity: FileIdentity) -> MediaInfo | None:
        """The remembered probe of this version of the file, if any."""
        with self._lock:
            info = self._items.get(identity)
            if info is not None:
                self._items.move_to_end(identity)
            return info

    def put(self, identity: FileIdentity, info: MediaInfo) -> None:
        """Remember a probe, forgetting the least recently used beyond the bound."""
        with self._lock:
            self._items[identity] = info
            self._items.move_to_end(identity)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# The worker process's probes. Module state, as functools.lru_cache would be:
# ops are plain functions called from the worker's threads, and a stale entry
# cannot be served since the key is the file's identity.
PROBES = ProbeCache()


def remembered(path: str) -> MediaInfo | None:
    """The remembered probe of this version of ``path``, without probing."""
    identity = file_identity(path)
    return PROBES.get(identity) if identity is not None else None


def probe(path: str, ctx: AvContext, *, what: str = "invalid media") -> MediaInfo:
    """Probe ``path``; 400 ``"<what>: <reason>"`` if it is not media ffmpeg can read.

    Remembered in :data:`PROBES` (see the module doc).
    """
    identity = file_identity(path)
    if identity is not None and (known := PROBES.get(identity)) is not None:
        check_time(ctx)  # a cancelled or late op stops here, as if ffprobe had run
        return known
    info = _probe(path, ctx, what)
    if identity is not None and file_identity(path) == identity:
        PROBES.put(identity, info)
    return info


def _probe(path: str, ctx: AvContext, what: str) -> MediaInfo:
    argv = [
        tool("ffprobe"),
        "-hide_banner",
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        DEMUXERS,
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        f"file:{path}",
    ]
    done = run_process(argv, ctx)
    if done.returncode != 0:
        raise BadRequest(f"{what}: {summarise(ctx, done.stderr) or 'unrecognised format'}")
    try:
        raw = json.loads(done.stdout)
    except ValueError as exc:
        raise BadRequest(f"{what}: unreadable probe output") from exc
    if not isinstance(raw, dict):
        raise BadRequest(f"{what}: unreadable probe output")
    info = _media_info(raw)
    if info.video is None and info.audio is None:
        raise BadRequest(f"{what}: no audio or video stream")
    return info


def _media_info(raw: dict[str, Any]) -> MediaInfo:
    fmt = raw.get("format") if isinstance(raw.get("format"), dict) else {}
    assert isinstance(fmt, dict)
    streams = [s for s in raw.get("streams") or [] if isinstance(s, dict)]
    video = next((_video(s) for s in streams if _is_video(s)), None)
    audio = next((_audio(s) for s in streams if s.get("codec_type") == "audio"), None)
    durations = [_float(s.get("duration")) for s in streams]
    duration = _float(fmt.get("duration")) or max((d for d in durations if d), default=None)
    return MediaInfo(
        raw=raw,
        format_name=str(fmt.get("format_name", "")),
        duration=duration,
        bit_rate=_int(fmt.get("bit_rate")),
        video=video,
        audio=audio,
    )


def _is_video(stream: Mapping[str, Any]) -> bool:
    # A cover picture in an audio file is a "video" stream of one frame: not a video.
    disposition = stream.get("disposition") or {}
    return (
        stream.get("codec_type") == "video"
        and not disposition.get("attached_pic")
        and (_int(stream.get("width")) or 0) > 0
        and (_int(stream.get("height")) or 0) > 0
    )


def _video(stream: Mapping[str, Any]) -> VideoStream:
    return VideoStream(
        index=int(stream.get("index", 0)),
        codec=str(stream.get("codec_name", "")),
        width=int(stream["width"]),
        height=int(stream["height"]),
        rotation=rotation_of(stream),
        fps=_rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")),
        bit_rate=_int(stream.get("bit_rate")),
    )


def _audio(stream: Mapping[str, Any]) -> AudioStream:
    return AudioStream(
        index=int(stream.get("index", 0)),
        codec=str(stream.get("codec_name", "")),
        sample_rate=_int(stream.get("sample_rate")),
        channels=_int(stream.get("channels")),
        bit_rate=_int(stream.get("bit_rate")),
    )


def rotation_of(stream: Mapping[str, Any]) -> int:
    """Clockwise rotation of a video stream, from its display matrix or ``rotate`` tag."""
    for side in stream.get("side_data_list") or []:
        if isinstance(side, dict) and "rotation" in side:
            degrees = _float(side.get("rotation"))
            if degrees is not None:
                # ffprobe reports the matrix's counter-clockwise angle.
                return round(-degrees / 90) * 90 % 360
    tags = stream.get("tags") or {}
    degrees = _float(tags.get("rotate")) if isinstance(tags, dict) else None
    return round(degrees / 90) * 90 % 360 if degrees is not None else 0


def avinfo(path: str, ctx: AvContext) -> Output:
    """``avinfo``: ffprobe's ``{"streams": [...], "format": {...}}`` as JSON."""
    info = probe(path, ctx)
    streams = []
    for stream in info.raw.get("streams") or []:
        item = dict(stream)
        degrees = rotation_of(item) if item.get("codec_type") == "video" else 0
        tags = dict(item.get("tags") or {})
        if degrees and "rotate" not in tags:
            tags["rotate"] = str(degrees)  # where Qiniu's (older ffprobe) answers had it
            item["tags"] = tags
        streams.append(item)
    fmt = {k: v for k, v in dict(info.raw.get("format") or {}).items() if k != "filename"}
    body = json.dumps({"streams": streams, "format": fmt}, ensure_ascii=False).encode()
    return Output(mime=JSON_MIME, body=body)


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _rate(value: Any) -> float | None:
    """``"30000/1001"`` as a number; None for ``0/0`` and the like."""
    if not isinstance(value, str) or "/" not in value:
        return None
    num, _, den = value.partition("/")
    top, bottom = _float(num), _float(den)
    if not top or not bottom:
        return None
    return top / bottom
