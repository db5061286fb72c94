"""Dora against thumbor, side by side, one server at a time, in the same run.

First each server's one open knob is tuned on the 1080p JPEG scenarios
(thumbor: ``ENGINE_THREADPOOL_SIZE``; Dora: gateway processes), keeping the
best. Then, ``runs`` times, a Dora session measures every scenario and a
thumbor session does the same (the order alternates between repetitions, so
a drift in the machine's load falls on both). Each scenario reports the
median, min and max of requests/s, p50/p99 latency, the server's peak RSS
and CPU per request, the outputs (format, dimensions, mean bytes, PSNR of one
against the other), the ratio Dora/thumbor and the targets of issue 5.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure import LoadSettings, Target, describe_outputs, measure, summarize, undisturbed
from pillow_bound import psnr
from scenarios import PEER_SCENARIOS, SOURCES, Scenario, noop_dora_paths, noop_thumbor_paths
from sessions import Servers
from thumbor_peer import STOCK_OUTPUT, thumbor_config

OUTPUT_SAMPLES = 4
STOCK_SCENARIOS = [s for s in PEER_SCENARIOS if s.source == "1920x1080" and s.fmt == "jpg"]
# tuning sees short and long requests and the near-no-op: a setting that only
# wins on one kind (or only when the kernel spreads connections evenly) loses
TUNE_SCENARIOS = [*STOCK_SCENARIOS, Scenario("cover", "4000x3000", "jpg")]
NOOP_CASE = "near-no-op 16x16"
SERVERS = ("dora", "thumbor")


@dataclass(frozen=True)
class PeerPlan:
    """What the comparison runs."""

    objects: int
    runs: int
    load: LoadSettings
    tune: LoadSettings
    thumbor_threadpools: Sequence[int]
    dora_gateways: Sequence[int]
    tune_sessions: int = 2  # sessions per candidate value
    extra_sessions: int = 2  # sessions to top up scenarios short of undisturbed runs


def paths_for(server: str, scenario: Scenario, objects: int) -> list[str]:
    return scenario.dora_paths(objects) if server == "dora" else scenario.thumbor_paths(objects)


def line(tag: str, scenario: Scenario, run: dict[str, Any]) -> str:
    """One printed result."""
    flag = " DISTURBED" if run.get("disturbed") else ""
    errors = run["non_2xx"] + run["socket_errors"]
    return (
        f"{tag:18} {scenario.name:32} {run['requests_per_s']:7.1f} req/s  "
        f"p50 {run['p50_ms']:7.1f} ms  p99 {run['p99_ms']:7.1f} ms  "
        f"rss {run['peak_rss_mib']:6.0f} MiB  wrk {run['wrk_cpu_share']:.0%} of a core  "
        f"foreign {run['foreign_cpu_share']:.0%}" + (f"  ERRORS {errors}" if errors else "") + flag
    )


def _session(
    servers: Servers, server: str, knob: int | None = None
) -> AbstractContextManager[Target]:
    if server == "thumbor":
        return servers.thumbor(threadpool=knob)

    @contextlib.contextmanager
    def dora() -> Iterator[Target]:
        with servers.dora(cache=False, gateways=knob) as (target, _):
            yield target

    return dora()


def _tune_cases(server: str, objects: int) -> list[tuple[str, list[str]]]:
    cases = [(s.name, paths_for(server, s, objects)) for s in TUNE_SCENARIOS]
    noop = noop_dora_paths(objects) if server == "dora" else noop_thumbor_paths(objects)
    return [*cases, (NOOP_CASE, noop)]


def tune(
    servers: Servers, server: str, candidates: Sequence[int], plan: PeerPlan, work: Path
) -> dict[str, Any]:
    """Try each value of the server's knob in ``tune_sessions`` sessions; keep the
    best geometric mean of req/s over every case and session."""
    knob = "ENGINE_THREADPOOL_SIZE" if server == "thumbor" else "gateways"
    tried: list[dict[str, Any]] = []
    for value in candidates:
        rates: dict[str, list[float]] = {}
        for _ in range(plan.tune_sessions):
            with _session(servers, server, value) as target:
                for name, paths in _tune_cases(server, plan.objects):
                    run = measure(target, paths, plan.tune, work)
                    rates.setdefault(name, []).append(run["requests_per_s"])
                    print(
                        f"tune {server} {knob}={value:<3} {name:30} "
                        f"{run['requests_per_s']:8.1f} req/s  foreign "
                        f"{run['foreign_cpu_share']:.0%}",
                        flush=True,
                    )
        logs = [math.log(max(r, 1e-9)) for values in rates.values() for r in values]
        score = math.exp(sum(logs) / len(logs))
        tried.append({knob: value, "requests_per_s": rates, "geomean": round(score, 2)})
    best = max(tried, key=lambda t: float(t["geomean"]))
    return {"knob": knob, "tried": tried, "chosen": best[knob]}


def stock_output_check(servers: Servers, plan: PeerPlan, work: Path) -> dict[str, Any]:
    """For reference: thumbor with its own defaults for the two output settings
    matched to Dora's (progressive JPEG, LANCZOS), at the chosen thread pool."""
    rates: dict[str, float] = {}
    with servers.thumbor(overrides=STOCK_OUTPUT) as target:
        for scenario in STOCK_SCENARIOS:
            run = measure(target, paths_for("thumbor", scenario, plan.objects), plan.tune, work)
            rates[scenario.name] = run["requests_per_s"]
            print(line("thumbor stock", scenario, run), flush=True)
    return {"settings": STOCK_OUTPUT, "requests_per_s": rates}


def _outputs(target: Target, server: str, scenario: Scenario, objects: int) -> dict[str, Any]:
    return describe_outputs(target.url, paths_for(server, scenario, min(OUTPUT_SAMPLES, objects)))


Runs = dict[tuple[str, str], list[dict[str, Any]]]


def _session_runs(
    servers: Servers,
    server: str,
    scenarios: Sequence[Scenario],
    plan: PeerPlan,
    work: Path,
    *,
    tag: str,
    runs: Runs,
    outputs: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> None:
    with _session(servers, server) as target:
        for scenario in scenarios:
            if outputs is not None:
                outputs[(server, scenario.name)] = _outputs(target, server, scenario, plan.objects)
            run = measure(target, paths_for(server, scenario, plan.objects), plan.load, work)
            runs.setdefault((server, scenario.name), []).append(run)
            print(line(f"{tag} {server}", scenario, run), flush=True)


def run_sessions(
    servers: Servers, plan: PeerPlan, work: Path
) -> tuple[Runs, dict[tuple[str, str], dict[str, Any]]]:
    """``runs`` sessions of each server, every scenario once per session; then
    top-up sessions re-run the scenarios that have fewer undisturbed runs."""
    runs: Runs = {}
    outputs: dict[tuple[str, str], dict[str, Any]] = {}
    for rep in range(plan.runs):
        order = SERVERS if rep % 2 == 0 else tuple(reversed(SERVERS))
        for server in order:
            _session_runs(
                servers,
                server,
                PEER_SCENARIOS,
                plan,
                work,
                tag=f"[{rep + 1}/{plan.runs}]",
                runs=runs,
                outputs=outputs if rep == 0 else None,
            )
    for extra in range(plan.extra_sessions):
        for server in SERVERS:
            short = [
                s for s in PEER_SCENARIOS if len(undisturbed(runs[(server, s.name)])) < plan.runs
            ]
            if short:
                tag = f"[re-run {extra + 1}]"
                _session_runs(servers, server, short, plan, work, tag=tag, runs=runs)
    return runs, outputs


def _by_role(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median CPU ms per request of each role over the runs the summary used."""
    basis = undisturbed(runs) or runs
    roles = {r for run in basis for r in run.get("server_cpu_ms_per_request_by_role", {})}
    return {
        role: round(
            statistics.median(
                run.get("server_cpu_ms_per_request_by_role", {}).get(role, 0.0) for run in basis
            ),
            2,
        )
        for role in sorted(roles)
    }


def _verdict(value: float | None, target: float | None) -> bool | None:
    return None if value is None or target is None else value >= target


def compose(
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    outputs: dict[tuple[str, str], dict[str, Any]],
    bound: dict[str, float],
    cores: int,
) -> list[dict[str, Any]]:
    """One row per scenario: both servers, the ratio, the efficiency, the targets."""
    rows = []
    for scenario in PEER_SCENARIOS:
        dora_runs, peer_runs = runs[("dora", scenario.name)], runs[("thumbor", scenario.name)]
        dora, peer = summarize(dora_runs), summarize(peer_runs)
        dora_rps = dora["requests_per_s"]["median"]
        peer_rps = peer["requests_per_s"]["median"]
        # no completed request is a failed measurement, not an infinite ratio
        ratio = dora_rps / peer_rps if peer_rps > 0 else None
        out_d, out_t = outputs[("dora", scenario.name)], outputs[("thumbor", scenario.name)]
        pixels = psnr(out_d.pop("_first"), out_t.pop("_first"))
        row = {
            "scenario": scenario.name,
            "label": scenario.label,
            "source": scenario.source,
            "source_size": list(SOURCES[scenario.source]),
            "kind": scenario.kind,
            "format": scenario.fmt,
            "dora_fop": scenario.dora_fop,
            "thumbor_op": scenario.thumbor_op,
            "dora": dora,
            "thumbor": peer,
            "dora_cpu_ms_per_request_by_role": _by_role(dora_runs),
            "ratio": round(ratio, 2) if ratio is not None else None,
            "ratio_target": scenario.ratio_target,
            "ratio_pass": _verdict(ratio, scenario.ratio_target),
            "efficiency_target": scenario.efficiency_target,
            "outputs": {
                "dora": out_d,
                "thumbor": out_t,
                "dimensions_equal": out_d["dimensions"] == out_t["dimensions"],
                "psnr_dora_vs_thumbor_db": round(pixels, 1),
            },
            "dora_runs": dora_runs,
            "thumbor_runs": peer_runs,
        }
        row.update(bound_fields(row, bound.get(scenario.name), cores))
        rows.append(row)
    return rows


def bound_fields(row: dict[str, Any], per_core: float | None, cores: int) -> dict[str, Any]:
    """A scenario row's figures against the Pillow bound (``per_core`` img/s)."""
    dora_rps = row["dora"]["requests_per_s"]["median"]
    efficiency = dora_rps / (per_core * cores) if per_core else None
    # load-independent view: the bound's CPU per image over Dora's CPU per request
    dora_cpu = row["dora"]["server_cpu_ms_per_request"]["median"]
    peer_cpu = row["thumbor"]["server_cpu_ms_per_request"]["median"]
    bound_ms = 1000 / per_core if per_core else None
    cpu_efficiency = bound_ms / dora_cpu if bound_ms and dora_cpu else None
    # the ratio Dora would reach if it spent exactly the bound's CPU per image
    # and thumbor kept its own: what any Pillow-based server could claim at most
    ceiling = peer_cpu / bound_ms if bound_ms else None
    return {
        "bound_img_per_s_per_core": round(per_core, 1) if per_core else None,
        "efficiency": round(efficiency, 3) if efficiency is not None else None,
        "efficiency_pass": _verdict(efficiency, row["efficiency_target"]),
        "cpu_efficiency": round(cpu_efficiency, 3) if cpu_efficiency else None,
        "bound_ms_per_img": round(bound_ms, 2) if bound_ms else None,
        "dora_overhead_ms_per_request": round(dora_cpu - bound_ms, 2) if bound_ms else None,
        "ratio_ceiling_at_bound": round(ceiling, 2) if ceiling else None,
    }


def rebound(doc: dict[str, Any], bound: dict[str, float], cores: int) -> None:
    """Recompute every row's bound figures of a ``peers`` document from ``bound``."""
    for row in doc["scenarios"]:
        row.update(bound_fields(row, bound.get(row["scenario"]), cores))


def compare(
    servers: Servers, plan: PeerPlan, work: Path, bound: dict[str, float], cores: int
) -> dict[str, Any]:
    """Tune both, run the sessions, compose the rows."""
    tuning = {
        "thumbor": tune(servers, "thumbor", plan.thumbor_threadpools, plan, work),
        "dora": tune(servers, "dora", plan.dora_gateways, plan, work),
    }
    servers.thumbor_threadpool = int(tuning["thumbor"]["chosen"])
    servers.dora_gateways = int(tuning["dora"]["chosen"])
    print(
        f"chosen: thumbor ENGINE_THREADPOOL_SIZE={servers.thumbor_threadpool}, "
        f"dora gateways={servers.dora_gateways}",
        flush=True,
    )
    stock = stock_output_check(servers, plan, work)
    runs, outputs = run_sessions(servers, plan, work)
    return {
        "tuning": tuning,
        "thumbor_stock_output": stock,
        "configuration": {
            "dora": {
                "workers": cores,
                "gateways": servers.dora_gateways,
                "result_cache": "off (DORA_RESULT_CACHE_BYTES=0)",
            },
            "thumbor": {
                "processes": cores,
                "engine_threadpool_size": servers.thumbor_threadpool,
                "conf": thumbor_config(servers.images, servers.thumbor_threadpool),
            },
        },
        "scenarios": compose(runs, outputs, bound, cores),
    }
