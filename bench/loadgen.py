"""Drive a server with ``wrk`` over a list of paths, round-robin.

``wrk`` (Debian's package) is written in C; with one thread (``-t1``) it
costs a few percent of one core at these request rates, and the suite
records its CPU time beside every result so that cost stays in view. A Lua
script hands out the given paths in order, so consecutive requests hit
distinct source objects and no server can coalesce or cache them.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_LUA = """
paths = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""


def wrk_version() -> str:
    """``wrk -v`` first line (``wrk`` prints it and exits non-zero)."""
    exe = shutil.which("wrk")
    if exe is None:
        return "missing"
    done = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def _lua_string(text: str) -> str:
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"path not usable in the wrk script: {text!r}")
    return f'"{text}"'


def write_script(paths: list[str], where: Path) -> Path:
    """A wrk Lua script that requests ``paths`` round-robin."""
    if not paths:
        raise ValueError("no paths to request")
    where.write_text(_LUA % ", ".join(_lua_string(p) for p in paths))
    return where


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"wrk latency not understood: {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return {"us": value / 1000, "ms": value, "s": value * 1000, "m": value * 60000}[unit]


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests_per_s: float
    requests: int
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    wrk_cpu_s: float
    wall_s: float

    @property
    def clean(self) -> bool:
        """No error responses and no socket errors."""
        return self.non_2xx == 0 and self.socket_errors == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse(out: str, wrk_cpu_s: float, wall_s: float) -> WrkResult:
    """Read wrk's ``--latency`` report."""

    def grab(pattern: str) -> str:
        match = re.search(pattern, out)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
        return match.group(1)

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return WrkResult(
        requests_per_s=float(grab(r"Requests/sec:\s+([0-9.]+)")),
        requests=int(grab(r"(\d+) requests in")),
        p50_ms=round(_ms(grab(r"\s50%\s+(\S+)")), 2),
        p75_ms=round(_ms(grab(r"\s75%\s+(\S+)")), 2),
        p90_ms=round(_ms(grab(r"\s90%\s+(\S+)")), 2),
        p99_ms=round(_ms(grab(r"\s99%\s+(\S+)")), 2),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(v) for v in sockets.groups()) if sockets else 0,
        wrk_cpu_s=round(wrk_cpu_s, 2),
        wall_s=round(wall_s, 2),
    )


def run_wrk(
    base_url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    timeout_s: float = 10.0,
) -> WrkResult:
    """One wrk run (one thread) of ``duration`` seconds against ``base_url``."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "--latency",
        "-s",
        str(script),
        base_url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=duration + timeout_s + 30
    )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return parse(done.stdout, cpu, wall)
