"""Turn the results files into ``summary.md`` and the console's verdicts.

Reads whatever of ``peers.json``, ``bound.json``, ``overhead.json`` and
``memory.json`` exists in the results folder, so a partial re-run
(``--only``) still yields a whole summary. Run alone to rebuild it::

    .venv/bin/python bench/report.py [bench/results]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

PLOTS = {
    "peers_throughput.png": "Requests per second, Dora and thumbor (median, bars: min–max)",
    "peers_latency.png": "Latency p50 and p99 under 16 connections",
    "memory.png": "RSS of dora serve's processes under the long mixed load",
}


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def verdict(passed: bool | None) -> str:
    return "" if passed is None else ("PASS" if passed else "MISS")


def ratio_text(ratio: float | None) -> str:
    return "n/a (thumbor completed no request)" if ratio is None else f"{ratio:.2f}×"


def _mmm(stat: dict[str, float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def target_lines(peers: dict[str, Any]) -> list[str]:
    """The issue's targets with PASS/MISS, and by how much a miss falls short."""
    out = []
    for row in peers["scenarios"]:
        if row["ratio_target"] is not None:
            ratio = row["ratio"]
            short = ""
            if row["ratio_pass"] is False:
                short = f" ({1 - ratio / row['ratio_target']:.0%} short"
                ceiling = row.get("ratio_ceiling_at_bound")
                if ceiling:
                    short += f"; a server at the Pillow bound would reach {ceiling:.2f}×"
                short += ")"
            out.append(
                f"{verdict(row['ratio_pass']) or 'n/a '}  {row['label']}: Dora/thumbor "
                f"{ratio_text(ratio)} (target ≥ {row['ratio_target']}×){short}"
            )
        if row["efficiency_target"] is not None and row["efficiency"] is not None:
            gap = row["efficiency_target"] - row["efficiency"]
            miss = f" ({gap * 100:.0f} points short)" if not row["efficiency_pass"] else ""
            out.append(
                f"{verdict(row['efficiency_pass'])}  {row['label']}: efficiency "
                f"{row['efficiency']:.0%} of the Pillow bound (target ≥ "
                f"{row['efficiency_target']:.0%}){miss}"
            )
    return out


def _used(stats: dict[str, Any]) -> str:
    """Marks a figure made of fewer runs than were made (the others were disturbed)."""
    used, runs = stats.get("undisturbed_runs", stats["runs"]), stats["runs"]
    if used == runs:
        return ""
    return f" [{used} of {runs} runs]" if used else " [all runs disturbed]"


def _header(doc: dict[str, Any]) -> list[str]:
    machine, versions = doc["machine"], doc["versions"]
    peer = (
        f", thumbor {versions['thumbor']} (Pillow {versions['pillow_thumbor']}, "
        f"{versions.get('codecs_thumbor', '')}, tornado {versions['tornado_thumbor']})"
        if "thumbor" in versions
        else ""
    )
    return [
        f"- date: {doc['started']} → {doc['finished']}",
        f"- machine: {machine['cores']} cores, {machine['cpu_model']}, "
        f"{machine['mem_total_mib']} MiB, Linux {machine['kernel']}",
        f"- load average (1/5/15 min) at start {doc['loadavg_start']}, "
        f"at end {doc['loadavg_end']} (the machine may be shared; see foreign CPU)",
        f"- command: `{doc['command']}`",
        f"- versions: Dora {versions['dora']} (Python {versions['python']}, Pillow "
        f"{versions['pillow_dora']}, {versions.get('codecs_dora', '')}){peer}, "
        f"{versions['wrk']}",
    ]


def _stock(peers: dict[str, Any]) -> list[str]:
    stock = peers.get("thumbor_stock_output")
    if not stock:
        return []
    chosen = next(
        t
        for t in peers["tuning"]["thumbor"]["tried"]
        if t["ENGINE_THREADPOOL_SIZE"]
        == peers["configuration"]["thumbor"]["engine_threadpool_size"]
    )

    def matched(name: str) -> float:
        rates = chosen["requests_per_s"][name]
        return float(statistics.median(rates)) if isinstance(rates, list) else float(rates)

    pairs = ", ".join(
        f"{name.split()[0]} {rate:.1f} req/s (matched settings: {matched(name):.1f})"
        for name, rate in stock["requests_per_s"].items()
    )
    return [
        "- thumbor with its stock output settings instead (progressive JPEG, LANCZOS), "
        f"1920x1080, tuning-length runs: {pairs}"
    ]


def _peers_section(peers: dict[str, Any]) -> list[str]:
    s, conf = peers["settings"], peers["configuration"]
    lines = [
        "## Dora and thumbor, side by side",
        "",
        *_header(peers),
        f"- load: wrk -t1 -c{s['connections']}, {s['duration_s']} s per run after "
        f"{s['warmup_s']} s warm-up, {s['runs']} runs per scenario (median, min–max), "
        f"{s['objects']} distinct source photos round-robin",
        f"- Dora: {conf['dora']['workers']} workers, {conf['dora']['gateways']} gateway(s), "
        f"result cache {conf['dora']['result_cache']}",
        f"- thumbor: {conf['thumbor']['processes']} processes, ENGINE_THREADPOOL_SIZE="
        f"{conf['thumbor']['engine_threadpool_size']} (best geometric mean, over "
        f"{s.get('tune_sessions', 1)} sessions of 4 cases, of "
        f"{[t['ENGINE_THREADPOOL_SIZE'] for t in peers['tuning']['thumbor']['tried']]}), file "
        "loader, no storage, no result storage, quality 75, baseline JPEG, BICUBIC",
        *_stock(peers),
        "",
        "| scenario | Dora req/s | thumbor req/s | Dora/thumbor | target | p50 ms Dora / thumbor "
        "| p99 ms Dora / thumbor | peak RSS MiB Dora / thumbor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in peers["scenarios"]:
        d, t = row["dora"], row["thumbor"]
        target = (
            f"≥ {row['ratio_target']}× {verdict(row['ratio_pass'])}" if row["ratio_target"] else ""
        )
        lines.append(
            f"| {row['label']} | {_mmm(d['requests_per_s'])}{_used(d)} "
            f"| {_mmm(t['requests_per_s'])}{_used(t)} "
            f"| **{ratio_text(row['ratio'])}** | {target} "
            f"| {d['p50_ms']['median']:.0f} / {t['p50_ms']['median']:.0f} "
            f"| {d['p99_ms']['median']:.0f} / {t['p99_ms']['median']:.0f} "
            f"| {d['peak_rss_mib']['median']:.0f} / {t['peak_rss_mib']['median']:.0f} |"
        )
    lines += [
        "",
        "| scenario | output Dora | output thumbor | same size | PSNR Dora vs thumbor | "
        "server CPU ms/req Dora / thumbor | Dora CPU ms/req by process | wrk CPU (of one core) "
        "| foreign CPU (max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in peers["scenarios"]:
        o, d, t = row["outputs"], row["dora"], row["thumbor"]
        roles = ", ".join(
            f"{k} {v:.1f}" for k, v in row.get("dora_cpu_ms_per_request_by_role", {}).items()
        )

        def out(x: dict[str, Any]) -> str:
            dims = ", ".join(f"{w}×{h}" for w, h in x["dimensions"])
            return f"{x['format']} {dims}, {x['mean_bytes']} B"

        wrk = max(d["wrk_cpu_share"]["max"], t["wrk_cpu_share"]["max"])
        foreign = max(d["foreign_cpu_share"]["max"], t["foreign_cpu_share"]["max"])
        lines.append(
            f"| {row['label']} | {out(o['dora'])} | {out(o['thumbor'])} "
            f"| {'yes' if o['dimensions_equal'] else '**no**'} "
            f"| {o['psnr_dora_vs_thumbor_db']} dB "
            f"| {d['server_cpu_ms_per_request']['median']:.1f} / "
            f"{t['server_cpu_ms_per_request']['median']:.1f} | {roles} "
            f"| ≤ {wrk:.0%} | {foreign:.0%} |"
        )
    lines += [
        "",
        "### Efficiency against the Pillow bound",
        "",
        "Efficiency = Dora req/s ÷ (bound img/s per core × cores). CPU ms/img compares "
        "CPU time per image, which does not depend on what else ran on the machine: the "
        "bound's, and each server's (all its processes) per request. The last column is "
        "the ceiling of the ratio: thumbor's CPU per request over the bound's, the "
        "Dora/thumbor ratio of a server that spent nothing beyond pure Pillow.",
        *(
            [
                "",
                f"The bound used is the {peers['settings']['bound_used']}: the machine's "
                "speed drifts over a long run (see the bound's two measurements below).",
            ]
            if peers["settings"].get("bound_used")
            else []
        ),
        "",
    ]
    lines += [
        "| scenario | bound img/s per core | × cores | Dora req/s | efficiency | target "
        "| CPU ms/img: bound / Dora / thumbor | Dora/thumbor at the bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cores = peers["machine"]["cores"]
    for row in peers["scenarios"]:
        if row["bound_img_per_s_per_core"] is None:
            continue
        per_core = row["bound_img_per_s_per_core"]
        target = (
            f"≥ {row['efficiency_target']:.0%} {verdict(row['efficiency_pass'])}"
            if row["efficiency_target"]
            else ""
        )
        lines.append(
            f"| {row['label']} | {per_core:.1f} | {per_core * cores:.1f} "
            f"| {row['dora']['requests_per_s']['median']:.1f} | {row['efficiency']:.0%} "
            f"| {target} | {row.get('bound_ms_per_img') or 0:.1f} / "
            f"{row['dora']['server_cpu_ms_per_request']['median']:.1f} / "
            f"{row['thumbor']['server_cpu_ms_per_request']['median']:.1f} "
            f"| {row.get('ratio_ceiling_at_bound') or 0:.2f}× |"
        )
    return [*lines, "", "### Targets (issue 5)", "", *[f"- {t}" for t in target_lines(peers)]]


def _bound_section(bound: dict[str, Any]) -> list[str]:
    lines = [
        "## The Pillow bound (one process)",
        "",
        f"Pure Pillow, {bound['filter']}, quality {bound['quality']}, DCT-scaled decode; "
        f"{bound['settings']['runs']} runs of {bound['settings']['seconds']} s each.",
        "",
        "| fop | source | img/s per core | ms/img | all cores at once | Dora run_chain "
        "per core (no server) |",
        "|---|---|---|---|---|---|",
    ]
    for row in bound["scenarios"]:
        source = row["scenario"].split()[-1]
        lines.append(
            f"| `{row['fop']}` | {source} | {_mmm(row['img_per_s_per_core'])} "
            f"| {row['ms_per_img']} | {row['img_per_s_all_cores_at_once']} "
            f"| {row['dora_run_chain_img_per_s_per_core']} ({row['run_chain_vs_bound']:.0%}) |"
        )
    after = bound.get("after")
    if after:
        lines += [
            "",
            f"Measured again after the comparison ({after['started']}), img/s per core: "
            + ", ".join(
                f"`{row['fop']}` {row['scenario'].split()[-1]} "
                f"{row['img_per_s_per_core']['median']:.1f}"
                for row in after["scenarios"]
            )
            + ".",
        ]
    return lines


def _overhead_section(overhead: dict[str, Any]) -> list[str]:
    noop, hit = overhead["noop"], overhead["cache_hit"]

    def row(name: str, stats: dict[str, Any]) -> str:
        return (
            f"| {name} | {_mmm(stats['requests_per_s'])} | {stats['p50_ms']['median']:.2f} "
            f"| {stats['p99_ms']['median']:.2f} "
            f"| {stats['server_cpu_ms_per_request']['median']:.2f} "
            f"| {stats['peak_rss_mib']['median']:.0f} |"
        )

    return [
        "## Overhead and cache hits",
        "",
        *_header(overhead),
        f"- near-no-op: {noop['note']}",
        f"- cache hit: {hit['note']}: `{hit['path']}`",
        "",
        "| scenario | req/s | p50 ms | p99 ms | server CPU ms/req | peak RSS MiB |",
        "|---|---|---|---|---|---|",
        row(f"Dora `{noop['dora_op']}` 16×16 PNG (cache off)", noop["dora"]),
        row(f"thumbor `/{noop['thumbor_op']}` 16×16 PNG", noop["thumbor"]),
        row("Dora cache hit, one URL", hit["dora"]),
        "",
        f"Near-no-op Dora/thumbor: {noop['ratio']:.2f}×.",
    ]


def _memory_section(memory: dict[str, Any]) -> list[str]:
    lines = [
        "## Memory under a long mixed load",
        "",
        *_header(memory),
        f"- {memory['seconds']:.0f} s, {memory['distinct_paths']} distinct URLs (every scenario, "
        f"both sizes, JPEG and WebP, and the near-no-op), result cache "
        f"{memory['result_cache']}; {memory['wrk']['requests_per_s']:.1f} req/s, "
        f"{memory['wrk']['non_2xx'] + memory['wrk']['socket_errors']} errors; RSS sampled "
        f"every {memory['sample_interval_s']} s; post-warm-up = first sample after "
        f"{memory['warmup_s']:.0f} s",
        "",
        "| process | start MiB | post-warm-up MiB | peak MiB | end MiB | end vs post-warm-up |",
        "|---|---|---|---|---|---|",
    ]
    for role, r in memory["rss"].items():
        state = "flat" if r["flat"] else "**not flat**"
        lines.append(
            f"| {role} | {r['start_mib']} | {r['post_warmup_mib']} | {r['peak_mib']} "
            f"| {r['end_mib']} | {r['end_vs_post_warmup']:+.1%} ({state}) |"
        )
    return lines


def write_summary(folder: Path) -> Path:
    """Write ``summary.md`` in ``folder`` from the results found there."""
    docs = {n: load(folder, f"{n}.json") for n in ("peers", "bound", "overhead", "memory")}
    lines = ["# Dora benchmark results", "", "Written by `scripts/bench` (bench/suite.py).", ""]
    sections = {
        "peers": _peers_section,
        "bound": _bound_section,
        "overhead": _overhead_section,
        "memory": _memory_section,
    }
    for name, build in sections.items():
        doc = docs[name]
        if doc is not None:
            lines += [*build(doc), ""]
    plots = [(f, c) for f, c in PLOTS.items() if (folder / f).exists()]
    if plots:
        lines += ["## Plots", ""] + [f"![{c}]({f})\n" for f, c in plots]
    path = folder / "summary.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    print(f"wrote {write_summary(target)}")
