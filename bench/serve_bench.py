"""Throughput and latency of processing URLs through a real ``dora serve``.

Starts ``dora serve`` with the result cache off, uploads distinct photo-like
JPEGs (different content, so identical in-flight requests never coalesce and
every request is really processed), drives them round-robin with ``wrk`` (C,
one thread, so the load generator costs little CPU) under N concurrent
connections, and reports requests/s and p50/p99 latency beside the
pure-Pillow bound measured in the same run.

    .venv/bin/python bench/serve_bench.py --duration 20 --json bench/results/serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import qiniu
from images import make_photo_jpeg
from pillow_bound import measure_bound
from serving import Served, dora_serve

SCENARIOS = {
    "cover-crop-300x200": "imageView2/1/w/300/h/200",
    "fit-300x200": "imageView2/2/w/300/h/200",
}
SOURCES = {"1920x1080": (1920, 1080), "4000x3000": (4000, 3000)}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(text)
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local path = string.format("/bench/%s-%d.jpg?%s", "{prefix}", counter % {count}, "{fop}")
  return wrk.format("GET", path)
end
"""


def run_wrk(
    base: str, prefix: str, count: int, fop: str, connections: int, duration: int, work: Path
) -> dict[str, float]:
    """Run wrk over ``count`` distinct objects round-robin; return req/s, p50/p99 in ms,
    errors and wrk's own CPU seconds."""
    script = work / "round_robin.lua"
    script.write_text(WRK_SCRIPT.format(prefix=prefix, count=count, fop=fop))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    out = subprocess.run(
        [*cmd, "-s", str(script), base], check=True, capture_output=True, text=True
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "requests_per_s": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
        "wrk_cpu_s": round(cpu, 2),
    }


def upload(srv: Served, bucket: str, key: str, data: bytes) -> None:
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    region = qiniu.Region(up_host=srv.url, up_host_backup=srv.url, io_host=srv.url)
    _, info = qiniu.put_data(auth.upload_token(bucket, key), key, data, regions=[region])
    if info.status_code != 200:
        raise RuntimeError(f"upload failed: {info}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--objects", type=int, default=64, help="distinct source photos")
    parser.add_argument("--sources", default="1920x1080", help="comma list of " + ",".join(SOURCES))
    parser.add_argument("--json", type=Path, help="write results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cores": cores,
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "command": " ".join(sys.argv),
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "workers": args.workers,
            "result_cache": "off",
        },
        "scenarios": [],
    }
    work = Path(tempfile.mkdtemp(prefix="dora-bench-"))
    env = {"DORA_RESULT_CACHE_BYTES": "0", "DORA_LOG_LEVEL": "WARNING"}
    try:
        with dora_serve(work / "data", workers=args.workers, env=env) as srv:
            for source in args.sources.split(","):
                width, height = SOURCES[source]
                prefix = f"photo-{source}-{uuid.uuid4().hex[:6]}"
                for index in range(args.objects):
                    photo = make_photo_jpeg(width, height, seed=index + 1)
                    upload(srv, "bench", f"{prefix}-{index}.jpg", photo)
                for name, fop in SCENARIOS.items():
                    url = f"{srv.url}/bench/{prefix}-0.jpg?{fop}"
                    with urllib.request.urlopen(url) as resp:  # warm up, check it works
                        out_bytes = len(resp.read())
                    dora = run_wrk(
                        srv.url, prefix, args.objects, fop, args.connections, args.duration, work
                    )
                    bound = measure_bound(photo, fop, seconds=min(10.0, args.duration / 2))
                    ideal = bound["images_per_s_per_core"] * cores
                    row = {
                        "source": source,
                        "scenario": name,
                        "fop": fop,
                        "output_bytes": out_bytes,
                        "dora": dora,
                        "pillow_bound_per_core": bound["images_per_s_per_core"],
                        "efficiency": round(dora["requests_per_s"] / ideal, 3),
                    }
                    results["scenarios"].append(row)
                    print(
                        f"{source} {name:20s} dora {dora['requests_per_s']:7.1f} req/s  "
                        f"p50 {dora['p50_ms']:6.1f} ms  p99 {dora['p99_ms']:6.1f} ms  "
                        f"bound {ideal:6.1f}/s ({cores} cores)  "
                        f"efficiency {row['efficiency']:.0%}  wrk cpu {dora['wrk_cpu_s']}s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
