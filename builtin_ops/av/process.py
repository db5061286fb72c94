"""Running ffmpeg and ffprobe as child processes: bounded, killable, observed.

A tool runs from an argument list (never a shell) in a session of its own,
so that its process group is its own: a deadline or a cancel kills the whole
group, whatever the tool started. Its stderr is kept to a bounded tail and
summarised into the error; ffmpeg's ``-progress pipe:1`` report on stdout
becomes a percentage. What escapes is a :class:`~dora.errors.DoraError`::

    deadline passed                 ProcessingFailed (599) "<op>: timed out after N s"
    cancel event set                ProcessingFailed (599) "<op>: cancelled"
    tool not installed              ProcessingFailed (599)
    ffmpeg rejects the input        BadRequest (400) "invalid media: <ffmpeg's reason>"
    any other ffmpeg failure        ProcessingFailed (599) "<op>: ffmpeg failed: <reason>"
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from dora.builtin_ops.av.context import AvContext
from dora.errors import BadRequest, DoraError, ProcessingFailed

STDERR_TAIL = 64 * 1024  # bytes of stderr kept for the error message
STDOUT_LIMIT = 16 * 1024 * 1024  # bytes of stdout collected (ffprobe's JSON)
LINE_LIMIT = 4096  # a progress line longer than this is garbage, dropped
POLL = 0.05  # seconds between checks of the cancel event
CHUNK = 65536
REAP_GRACE = 5.0  # seconds to wait for a SIGKILLed group leader to be reaped

# Bounded parallelism: a worker runs one process per core already.
THREADS = 2

# ffmpeg's words for an input it cannot make sense of: these failures are the
# client's (400), everything else is ours (599).
_INVALID_MEDIA = (
    "invalid data found",
    "moov atom not found",
    "could not find codec parameters",
    "error while decoding",
    "invalid nal unit",
    "corrupt",
    "truncat",
    "end of file",
    "does not contain any stream",
    "format not on whitelist",
    "unknown format",
    "invalid frame",
    "error splitting the input",
    "no frame",
    "header missing",
)
# ...and for a parameter value it refuses (a colour name, a size).
_INVALID_ARGUMENT = ("cannot find color", "unable to parse option value", "invalid size")
_ADDRESS = re.compile(r"\[([^\]@]+?) @ 0x[0-9a-f]+\]\s*")
_WHITELIST = re.compile(r"Format not on whitelist '[^']*'")
_NOISE = ("conversion failed!", "exiting normally", "error opening output files")

LineSink = Callable[[bytes], None]
Duration = float | Callable[[], float | None] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Completed:
    """A tool that ran to its end (whatever its exit status)."""

    returncode: int
    stdout: bytes
    stderr: bytes  # the last STDERR_TAIL bytes


def tool(name: str) -> str:
    """The path of ``ffmpeg`` or ``ffprobe``; 599 if it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise ProcessingFailed(f"{name} is not installed on this worker")
    return path


def run_process(
    argv: Sequence[str],
    ctx: AvContext,
    *,
    on_line: LineSink | None = None,
    stdout_limit: int = STDOUT_LIMIT,
    cwd: str | None = None,
) -> Completed:
    """Run ``argv`` within ``ctx``'s deadline, killed with its group on timeout or cancel.

    Lines of stdout go to ``on_line`` when given (and are not kept); otherwise
    stdout is collected, up to ``stdout_limit`` bytes. ``cwd``: the directory
    relative names are in.
    """
    check_time(ctx)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as one
            close_fds=True,
            cwd=cwd,
        )
    except OSError as exc:
        raise ProcessingFailed(
            f"{ctx.op}: cannot start {os.path.basename(argv[0])}: {exc}"
        ) from exc
    try:
        name = os.path.basename(argv[0])
        stdout, stderr = _communicate(proc, ctx, name, on_line, stdout_limit)
        returncode = _wait_for_exit(proc, ctx)
        return Completed(returncode, stdout, stderr)
    finally:
        _kill_group(proc)


def check_time(ctx: AvContext) -> None:
    """Raise 599 when the op was cancelled or its deadline has passed."""
    if ctx.cancelled:
        raise ProcessingFailed(f"{ctx.op}: cancelled")
    if ctx.remaining() <= 0:
        raise ProcessingFailed(f"{ctx.op}: timed out after {ctx.timeout:g} s")


def _communicate(
    proc: subprocess.Popen[bytes],
    ctx: AvContext,
    name: str,
    on_line: LineSink | None,
    stdout_limit: int,
) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    pending = bytearray()
    tail = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "out")
        selector.register(proc.stderr, selectors.EVENT_READ, "err")
        stragglers_killed = False
        while selector.get_map():
            check_time(ctx)
            if not stragglers_killed and _leader_exited(proc):
                # Whatever it left behind may hold the pipes open: end it, then drain.
                _kill_stragglers(proc)
                stragglers_killed = True
            for key, _ in selector.select(min(POLL, max(ctx.remaining(), 0.0))):
                chunk = os.read(key.fd, CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "err":
                    tail += chunk
                    del tail[:-STDERR_TAIL]
                elif on_line is not None:
                    pending += chunk
                    _emit_lines(pending, on_line)
                else:
                    out += chunk
                    if len(out) > stdout_limit:
                        raise ProcessingFailed(
                            f"{ctx.op}: {name} wrote more than {stdout_limit} bytes"
                        )
    return bytes(out), bytes(tail)


def _emit_lines(pending: bytearray, on_line: LineSink) -> None:
    while True:
        end = pending.find(b"\n")
        if end < 0:
            if len(pending) > LINE_LIMIT:
                pending.clear()
            return
        line = bytes(pending[:end]).strip()
        del pending[: end + 1]
        if line:
            on_line(line)


def _wait_for_exit(proc: subprocess.Popen[bytes], ctx: AvContext) -> int:
    """Wait for the leader to exit, then kill what it left in its group, then reap it.

    The leader is left unreaped (``WNOWAIT``) while its group is killed, so its
    pid, which is the group's id, cannot have been reused by then.
    """
    while not _leader_exited(proc):
        check_time(ctx)
        time.sleep(min(0.01, max(ctx.remaining(), 0.0)))
    _kill_stragglers(proc)
    return proc.wait()


def _leader_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the group leader has exited; it stays unreaped (a zombie) if so."""
    if proc.returncode is not None:
        return True
    try:
        state = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # someone else reaped it (a waitpid(-1) elsewhere)
        return True
    return state is not None


def _kill_stragglers(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the group of an exited but unreaped leader (safe: its pid is not reusable)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group of an unreaped leader and reap it; close its pipes."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=REAP_GRACE)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def summarise(ctx: AvContext, stderr: bytes, *, lines: int = 3, limit: int = 400) -> str:
    """The last meaningful lines of a tool's stderr, without addresses or local paths."""
    kept: list[str] = []
    for raw in stderr.decode("utf-8", "replace").splitlines():
        line = _ADDRESS.sub(r"\1: ", raw).strip()
        line = _WHITELIST.sub("format not on whitelist (it refers to other files)", line)
        if not line or line.lower().startswith(_NOISE):
            continue
        line = ctx.public(line)
        if not kept or kept[-1] != line:
            kept.append(line)
    text = "; ".join(kept[-lines:])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure(ctx: AvContext, name: str, done: Completed) -> DoraError:
    """The error for a tool that exited with a non-zero status."""
    reason = summarise(ctx, done.stderr) or f"exit status {done.returncode}"
    lowered = reason.lower()
    if any(marker in lowered for marker in _INVALID_ARGUMENT):
        return BadRequest(f"{ctx.op}: {reason}")
    if any(marker in lowered for marker in _INVALID_MEDIA):
        return BadRequest(f"invalid media: {reason}")
    return ProcessingFailed(f"{ctx.op}: {name} failed: {reason}")


class _Progress:
    """Turns ffmpeg's ``key=value`` progress lines into percentages of ``duration``."""

    def __init__(self, ctx: AvContext, duration: Duration) -> None:
        self._ctx = ctx
        self._duration = duration
        self._last = -1.0

    def line(self, line: bytes) -> None:
        key, _, value = line.partition(b"=")
        if key != b"out_time_us":
            return
        duration = self._duration() if callable(self._duration) else self._duration
        if not duration or duration <= 0:
            return
        try:
            done_us = int(value)
        except ValueError:  # "N/A" before the first frame
            return
        # 100 is said once the output is complete and checked, not here.
        percent = min(99.0, 100.0 * done_us / (duration * 1e6))
        if percent >= self._last + 1.0:
            self._last = percent
            self._ctx.report(percent)


def run_ffmpeg(
    args: Sequence[str],
    ctx: AvContext,
    *,
    duration: Duration = None,
    cwd: str | None = None,
) -> None:
    """Run ffmpeg with ``args``, reporting progress against ``duration`` seconds of
    output (or a function answering it, once it is known)."""
    argv = [
        tool("ffmpeg"),
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "error",
        "-progress",
        "pipe:1",
        "-stats_period",
        "0.5",
        "-y",
        *args,
    ]
    progress = _Progress(ctx, duration)
    done = run_process(argv, ctx, on_line=progress.line, cwd=cwd)
    if done.returncode != 0:
        raise failure(ctx, "ffmpeg", done)
