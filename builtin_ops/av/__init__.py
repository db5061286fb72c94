"""Audio and video ops on ffmpeg and ffprobe: avinfo, vframe, avthumb (+ HLS), avconcat.

:data:`AV_SPECS` declares their arguments (safe to import anywhere: no
ffmpeg is run to validate); :func:`run_av` runs one stage in the calling
thread, ffmpeg as a bounded, killable child process.
"""

from dora.builtin_ops.av.run import JOB_TIMEOUT, run_av, validate_av_stage
from dora.builtin_ops.av.specs import AV_SPECS

__all__ = ["AV_SPECS", "JOB_TIMEOUT", "run_av", "validate_av_stage"]
