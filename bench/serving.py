"""Run a real ``dora serve`` as a child process, for end-to-end tests and benches."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    access_key: str
    secret_key: str
    registry: str

    def healthy_instances(self, service: str = "dora-builtin") -> list[dict[str, object]]:
        """The registry's passing instances, read over Consul's HTTP API."""
        url = f"http://{self.registry}/v1/health/service/{service}?passing"
        with urllib.request.urlopen(url, timeout=5) as resp:
            entries = json.load(resp)
        return [e["Service"] for e in entries]


def dora_command(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "dora.cli", *args]


@contextlib.contextmanager
def dora_serve(
    data_dir: Path,
    *,
    workers: int = 2,
    gateways: int = 1,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[Served]:
    """Start ``dora serve`` on a free port; stop it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    full_env = {**os.environ, "DORA_LOG_LEVEL": "WARNING", **(env or {})}
    log = (data_dir.parent / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        dora_command(
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--gateways",
            str(gateways),
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        start_new_session=True,
    )
    try:
        state_file = data_dir / "serve.json"
        deadline = time.monotonic() + timeout
        while not state_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(
                    "dora serve did not start:\n"
                    + (data_dir.parent / f"serve-{port}.log").read_text(errors="replace")
                )
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        keys = json.loads(
            subprocess.run(
                dora_command("keys", "--data-dir", str(data_dir), "--json"),
                check=True,
                capture_output=True,
            ).stdout
        )
        yield Served(
            proc, state["url"], data_dir, keys["access_key"], keys["secret_key"], state["registry"]
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
