"""Dora's benchmark suite: the Pillow bound, Dora against thumbor, overhead, memory.

Run it through ``scripts/bench`` (which installs wrk, thumbor and matplotlib
in their own environments first); by hand, from the repository root::

    .venv/bin/python bench/suite.py [--quick] [--only peers,bound,overhead,memory]

Each kind of run writes one JSON file (date, machine, load, exact command,
versions, settings, every measured run) into the results folder, then
``summary.md`` and the PNG plots are rebuilt from all the files there. One
server runs at a time; see bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bound_run import measure_all
from measure import LoadSettings
from memory_run import run_memory
from overhead import run_overhead
from peers import PeerPlan, compare, rebound
from report import load, target_lines, write_summary
from runinfo import finish, header
from sessions import Servers, ensure_photos

BENCH = Path(__file__).resolve().parent
KINDS = ("bound", "peers", "overhead", "memory")

FULL = {
    "runs": 3,
    "duration": 15.0,
    "warmup": 3.0,
    "objects": 64,
    "bound_seconds": 5.0,
    "tune_duration": 8.0,
    "tune_sessions": 2,
    "thumbor_threadpools": "0,2,4,8",
    "dora_gateways": "1,2",
    "memory_seconds": 300.0,
    "memory_interval": 5.0,
    "retries": 2,
}
QUICK = {
    "runs": 1,
    "duration": 4.0,
    "warmup": 2.0,
    "objects": 32,
    "bound_seconds": 1.0,
    "tune_duration": 2.0,
    "tune_sessions": 1,
    "thumbor_threadpools": "0,2",
    "dora_gateways": "1,2",
    "memory_seconds": 20.0,
    "memory_interval": 1.0,
    "retries": 0,
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="everything short: a smoke check")
    parser.add_argument("--only", default=",".join(KINDS), help="comma list of " + ",".join(KINDS))
    parser.add_argument("--runs", type=int, help="runs per scenario (3; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per load run (15; quick 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each run (3)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--objects", type=int, help="distinct source photos per size (64)")
    parser.add_argument("--bound-seconds", type=float, help="per bound measurement (5)")
    parser.add_argument("--tune-duration", type=float, help="seconds per tuning run (8)")
    parser.add_argument("--tune-sessions", type=int, help="sessions per tuned value (2)")
    parser.add_argument("--thumbor-threadpools", help="ENGINE_THREADPOOL_SIZE values to try")
    parser.add_argument("--dora-gateways", help="gateway process counts to try")
    parser.add_argument("--memory-seconds", type=float, help="mixed-load duration (300)")
    parser.add_argument("--memory-interval", type=float, help="RSS sample interval (5 s)")
    parser.add_argument("--retries", type=int, help="re-runs of a disturbed run (2)")
    parser.add_argument(
        "--disturbed-share",
        type=float,
        default=0.10,
        help="foreign CPU share of the machine above which a run is disturbed (0.10)",
    )
    parser.add_argument("--work", type=Path, default=BENCH / "work")
    parser.add_argument("--out", type=Path, help="results folder (bench/results; quick: work)")
    parser.add_argument("--thumbor-venv", type=Path, help="default <work>/venv-thumbor")
    parser.add_argument("--tools-venv", type=Path, help="matplotlib; default <work>/venv-tools")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or (args.work / "results-quick" if args.quick else BENCH / "results")
    args.thumbor_venv = args.thumbor_venv or args.work / "venv-thumbor"
    args.tools_venv = args.tools_venv or args.work / "venv-tools"
    args.kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if args.objects < 2 * args.connections:
        # fewer distinct objects than requests in flight lets a server coalesce them
        parser.error(f"--objects must be at least 2 × connections ({2 * args.connections})")
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    return args


def _load_settings(args: argparse.Namespace, duration: float) -> LoadSettings:
    return LoadSettings(
        connections=args.connections,
        duration=duration,
        warmup=args.warmup,
        retries=args.retries,
        disturbed_share=args.disturbed_share,
    )


def _bound_map(out: Path, part: str | None = None) -> tuple[dict[str, float], str | None]:
    """Median img/s per core by scenario, and when measured: of the bound measured
    first, or of ``part`` ("after": the measurement after the comparison)."""
    bound = load(out, "bound.json")
    if bound is not None and part is not None:
        bound = bound.get(part)
    if bound is None:
        return {}, None
    rows = {r["scenario"]: r["img_per_s_per_core"]["median"] for r in bound["scenarios"]}
    return rows, bound["started"]


def plots(args: argparse.Namespace) -> None:
    python = args.tools_venv / "bin" / "python"
    if not python.exists():
        print(f"no plots: {python} missing (scripts/bench installs matplotlib there)")
        return
    subprocess.run([str(python), str(BENCH / "plots.py"), str(args.out)], check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is needed (apt-get install wrk; scripts/bench does it)", file=sys.stderr)
        return 2
    needs_peer = {"peers", "overhead"} & set(args.kinds)
    if needs_peer and not (args.thumbor_venv / "bin" / "thumbor").exists():
        print(
            f"thumbor missing in {args.thumbor_venv} (scripts/bench installs it)", file=sys.stderr
        )
        return 2
    cores = os.cpu_count() or 1
    run_dir = args.work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh Dora data dir each time
    run_dir.mkdir(parents=True)
    files = ensure_photos(args.work / "images", args.objects, cores)
    servers = Servers(run_dir, args.work / "images", files, args.thumbor_venv, cores)
    load_settings = _load_settings(args, args.duration)
    common: dict[str, Any] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "runs": args.runs,
        "objects": args.objects,
        "retries_when_disturbed": args.retries,
        "disturbed_foreign_cpu_share": args.disturbed_share,
        "quick": args.quick,
    }
    peer_venv = args.thumbor_venv if needs_peer else None

    def measure_bound() -> dict[str, Any]:
        return measure_all(
            args.work / "images",
            objects=args.objects,
            runs=args.runs,
            seconds=args.bound_seconds,
            cores=cores,
            retries=args.retries,
        )

    if "bound" in args.kinds:
        doc = header("bound", {"runs": args.runs, "seconds": args.bound_seconds}, None)
        doc.update(measure_bound())
        finish(doc, args.out / "bound.json")

    if "peers" in args.kinds:
        bound, bound_started = _bound_map(args.out)
        plan = PeerPlan(
            objects=args.objects,
            runs=args.runs,
            load=load_settings,
            tune=_load_settings(args, args.tune_duration),
            thumbor_threadpools=_ints(args.thumbor_threadpools),
            dora_gateways=_ints(args.dora_gateways),
            tune_sessions=args.tune_sessions,
        )
        settings = {
            **common,
            "tune_duration_s": args.tune_duration,
            "tune_sessions": args.tune_sessions,
            "bound_from": bound_started,
        }
        doc = header("peers", settings, peer_venv)
        doc.update(compare(servers, plan, run_dir, bound, cores))
        if "bound" in args.kinds:
            # The machine's speed drifts over a long run (a shared host): the bound
            # is measured again after the comparison, and efficiency is against the
            # mean of both measurements, which bracket Dora's runs.
            bound_doc = load(args.out, "bound.json") or {}
            bound_doc["after"] = {"started": header("bound", {}, None)["started"]}
            bound_doc["after"].update(measure_bound())
            finish(bound_doc, args.out / "bound.json")
            after, _ = _bound_map(args.out, "after")
            bound = {name: (rate + after.get(name, rate)) / 2 for name, rate in bound.items()}
            doc["settings"]["bound_used"] = "mean of before and after the comparison"
            rebound(doc, bound, cores)
        finish(doc, args.out / "peers.json")
        print("\n".join(target_lines(doc)), flush=True)

    previous = load(args.out, "peers.json")
    if "peers" not in args.kinds and previous is not None:
        # a partial re-run keeps the configuration the comparison chose
        servers.dora_gateways = previous["configuration"]["dora"]["gateways"]
        servers.thumbor_threadpool = previous["configuration"]["thumbor"]["engine_threadpool_size"]

    if "overhead" in args.kinds:
        doc = header("overhead", common, peer_venv)
        doc.update(
            run_overhead(
                servers, objects=args.objects, runs=args.runs, load=load_settings, work=run_dir
            )
        )
        finish(doc, args.out / "overhead.json")

    if "memory" in args.kinds:
        settings = {**common, "memory_seconds": args.memory_seconds}
        doc = header("memory", settings, None)
        doc.update(
            run_memory(
                servers,
                objects=args.objects,
                seconds=args.memory_seconds,
                interval=args.memory_interval,
                load=load_settings,
                work=run_dir,
            )
        )
        finish(doc, args.out / "memory.json")

    plots(args)
    summary = write_summary(args.out)
    print(f"wrote {summary}")
    peers = load(args.out, "peers.json")
    if peers is not None:
        print("\n".join(target_lines(peers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
