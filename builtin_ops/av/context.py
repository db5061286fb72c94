"""What one audio/video op runs under: its deadline, cancel signal, progress sink.

An :class:`AvContext` is made once per op by :func:`dora.builtin_ops.av.run_av`
and handed down to every child process the op starts, so that the probe, the
encode passes and the muxing all share a single deadline and a single cancel
event. It also knows which local paths to hide from error messages: a client
sees ``input`` where ffmpeg printed the worker's file name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

from dora.config import Limits
from dora.errors import BadRequest

ProgressSink = Callable[[float], None]
UrlResolver = Callable[[str], str]


class CancelFlag(Protocol):
    """What tells an op to stop: a :class:`threading.Event`, or :class:`AnyOf` them."""

    def is_set(self) -> bool: ...


class AnyOf:
    """Set as soon as any of its flags is (a run stopped by its caller or by its own logic)."""

    def __init__(self, *flags: CancelFlag | None) -> None:
        self._flags = [flag for flag in flags if flag is not None]

    def is_set(self) -> bool:
        return any(flag.is_set() for flag in self._flags)


@dataclasses.dataclass(frozen=True, slots=True)
class AvContext:
    """The bounds and hooks of one op run."""

    op: str
    limits: Limits
    timeout: float  # seconds, for messages
    deadline: float  # time.monotonic() past which the op's processes are killed
    cancel: CancelFlag | None = None
    progress: ProgressSink | None = None
    resolve_url: UrlResolver | None = None
    # (local path, public name) pairs replaced in every error message.
    scrub: tuple[tuple[str, str], ...] = ()

    @classmethod
    def start(
        cls,
        op: str,
        limits: Limits,
        timeout: float,
        *,
        cancel: CancelFlag | None = None,
        progress: ProgressSink | None = None,
        resolve_url: UrlResolver | None = None,
        scrub: tuple[tuple[str, str], ...] = (),
    ) -> AvContext:
        """A context whose deadline is ``timeout`` seconds from now."""
        return cls(
            op,
            limits,
            timeout,
            time.monotonic() + timeout,
            cancel,
            progress,
            resolve_url,
            scrub,
        )

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def public(self, text: str) -> str:
        """``text`` with the worker's local paths replaced by public names."""
        # Longest first, so that a file inside a scrubbed directory keeps its own name.
        for path, name in sorted(self.scrub, key=lambda pair: -len(pair[0])):
            if path:
                text = text.replace(f"file:{path}", name).replace(path, name)
        return text

    def with_progress(self, progress: ProgressSink | None) -> AvContext:
        """The same context reporting progress to another sink (a pass of a multi-pass op)."""
        return dataclasses.replace(self, progress=progress)

    def report(self, percent: float) -> None:
        """Report progress, 0-100, if anyone listens."""
        if self.progress is not None:
            self.progress(max(0.0, min(100.0, percent)))


def scaled(sink: ProgressSink | None, start: float, end: float) -> ProgressSink | None:
    """A sink mapping 0-100 onto ``start``-``end`` of ``sink`` (one pass of several)."""
    if sink is None:
        return None
    span = end - start

    def report(percent: float) -> None:
        sink(start + span * percent / 100.0)

    return report


def resolve(ctx: AvContext, what: str, url: str) -> str:
    """A local path for ``url`` through the context's resolver; 400 without one."""
    if ctx.resolve_url is None:
        raise BadRequest(f"{ctx.op}: {what}: this worker cannot fetch URLs")
    return ctx.resolve_url(url)
