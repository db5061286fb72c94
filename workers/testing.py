"""Real builtin worker processes for tests and benchmarks.

:class:`WorkerProcess` starts ``python -P -m dora.workers.server`` as a
subprocess (with the debug ops of :mod:`dora.workers.debug_ops` on by
default), waits for its ``READY <port>`` line, and stops or kills it.
:func:`sample_jpeg` makes a real JPEG to call it with.
"""

from __future__ import annotations

import asyncio
import io
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from dora.workers.debug_ops import DEBUG_OPS_ENV

READY_WITHIN = 20.0


def sample_jpeg(width: int = 640, height: int = 480, quality: int = 85) -> bytes:
    """A real JPEG of a colour gradient (so a resize has detail to work on)."""
    img = Image.linear_gradient("L").resize((width, height))
    rgb = Image.merge("RGB", (img, img.transpose(Image.Transpose.ROTATE_90).resize(img.size), img))
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class WorkerProcess:
    """One worker subprocess on 127.0.0.1 (or ``host``), on a port it picks."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        registry: tuple[str, int] | None = None,
        datacenter: str = "dc1",
        threads: int = 2,
        instance_id: str | None = None,
        env: Mapping[str, str] | None = None,
        debug_ops: bool = True,
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_file = log_file  # the worker's stderr (its log), when given
        self.host = host
        self.port = 0
        self._args = [sys.executable, "-P", "-m", "dora.workers.server", "--host", host]
        self._args += ["--port", "0", "--threads", str(threads), "--data-dir", str(data_dir)]
        if registry is not None:
            self._args += ["--registry", f"{registry[0]}:{registry[1]}"]
            self._args += ["--datacenter", datacenter]
        if instance_id is not None:
            self._args += ["--instance-id", instance_id]
        self._env = {**os.environ, DEBUG_OPS_ENV: "1" if debug_ops else "0", **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("the worker has not been started")
        return self._proc

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, within: float = READY_WITHIN) -> int:
        """Start and block until ``READY <port>``; return the port."""
        if self._proc is not None:
            raise RuntimeError("a WorkerProcess starts once")
        if self.log_file is None:
            self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, env=self._env)
        else:
            with self.log_file.open("ab") as log:
                self._proc = subprocess.Popen(
                    self._args, stdout=subprocess.PIPE, stderr=log, env=self._env
                )
        self.port = self._wait_ready(within)
        return self.port

    async def astart(self, within: float = READY_WITHIN) -> int:
        """:meth:`start` off the event loop (a registry served by this loop
        must keep answering while the worker registers)."""
        return await asyncio.to_thread(self.start, within)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` if the process still runs."""
        if self.alive:
            self.proc.send_signal(sig)

    async def astop(self, sig: int = signal.SIGTERM, within: float = 15.0) -> int:
        """Send ``sig`` and wait (off the loop) for the exit code."""
        self.send_signal(sig)
        return await asyncio.to_thread(self.proc.wait, within)

    def close(self) -> None:
        """Kill the process if it still runs and reap it; closing twice is harmless."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def _wait_ready(self, within: float) -> int:
        stdout = self.proc.stdout
        assert stdout is not None
        give_up = time.monotonic() + within
        while time.monotonic() < give_up:
            readable, _, _ = select.select([stdout], [], [], 0.1)
            if not readable:
                continue
            line = stdout.readline()
            if not line:
                break
            if line.startswith(b"READY "):
                return int(line.split()[1])
        self.close()
        raise RuntimeError(f"worker did not become ready (exit code {self.proc.returncode})")
