"""The argument schemas of the audio/video ops, checked before any work is done.

Nothing here runs ffmpeg: the gateway imports :data:`AV_SPECS` (through the
builtin catalog) to validate processing URLs and pfop requests. Names,
ranges and defaults follow Qiniu's documentation of ``avinfo``, ``vframe``,
``avthumb`` (with its watermark and HLS parameters) and ``avconcat``.

``avconcat`` ends in a list of bare URL values that the generic grammar has
no place for, so its spec is ``raw``: :func:`dora.builtin_ops.av.concat.parse_concat`
validates its text (``validate_av_stage`` in the package runs it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dora.builtin_ops.av.formats import (
    AUDIO_CODEC_NAMES,
    COPY,
    FORMATS,
    HLS_FORMATS,
    VIDEO_CODEC_NAMES,
    audio_encoder,
    check_audio_shape,
    container,
    video_encoder,
)
from dora.builtin_ops.gravity import GRAVITIES
from dora.errors import InvalidArgument
from dora.schema import (
    B64BytesParam,
    B64TextParam,
    BoolParam,
    EnumParam,
    FloatParam,
    IntParam,
    OpSpec,
    PatternParam,
)

MAX_SIDE = 3840
MAX_AREA = 3840 * 2160
MIN_SIDE = 20
HLS_KEY_BYTES = 16

_BITRATE = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,3})?)([kKmM]?)")
_FONT = re.compile(r"[\w .-]{1,64}")  # \w: CJK font names too; nothing the graph quotes
_COLOUR = re.compile(r"#?[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?|0x[0-9A-Fa-f]{6,8}|[A-Za-z]{3,24}")
_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,60}\$\(count\)[A-Za-z0-9_.-]{0,60}")
_DOMAIN = re.compile(r"(?:https?://)?[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?")


@dataclasses.dataclass(frozen=True, slots=True)
class BitrateParam:
    """``128k``, ``1.25m`` or ``64000``, as bits per second within [lo, hi]."""

    lo: int
    hi: int

    def parse(self, op: str, name: str, raw: str) -> int:
        match = _BITRATE.fullmatch(raw)
        if match is None:
            raise InvalidArgument(op, name, f"{raw!r} is not a bitrate such as 128k or 1.25m")
        scale = {"": 1, "k": 1000, "m": 1_000_000}[match.group(2).lower()]
        value = round(float(match.group(1)) * scale)
        if not self.lo <= value <= self.hi:
            raise InvalidArgument(op, name, f"{raw} is out of range [{self.lo}, {self.hi}] bit/s")
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class SizeParam:
    """``<W>x<H>`` within Qiniu's 20x20 to 3840x2160 (either orientation)."""

    def parse(self, op: str, name: str, raw: str) -> tuple[int, int]:
        match = re.fullmatch(r"([0-9]{1,4})x([0-9]{1,4})", raw)
        if match is None:
            raise InvalidArgument(op, name, f"{raw!r} is not <width>x<height>")
        width, height = int(match.group(1)), int(match.group(2))
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise InvalidArgument(op, name, f"sides must be within [{MIN_SIDE}, {MAX_SIDE}]")
        if width * height > MAX_AREA:
            raise InvalidArgument(op, name, f"{raw} is larger than 3840x2160")
        return width, height


ROTATE = EnumParam(("90", "180", "270", "auto"))
GRAVITY = EnumParam(GRAVITIES)
OFFSET = IntParam(-4096, 4096)

_HLS_ONLY = ("segtime", "noDomain", "domain", "pattern", "hlsKey", "hlsKeyType", "hlsKeyUrl")


def _check_avthumb(args: Mapping[str, Any]) -> None:
    op = "avthumb"
    fmt = args["format"]
    box = container(fmt)
    if fmt not in HLS_FORMATS:
        for name in _HLS_ONLY:
            if name in args:
                raise InvalidArgument(op, name, "only for avthumb/m3u8 (HLS)")
    if args.get("an") and args.get("vn"):
        raise InvalidArgument(op, "vn", "an/1 and vn/1 together leave nothing to write")
    if "ab" in args and "aq" in args:
        raise InvalidArgument(op, "aq", "give a constant bitrate (ab) or a quality (aq), not both")
    video = video_encoder(op, box, args.get("vcodec"))
    audio = audio_encoder(op, box, args.get("acodec"))
    check_audio_shape(op, audio, args.get("ar"), args.get("ac"))
    if video == COPY:
        for name in ("s", "r", "wmImage", "wmText"):
            if name in args:
                raise InvalidArgument(op, name, "cannot change a stream that vcodec/copy copies")
        if args.get("rotate") in ("90", "180", "270"):
            raise InvalidArgument(op, "rotate", "cannot turn a stream that vcodec/copy copies")
    if audio == COPY:
        for name in ("ab", "aq", "ar", "ac"):
            if name in args:
                raise InvalidArgument(op, name, "cannot change a stream that acodec/copy copies")
    if "wmFont" in args and not _FONT.fullmatch(args["wmFont"]):
        raise InvalidArgument(op, "wmFont", "a font name has letters, digits, spaces, '-', '.'")
    if "wmFontColor" in args and not _COLOUR.fullmatch(args["wmFontColor"]):
        raise InvalidArgument(op, "wmFontColor", "expected #RRGGBB[AA] or a colour name")
    if "wmText" in args and not args["wmText"].strip():
        raise InvalidArgument(op, "wmText", "empty text")
    _check_hls(op, args)


def _check_hls(op: str, args: Mapping[str, Any]) -> None:
    if "pattern" in args and not _PATTERN.fullmatch(args["pattern"]):
        raise InvalidArgument(
            op, "pattern", "a segment name with one $(count) and only [A-Za-z0-9_.-] besides"
        )
    if "domain" in args:
        if args.get("noDomain"):
            raise InvalidArgument(op, "domain", "cannot be combined with noDomain/1")
        if not _DOMAIN.fullmatch(args["domain"]):
            raise InvalidArgument(op, "domain", "expected a host name or an http(s) URL")
    key = args.get("hlsKey")
    if key is not None and len(key) != HLS_KEY_BYTES:
        raise InvalidArgument(op, "hlsKey", f"an AES-128 key is {HLS_KEY_BYTES} bytes")
    url = args.get("hlsKeyUrl")
    if url is not None:
        if key is None:
            raise InvalidArgument(op, "hlsKeyUrl", "needs hlsKey")
        # It becomes a quoted attribute of the playlist and a line of ffmpeg's key info.
        if not url or any(ch in url for ch in '"\r\n') or not url.isprintable():
            raise InvalidArgument(op, "hlsKeyUrl", "must be one printable line without quotes")


AVINFO = OpSpec(
    name="avinfo",
    kind="av",
    cost="io",
    doc='avinfo: ffprobe\'s {"streams": [...], "format": {...}} of an audio or video file.',
)

VFRAME = OpSpec(
    name="vframe",
    kind="av",
    positional=("format", EnumParam(("jpg", "png"))),
    params=MappingProxyType(
        {
            "offset": FloatParam(0, 86400),
            "w": IntParam(1, 3840),
            "h": IntParam(1, 2160),
            "rotate": ROTATE,
        }
    ),
    required=frozenset({"offset"}),
    cost="cpu",
    doc=(
        "vframe/<jpg|png>/offset/<seconds>/w/<1-3840>/h/<1-2160>/rotate/<90|180|270|auto>: "
        "one frame as an image; one of w, h scales proportionally, both give that size."
    ),
)

AVTHUMB = OpSpec(
    name="avthumb",
    kind="av",
    positional=("format", EnumParam((*FORMATS, "hls"))),
    params=MappingProxyType(
        {
            # Transcoding.
            "ab": BitrateParam(8_000, 1_000_000),
            "aq": IntParam(0, 9),
            "ar": IntParam(7350, 96000),
            "ac": IntParam(1, 8),
            "acodec": EnumParam(AUDIO_CODEC_NAMES),
            "vb": BitrateParam(16_000, 100_000_000),
            "r": FloatParam(1, 60),
            "s": SizeParam(),
            "autoscale": BoolParam(),
            "aspect": PatternParam(r"[1-9][0-9]{0,3}:[1-9][0-9]{0,3}", "an aspect ratio like 16:9"),
            "vcodec": EnumParam(VIDEO_CODEC_NAMES),
            "ss": FloatParam(0, 86400),
            "t": FloatParam(0.001, 86400),
            "stripmeta": BoolParam(),
            "rotate": ROTATE,
            "an": BoolParam(),
            "vn": BoolParam(),
            # Watermarks.
            "wmImage": B64TextParam(2048),
            "wmGravity": GRAVITY,
            "wmOffsetX": OFFSET,
            "wmOffsetY": OFFSET,
            "wmText": B64TextParam(512),
            "wmGravityText": GRAVITY,
            "wmFont": B64TextParam(64),
            "wmFontColor": B64TextParam(32),
            "wmFontSize": IntParam(0, 20000),  # twips (1/20 pt); 0: the default size
            # HLS (avthumb/m3u8).
            "segtime": IntParam(2, 120),
            "noDomain": BoolParam(),
            "domain": B64TextParam(512),
            "pattern": B64TextParam(128),
            "hlsKey": B64BytesParam(64),
            "hlsKeyType": EnumParam(("0",)),
            "hlsKeyUrl": B64TextParam(1024),
        }
    ),
    cost="cpu",
    sync=False,
    check=_check_avthumb,
    doc=(
        "avthumb/<mp4|webm|flv|mp3|aac|m4a|ogg|gif|m3u8>/...: transcoding, watermarks and "
        "HLS slicing (segtime, pattern, hlsKey + hlsKeyUrl for AES-128); jobs only."
    ),
)

AVCONCAT = OpSpec(
    name="avconcat",
    kind="av",
    raw=True,
    cost="cpu",
    sync=False,
    doc=(
        "avconcat/2/format/<fmt>/<b64 url>/<b64 url>...: the source followed by the other "
        "files, re-encoded into one; jobs only."
    ),
)

AV_SPECS: Mapping[str, OpSpec] = MappingProxyType(
    {spec.name: spec for spec in (AVINFO, VFRAME, AVTHUMB, AVCONCAT)}
)
