"""Real pieces for job tests and benchmarks: media, a notify receiver, a dispatcher process.

- :func:`make_clip` makes a real video with ffmpeg's ``lavfi`` sources, and
  :func:`ffprobe` reads one back (independently of the code under test);
- :func:`ffmpeg_pids` finds the ffmpeg processes working on a path (to see
  that a cancel killed them);
- :class:`NotifyReceiver` is an aiohttp server on 127.0.0.1 recording every
  notify POST (with its arrival time), which can fail the first N, or hang;
- :class:`DispatcherProcess` runs ``python -P -m dora.scheduler.jobserve``
  as a child process that a test can SIGKILL mid-job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

READY_WITHIN = 20.0


def ffmpeg(*args: str, timeout: float = 120.0) -> None:
    """Run ffmpeg quietly; raise if it fails."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-v", "error", "-y", *args],
        check=True,
        capture_output=True,
        timeout=timeout,
    )


def make_clip(path: Path, *, size: str = "320x240", seconds: float = 10.0, rate: int = 25) -> Path:
    """A real H.264/AAC MP4: ``testsrc2`` pictures and a 440 Hz tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc2=s={size}:r={rate}:d={seconds}"),
        *("-f", "lavfi", "-i", f"sine=f=440:sample_rate=44100:d={seconds}"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", "-b:a", "64k", str(path)),
    )
    return path


def ffprobe(path: str | Path, *extra: str) -> dict[str, Any]:
    """ffprobe's JSON about a file: format and streams."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", *extra, "-show_format", "-show_streams", "-of", "json",
         str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def ffmpeg_pids(marker: str) -> list[int]:
    """Live ffmpeg processes with ``marker`` in their command line."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if state == b"Z" or not argv or os.path.basename(argv[0]) != b"ffmpeg":
            continue
        if any(marker.encode() in arg for arg in argv):
            found.append(int(entry))
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """One notify POST as it arrived."""

    content_type: str
    body: dict[str, Any]
    answered: int  # the status the receiver answered
    at: float  # time.perf_counter() when the request reached the handler


class NotifyReceiver:
    """An HTTP server on 127.0.0.1 that records notify POSTs.

    The first ``fail_first`` POSTs are answered ``fail_status``; with
    ``hang`` every POST waits (until the server closes) without answering.
    """

    def __init__(self, *, fail_first: int = 0, fail_status: int = 500, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.received: list[Received] = []
        self.arrived = asyncio.Event()  # set on every POST
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    def accepted(self) -> list[Received]:
        """The POSTs answered 200."""
        return [r for r in self.received if r.answered == 200]

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/notify", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        body = await request.json()
        if self.hang:
            self.received.append(Received(request.content_type, body, 0, at))
            self.arrived.set()
            await asyncio.Event().wait()
        status = self.fail_status if len(self.received) < self.fail_first else 200
        self.received.append(Received(request.content_type, body, status, at))
        self.arrived.set()
        return web.json_response({"ok": status == 200}, status=status)

    async def wait_for(self, count: int, within: float) -> list[Received]:
        """Wait until ``count`` POSTs were answered 200."""
        async with asyncio.timeout(within):
            while len(self.accepted()) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.accepted()


class DispatcherProcess:
    """``python -P -m dora.scheduler.jobserve`` as a child process."""

    def __init__(
        self,
        data_dir: Path,
        registry: tuple[str, int],
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self._argv = [sys.executable, "-P", "-m", "dora.scheduler.jobserve"]
        self._argv += ["--data-dir", str(data_dir), "--registry", f"{registry[0]}:{registry[1]}"]
        self._argv += list(args)
        self._env = {**os.environ, **(env or {})}
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("the dispatcher has not been started")
        return self._proc

    def start(self, within: float = READY_WITHIN) -> None:
        """Start and block until it prints ``READY``."""
        if self._proc is not None:
            raise RuntimeError("a DispatcherProcess starts once")
        stderr = self._log.open("ab") if self._log is not None else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                self._argv, stdout=subprocess.PIPE, stderr=stderr, env=self._env
            )
        finally:
            if self._log is not None:
                stderr.close()  # type: ignore[union-attr]
        stdout = self.proc.stdout
        assert stdout is not None
        give_up = time.monotonic() + within
        while time.monotonic() < give_up:
            if select.select([stdout], [], [], 0.1)[0]:
                line = stdout.readline()
                if not line:
                    break
                if line.strip() == b"READY":
                    return
        self.close()
        raise RuntimeError(f"the dispatcher did not start (exit code {self.proc.returncode})")

    async def astart(self, within: float = READY_WITHIN) -> None:
        """:meth:`start` off the event loop (a registry on this loop must answer)."""
        await asyncio.to_thread(self.start, within)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)

    async def astop(self, within: float = 30.0) -> int:
        """SIGTERM and wait (off the loop) for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, within)

    def close(self) -> None:
        """Kill it if it still runs and reap it; harmless twice."""
        if self._proc is None:
            return
        self.kill()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
