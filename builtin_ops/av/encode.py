"""Encoder arguments: fast presets for small machines, bitrates capped at the source's.

Presets favour speed on a 2-core worker (``libx264 -preset veryfast``,
``libvpx-vp9 -deadline realtime -cpu-used 8``), with ``-threads`` bounded.
Without a bitrate, encoders run at a constant quality; with one, it is
capped at the source stream's own bitrate, as Qiniu does: asking for more
bits than the source has only makes a bigger file of the same picture.
"""

from __future__ import annotations

from dora.builtin_ops.av.formats import COPY
from dora.builtin_ops.av.process import THREADS

# aq (0 best - 9 smallest) for encoders without a VBR scale of their own.
AQ_BITRATES = (320_000, 256_000, 224_000, 192_000, 160_000, 128_000, 112_000, 96_000, 80_000,
               64_000)  # fmt: skip


def capped(requested: int | None, source: int | None) -> int | None:
    """``requested`` bits/s, or the source's when it asks for more than the source has."""
    if requested is None:
        return None
    if source is not None and 0 < source < requested:
        return source
    return requested


def video_args(encoder: str, *, bit_rate: int | None, container: str) -> list[str]:
    """``-c:v`` and its options for ``encoder`` at ``bit_rate`` (None: constant quality)."""
    if encoder == COPY:
        return ["-c:v", COPY]
    args = ["-c:v", encoder]
    rate = [] if bit_rate is None else ["-b:v", str(bit_rate)]
    if encoder == "libx264":
        args += ["-preset", "veryfast", *(rate or ["-crf", "23"])]
    elif encoder == "libx265":
        args += ["-preset", "veryfast", *(rate or ["-crf", "28"])]
        args += ["-x265-params", f"pools={THREADS}:log-level=error"]
        if container in ("mp4", "m4a"):
            args += ["-tag:v", "hvc1"]  # what Apple's players look for
    elif encoder == "libvpx-vp9":
        args += ["-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"]
        args += rate or ["-crf", "33", "-b:v", "0"]
    elif encoder == "libvpx":
        # VP8's constant-quality mode still needs a ceiling.
        args += ["-deadline", "realtime", "-cpu-used", "8"]
        args += rate or ["-crf", "10", "-b:v", "2M"]
    elif encoder == "flv":
        args += rate or ["-q:v", "4"]
    if encoder != "gif":
        args += ["-threads", str(THREADS)]
    return args


def audio_args(
    encoder: str,
    *,
    bit_rate: int | None,
    quality: int | None,
    sample_rate: int | None,
    channels: int | None,
) -> list[str]:
    """``-c:a`` and its options: a constant ``bit_rate`` or a VBR ``quality`` (aq, 0-9)."""
    if encoder == COPY:
        return ["-c:a", COPY]
    args = ["-c:a", encoder]
    if bit_rate is not None:
        args += ["-b:a", str(bit_rate)]
    elif quality is not None:
        if encoder == "libmp3lame":
            args += ["-q:a", str(quality)]  # LAME's own V0-V9
        elif encoder == "libvorbis":
            args += ["-q:a", f"{(9 - quality) * 10 / 9:.1f}"]  # Vorbis: 10 is best
        else:
            args += ["-b:a", str(AQ_BITRATES[quality])]
    if sample_rate is not None:
        args += ["-ar", str(sample_rate)]
    if channels is not None:
        args += ["-ac", str(channels)]
    return args
