"""What each ``avthumb`` output format is made of: container, codecs, limits.

Pure data (no ffmpeg here) so that the argument checks of
:mod:`dora.builtin_ops.av.specs` can use it at parse time. A format names
its muxer, its default encoders, and the encoders a ``vcodec``/``acodec``
may choose; Qiniu's historical codec names (``libfaac``, ``libfdk_aac``)
map onto what Debian's ffmpeg ships.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from dora.errors import InvalidArgument

COPY = "copy"


@dataclasses.dataclass(frozen=True, slots=True)
class Container:
    """One output format of ``avthumb`` (or ``avconcat``)."""

    name: str
    muxer: str  # ffmpeg's -f
    ext: str
    mime: str
    video: str | None  # default video encoder; None: the format carries no video
    audio: str | None  # default audio encoder; None: the format carries no audio
    video_codecs: frozenset[str] = frozenset()
    audio_codecs: frozenset[str] = frozenset()
    faststart: bool = False  # mp4-family: move the index first, for progressive playback


_H264_VIDEO = frozenset({"libx264", "libx265", COPY})
_AAC_MP3 = frozenset({"aac", "libmp3lame", COPY})

FORMATS: Mapping[str, Container] = MappingProxyType(
    {
        c.name: c
        for c in (
            Container(
                "mp4", "mp4", "mp4", "video/mp4", "libx264", "aac", _H264_VIDEO, _AAC_MP3, True
            ),
            Container(
                "webm",
                "webm",
                "webm",
                "video/webm",
                "libvpx-vp9",
                "libopus",
                frozenset({"libvpx-vp9", "libvpx", COPY}),
                frozenset({"libopus", "libvorbis", COPY}),
            ),
            Container(
                "flv",
                "flv",
                "flv",
                "video/x-flv",
                "libx264",
                "aac",
                frozenset({"libx264", "flv", COPY}),
                _AAC_MP3,
            ),
            Container(
                "mp3",
                "mp3",
                "mp3",
                "audio/mpeg",
                None,
                "libmp3lame",
                frozenset(),
                frozenset({"libmp3lame", COPY}),
            ),
            Container(
                "aac",
                "adts",
                "aac",
                "audio/aac",
                None,
                "aac",
                frozenset(),
                frozenset({"aac", COPY}),
            ),
            Container(
                "m4a",
                "ipod",
                "m4a",
                "audio/mp4",
                None,
                "aac",
                frozenset(),
                frozenset({"aac", COPY}),
                True,
            ),
            Container(
                "ogg",
                "ogg",
                "ogg",
                "audio/ogg",
                None,
                "libvorbis",
                frozenset(),
                frozenset({"libvorbis", "libopus", COPY}),
            ),
            Container("gif", "gif", "gif", "image/gif", "gif", None, frozenset({"gif"})),
            # HLS: MPEG-TS segments and a playlist (see dora.builtin_ops.av.hls).
            Container(
                "m3u8",
                "hls",
                "m3u8",
                "application/x-mpegURL",
                "libx264",
                "aac",
                _H264_VIDEO,
                _AAC_MP3,
            ),
        )
    }
)

HLS_FORMATS = frozenset({"m3u8", "hls"})  # Qiniu accepts both names for slicing

VIDEO_CODEC_NAMES = ("libx264", "libx265", "libvpx", "libvpx-vp9", "flv", "gif", COPY)
AUDIO_CODEC_NAMES = ("aac", "libfaac", "libfdk_aac", "libmp3lame", "libopus", "libvorbis", COPY)
_AUDIO_ALIASES = {"libfaac": "aac", "libfdk_aac": "aac"}

# Sample rates an encoder accepts (None: any); a wrong ``ar`` is a 400 up front
# rather than an encoder failure half-way through a job.
SAMPLE_RATES: Mapping[str, frozenset[int] | None] = MappingProxyType(
    {
        "aac": frozenset(
            {
                7350,
                8000,
                11025,
                12000,
                16000,
                22050,
                24000,
                32000,
                44100,
                48000,
                64000,
                88200,
                96000,
            }
        ),
        "libmp3lame": frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}),
        "libopus": frozenset({8000, 12000, 16000, 24000, 48000}),
        "libvorbis": None,
    }
)
MAX_CHANNELS: Mapping[str, int] = MappingProxyType(
    {"aac": 8, "libmp3lame": 2, "libopus": 8, "libvorbis": 8}
)
# Encoders whose output is 4:2:0 and so needs even frame sides.
EVEN_SIDED = frozenset({"libx264", "libx265", "libvpx", "libvpx-vp9", "flv"})


def container(fmt: str) -> Container:
    """The container of an ``avthumb`` format (``hls`` is ``m3u8``)."""
    return FORMATS["m3u8" if fmt in HLS_FORMATS else fmt]


def video_encoder(op: str, box: Container, vcodec: str | None) -> str | None:
    """The video encoder for ``box`` and an optional ``vcodec``; 400 if they do not fit."""
    if vcodec is None:
        return box.video
    if vcodec not in box.video_codecs:
        allowed = ", ".join(sorted(box.video_codecs)) or "none (audio only)"
        raise InvalidArgument(op, "vcodec", f"{vcodec} cannot go into {box.name} ({allowed})")
    return vcodec


def audio_encoder(op: str, box: Container, acodec: str | None) -> str | None:
    """The audio encoder for ``box`` and an optional ``acodec``; 400 if they do not fit."""
    if acodec is None:
        return box.audio
    name = _AUDIO_ALIASES.get(acodec, acodec)
    if name not in box.audio_codecs:
        allowed = ", ".join(sorted(box.audio_codecs)) or "none (no audio)"
        raise InvalidArgument(op, "acodec", f"{acodec} cannot go into {box.name} ({allowed})")
    return name


def check_audio_shape(op: str, encoder: str | None, ar: int | None, ac: int | None) -> None:
    """Reject a sample rate or channel count the audio encoder cannot write."""
    if encoder is None or encoder == COPY:
        return
    rates = SAMPLE_RATES.get(encoder)
    if ar is not None and rates is not None and ar not in rates:
        choices = ", ".join(str(r) for r in sorted(rates))
        raise InvalidArgument(op, "ar", f"{encoder} supports {choices}")
    most = MAX_CHANNELS.get(encoder)
    if ac is not None and most is not None and ac > most:
        raise InvalidArgument(op, "ac", f"{encoder} writes at most {most} channels")
