"""Start ffmpeg while the source is still being probed, when the probe would not change a thing.

A transcode's ffmpeg arguments come from the source's probe, and an ffprobe
costs about 0.1 s however small the file — nearly all of it Debian's
ffprobe loading its two hundred shared libraries. On a short clip that is a
large share of the op. Yet for most stages the probe only confirms what a
typical source looks like: a video stream first, an audio stream second.

So :func:`run_planned` plans from that *guess* (:data:`GUESS`), starts
ffmpeg at once and probes in a thread meanwhile. When the probe answers,
the plan is made again from it:

- the same arguments: ffmpeg goes on; the probe cost nothing;
- other arguments: ffmpeg is stopped, what it wrote is removed, and the
  real plan runs;
- the probe or the real plan fails (not media, ``ss`` past the end):
  ffmpeg is stopped and that error is raised.

Every outcome is therefore what probing first would have given — the
arguments that run to the end are always those of the real probe — only
sooner when the guess holds. A source already probed (the probe cache) runs
its real plan at once, and stages whose planning has side effects or reads
the probe's numbers (watermark files, bitrate caps, GIF's two passes: see
:func:`speculative`) are not guessed at.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from dora.builtin_ops.av.context import AnyOf, AvContext
from dora.builtin_ops.av.probe import AudioStream, MediaInfo, VideoStream, probe, remembered
from dora.builtin_ops.av.process import run_ffmpeg
from dora.errors import DoraError
from dora.fop import Stage

__all__ = ["GUESS", "run_planned", "speculative"]

P = TypeVar("P")

GUESS = MediaInfo(
    raw={},
    format_name="",
    duration=None,
    bit_rate=None,
    video=VideoStream(0, "", 0, 0, 0, None, None),
    audio=AudioStream(1, "", None, None, None),
)
"""A typical source: video first, audio second, nothing else known."""

# Arguments whose planning writes files or fetches them (watermarks), or
# depends on the source's numbers (bitrate caps): a guess would be wasted.
_PLANNED_FROM_SOURCE = frozenset({"wmImage", "wmText", "vb", "ab"})


def speculative(stage: Stage, box_name: str) -> bool:
    """Whether ``stage`` may start on :data:`GUESS` (see the module doc)."""
    return box_name != "gif" and not _PLANNED_FROM_SOURCE.intersection(stage.args)


@dataclasses.dataclass
class _Verdict(Generic[P]):
    """What the probe thread found: the real plan and its arguments, or an error."""

    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    plan: P | None = None
    argv: list[str] | None = None
    duration: float | None = None  # set once the guess is known to hold
    error: BaseException | None = None


def run_planned(
    src: str,
    ctx: AvContext,
    plan_for: Callable[[MediaInfo], P],
    argv_of: Callable[[P], list[str]],
    duration_of: Callable[[P], float | None],
    *,
    speculate: bool,
    out_dir: str,
    cwd: str | None = None,
) -> P:
    """Probe ``src``, plan from it, run ffmpeg with the plan's arguments; return the plan.

    With ``speculate``, ffmpeg starts on :data:`GUESS` while the probe runs
    (module doc). ``out_dir``: where ffmpeg writes; files it wrote there on a
    wrong guess are removed before the real run.
    """
    if not speculate or remembered(src) is not None:  # probe() answers from its cache
        plan = plan_for(probe(src, ctx))
        run_ffmpeg(argv_of(plan), ctx, duration=duration_of(plan), cwd=cwd)
        return plan
    try:
        guess = argv_of(plan_for(GUESS))
    except DoraError:  # the guess cannot even be planned: probe first, as usual
        return run_planned(
            src, ctx, plan_for, argv_of, duration_of, speculate=False, out_dir=out_dir, cwd=cwd
        )
    verdict: _Verdict[P] = _Verdict()

    def judge() -> None:
        try:
            real = plan_for(probe(src, ctx))
            argv = argv_of(real)
        except BaseException as exc:  # raised in the op's thread, below
            verdict.error = exc
            verdict.stop.set()
            return
        verdict.plan, verdict.argv = real, argv
        if argv == guess:
            verdict.duration = duration_of(real)  # progress can be told from now on
        else:
            verdict.stop.set()

    before = set(_listing(out_dir))
    prober = threading.Thread(target=judge, name="dora-av-probe", daemon=True)
    prober.start()
    failure: DoraError | None = None
    try:
        run_ffmpeg(
            guess,
            dataclasses.replace(ctx, cancel=AnyOf(ctx.cancel, verdict.stop)),
            duration=lambda: verdict.duration,
            cwd=cwd,
        )
    except DoraError as exc:
        failure = exc
    finally:
        prober.join()  # bounded: the probe shares the op's deadline and cancel
    if verdict.error is not None:  # as if the probe had run first: no output, its error
        _remove_new(out_dir, before)
        raise verdict.error
    assert verdict.plan is not None and verdict.argv is not None
    if verdict.argv != guess:
        _remove_new(out_dir, before)
        run_ffmpeg(verdict.argv, ctx, duration=duration_of(verdict.plan), cwd=cwd)
    elif failure is not None:
        raise failure
    return verdict.plan


def _listing(folder: str) -> Sequence[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return ()


def _remove_new(folder: str, before: set[str]) -> None:
    """Remove what a stopped run wrote in ``folder`` (files that were not there before)."""
    for name in set(_listing(folder)) - before:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
