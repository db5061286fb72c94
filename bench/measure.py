"""One measured load run, its context, re-runs when disturbed, and summaries.

A run is one ``wrk`` pass over a scenario's paths against a running server,
with the server's process tree sampled meanwhile. Beside requests/s and
latency it records what else the machine did: the whole machine's busy CPU
(``/proc/stat``) minus the server's and ``wrk``'s own is CPU taken by
*foreign* processes. On a shared machine that share is what makes a result
suspect; a run whose foreign share exceeds the limit is done again (a few
times at most) and the least disturbed attempt is kept, flagged if still
disturbed.
"""

from __future__ import annotations

import io
import statistics
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import run_wrk, write_script
from PIL import Image
from procs import Classifier, TreeSampler, loadavg, machine_cpu, wait_idle

SUMMARY_KEYS = (
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "peak_rss_mib",
    "server_cpu_ms_per_request",
    "wrk_cpu_share",
    "foreign_cpu_share",
)


@dataclass(frozen=True)
class LoadSettings:
    """How every load run is made."""

    connections: int = 16
    duration: float = 15.0
    warmup: float = 3.0
    retries: int = 2  # extra attempts when a run looks disturbed
    disturbed_share: float = 0.10  # foreign CPU share of the machine above this: disturbed
    retry_pause: float = 10.0  # seconds to let a foreign burst pass before a re-run
    sample_interval: float = 0.5


@dataclass(frozen=True)
class Target:
    """A running server as the measurement sees it."""

    url: str
    root_pid: int
    classify: Classifier


def measure_once(target: Target, script: Path, settings: LoadSettings) -> dict[str, Any]:
    """One wrk run with the server's tree and the machine's CPU watched."""
    load_before = loadavg()
    with (
        TreeSampler(target.root_pid, settings.sample_interval, target.classify) as sampler,
        machine_cpu() as machine,
    ):
        wrk = run_wrk(
            target.url, script, connections=settings.connections, duration=settings.duration
        )
    server_cpu = sampler.cpu_seconds()
    capacity = machine["capacity_s"] or 1.0
    foreign = max(0.0, machine["busy_s"] - server_cpu - wrk.wrk_cpu_s)
    peak_by_role: dict[str, float] = {}
    for sample in sampler.samples:
        for role, kib in sample.rss_kib.items():
            peak_by_role[role] = max(peak_by_role.get(role, 0.0), round(kib / 1024, 1))
    return {
        **wrk.as_dict(),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, wrk.requests), 2),
        "server_cpu_ms_per_request_by_role": {
            role: round(1000 * cpu / max(1, wrk.requests), 2)
            for role, cpu in sampler.cpu_seconds_by_role().items()
        },
        "peak_rss_mib": sampler.peak_mib(),
        "peak_rss_by_role_mib": peak_by_role,
        "wrk_cpu_share": round(wrk.wrk_cpu_s / max(wrk.wall_s, 1e-9), 3),
        "machine_busy_share": round(machine["busy_s"] / capacity, 3),
        "foreign_cpu_share": round(foreign / capacity, 3),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def measure(
    target: Target, paths: Sequence[str], settings: LoadSettings, work: Path, *, warmup: bool = True
) -> dict[str, Any]:
    """Warm up, then measure; re-run while disturbed (at most ``retries`` more times).

    Returns the least disturbed attempt, with ``attempts`` and ``disturbed``.
    """
    script = write_script(list(paths), work / "paths.lua")
    if warmup and settings.warmup > 0:
        run_wrk(target.url, script, connections=settings.connections, duration=settings.warmup)
    attempts: list[dict[str, Any]] = []
    for attempt in range(1 + settings.retries):
        if attempt:
            time.sleep(settings.retry_pause)
        drained = wait_idle(target.root_pid)  # the warm-up's (or last run's) requests
        run = measure_once(target, script, settings)
        run["drained_before_s"] = drained
        attempts.append(run)
        if run["foreign_cpu_share"] <= settings.disturbed_share and run["non_2xx"] == 0:
            break
    wait_idle(target.root_pid)  # nothing spills into the next scenario
    best = min(attempts, key=lambda r: (r["non_2xx"] > 0, r["foreign_cpu_share"]))
    best["attempts"] = len(attempts)
    best["disturbed"] = best["foreign_cpu_share"] > settings.disturbed_share
    return best


def undisturbed(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if not r.get("disturbed")]


def summarize(runs: Sequence[dict[str, Any]], keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """Median, min and max of each key over the undisturbed runs (all, if none is).

    Another process taking the CPU says nothing about the server, so such
    runs are kept in the results but left out of the figures when possible.
    """
    basis = undisturbed(runs) or list(runs)
    out: dict[str, Any] = {
        "runs": len(runs),
        "undisturbed_runs": len(undisturbed(runs)),
        "basis": "undisturbed runs" if undisturbed(runs) else "all runs (every run disturbed)",
    }
    for key in keys:
        values = [float(r[key]) for r in basis if key in r]
        if values:
            out[key] = {
                "median": round(statistics.median(values), 3),
                "min": round(min(values), 3),
                "max": round(max(values), 3),
            }
    out["errors"] = sum(int(r.get("non_2xx", 0)) + int(r.get("socket_errors", 0)) for r in runs)
    return out


def fetch(url: str, timeout: float = 30.0) -> tuple[int, str, bytes]:
    """GET ``url``: (status, content type, body)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def describe_outputs(base: str, paths: Sequence[str]) -> dict[str, Any]:
    """Fetch some outputs: their format, dimensions and mean size in bytes."""
    sizes: list[int] = []
    dims: set[tuple[int, int]] = set()
    formats: set[str] = set()
    first = b""
    for path in paths:
        _, _, body = fetch(base + path)
        first = first or body
        sizes.append(len(body))
        with Image.open(io.BytesIO(body)) as image:
            dims.add(image.size)
            formats.add(image.format or "?")
    return {
        "format": "/".join(sorted(formats)),
        "dimensions": [list(d) for d in sorted(dims)],
        "mean_bytes": round(statistics.mean(sizes)),
        "samples": len(sizes),
        "_first": first,  # kept in memory only, to compare the servers' pixels
    }
