"""PNG plots of the results, for the README (runs in the bench tools' virtualenv).

Needs only matplotlib (installed by ``scripts/bench`` into
``bench/work/venv-tools``, not into Dora's environment)::

    bench/work/venv-tools/bin/python bench/plots.py [bench/results]

Writes ``peers_throughput.png`` (req/s per scenario, Dora and thumbor, with
min–max bars and the Pillow bound × cores), ``peers_latency.png`` (p50 and
p99) and ``memory.png`` (RSS of each part of ``dora serve`` over the long
mixed load), from whichever results files exist.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib  # type: ignore[import-not-found, unused-ignore]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

DORA, THUMBOR, BOUND = "#1f77b4", "#ff7f0e", "#2ca02c"


def _stats(
    rows: list[dict[str, Any]], server: str, key: str
) -> tuple[list[float], list[list[float]]]:
    med = [r[server][key]["median"] for r in rows]
    low = [r[server][key]["median"] - r[server][key]["min"] for r in rows]
    high = [r[server][key]["max"] - r[server][key]["median"] for r in rows]
    return med, [low, high]


def _title(doc: dict[str, Any], what: str) -> str:
    m = doc["machine"]
    return f"{what} — {doc['date']}, {m['cores']} cores ({m['cpu_model']})"


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    """Scenario labels for the x axis, the source size on a line of its own."""
    return [r["label"].replace(" 1920x1080", "\n1920×1080").replace(" 4000x3000", "\n4000×3000")
            for r in rows]  # fmt: skip


def throughput(peers: dict[str, Any], out: Path) -> None:
    rows = peers["scenarios"]
    labels = _labels(rows)
    xs = range(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(12, 5.5))
    for offset, server, colour in ((-width / 2, "dora", DORA), (width / 2, "thumbor", THUMBOR)):
        med, err = _stats(rows, server, "requests_per_s")
        name = "Dora" if server == "dora" else f"thumbor {peers['versions'].get('thumbor', '')}"
        bars = ax.bar([x + offset for x in xs], med, width, yerr=err, capsize=3, color=colour,
                      label=name)  # fmt: skip
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    cores = peers["machine"]["cores"]
    top = max(r[s]["requests_per_s"]["max"] for r in rows for s in ("dora", "thumbor"))
    for x, row in zip(xs, rows, strict=True):
        if row["bound_img_per_s_per_core"]:
            ideal = row["bound_img_per_s_per_core"] * cores
            ax.hlines(ideal, x - width, x + width, colors=BOUND, linestyles="dashed")
        if row["ratio"] is not None:
            ax.text(x, top * 1.08, f"{row['ratio']:.1f}×", fontsize=9, ha="center",
                    fontweight="bold")  # fmt: skip
    ax.set_ylim(top=top * 1.18)
    ax.plot([], [], color=BOUND, linestyle="dashed", label=f"Pillow bound × {cores} cores")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("requests / s (higher is better)")
    ax.set_title(_title(peers, "300×200 thumbnails, 16 connections"), fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "peers_throughput.png", dpi=110)
    plt.close(fig)


def latency(peers: dict[str, Any], out: Path) -> None:
    rows = peers["scenarios"]
    labels = _labels(rows)
    xs = range(len(rows))
    width = 0.2
    fig, ax = plt.subplots(figsize=(12, 5.5))
    bars = (
        (-1.5, "dora", "p50_ms", DORA, 1.0, "Dora p50"),
        (-0.5, "dora", "p99_ms", DORA, 0.5, "Dora p99"),
        (0.5, "thumbor", "p50_ms", THUMBOR, 1.0, "thumbor p50"),
        (1.5, "thumbor", "p99_ms", THUMBOR, 0.5, "thumbor p99"),
    )
    for slot, server, key, colour, alpha, name in bars:
        med, err = _stats(rows, server, key)
        ax.bar([x + slot * width for x in xs], med, width, yerr=err, capsize=2, color=colour,
               alpha=alpha, label=name)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("latency, ms (log scale, lower is better)")
    ax.set_title(_title(peers, "Latency under 16 connections"), fontsize=10)
    ax.legend(ncols=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "peers_latency.png", dpi=110)
    plt.close(fig)


def memory(doc: dict[str, Any], out: Path) -> None:
    series = doc["series"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for role, values in series.items():
        if role != "t_s":
            ax.plot(series["t_s"], values, label=role, marker=".", markersize=3)
    ax.axvline(doc["warmup_s"], color="grey", linestyle="dotted", label="end of warm-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS, MiB (sum over the role's processes)")
    ax.set_ylim(bottom=0)
    ax.set_title(_title(doc, f"dora serve RSS, {doc['seconds']:.0f} s mixed load"), fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)


def main(folder: Path) -> None:
    peers = folder / "peers.json"
    if peers.exists():
        doc = json.loads(peers.read_text())
        throughput(doc, folder)
        latency(doc, folder)
    mem = folder / "memory.json"
    if mem.exists():
        memory(json.loads(mem.read_text()), folder)
    print(f"plots written in {folder} (matplotlib {matplotlib.__version__})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results")
