"""What a request costs when the image work is (almost) nothing.

- **near-no-op**: the gateway + RPC + worker round trip on distinct 16×16
  PNGs, result cache off. Dora has no no-op op, so ``imageInfo`` (read the
  header, answer JSON) stands in; beside it thumbor's nearest, ``/meta``
  (load the image, answer the operations as JSON).
- **cache hit**: one URL (cover-and-crop 300×200 of a 1080p JPEG) requested
  again and again with Dora's result cache on (its default size), so after
  the first request every answer comes from the gateway's cache.

Each is measured ``runs`` times, each time in a fresh server session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from measure import LoadSettings, measure, summarize
from scenarios import (
    CACHE_HIT_SCENARIO,
    NOOP_DORA_OP,
    NOOP_THUMBOR_OP,
    noop_dora_paths,
    noop_thumbor_paths,
)
from sessions import Servers


def _print(tag: str, run: dict[str, Any]) -> None:
    flag = " DISTURBED" if run.get("disturbed") else ""
    print(
        f"{tag:34} {run['requests_per_s']:8.1f} req/s  p50 {run['p50_ms']:6.2f} ms  "
        f"p99 {run['p99_ms']:6.2f} ms  server cpu {run['server_cpu_ms_per_request']:.2f} ms/req  "
        f"wrk {run['wrk_cpu_share']:.0%}  foreign {run['foreign_cpu_share']:.0%}{flag}",
        flush=True,
    )


def run_overhead(
    servers: Servers, *, objects: int, runs: int, load: LoadSettings, work: Path
) -> dict[str, Any]:
    """The near-no-op on both servers and Dora's cache hits, ``runs`` times each."""
    found: dict[str, list[dict[str, Any]]] = {"dora_noop": [], "thumbor_noop": [], "dora_hit": []}
    hit_path = CACHE_HIT_SCENARIO.dora_paths(1)
    for rep in range(runs):
        tag = f"[{rep + 1}/{runs}]"
        with servers.dora(cache=False) as (target, _):
            run = measure(target, noop_dora_paths(objects), load, work)
            found["dora_noop"].append(run)
            _print(f"{tag} dora {NOOP_DORA_OP} 16x16", run)
        with servers.thumbor() as target:
            run = measure(target, noop_thumbor_paths(objects), load, work)
            found["thumbor_noop"].append(run)
            _print(f"{tag} thumbor {NOOP_THUMBOR_OP} 16x16", run)
        with servers.dora(cache=True) as (target, _):
            run = measure(target, hit_path, load, work)
            found["dora_hit"].append(run)
            _print(f"{tag} dora cache hit, one URL", run)
    noop_d, noop_t = summarize(found["dora_noop"]), summarize(found["thumbor_noop"])
    return {
        "noop": {
            "note": (
                "Dora has no no-op op yet: imageInfo on distinct 16x16 PNGs stands in "
                "(gateway + RPC + worker, header read, JSON out); thumbor: /unsafe/meta/"
            ),
            "dora_op": NOOP_DORA_OP,
            "thumbor_op": NOOP_THUMBOR_OP,
            "dora": noop_d,
            "thumbor": noop_t,
            "ratio": round(
                noop_d["requests_per_s"]["median"] / max(noop_t["requests_per_s"]["median"], 1e-9),
                2,
            ),
            "dora_runs": found["dora_noop"],
            "thumbor_runs": found["thumbor_noop"],
        },
        "cache_hit": {
            "note": "one URL repeated, Dora's result cache on (default size)",
            "path": hit_path[0],
            "dora": summarize(found["dora_hit"]),
            "dora_runs": found["dora_hit"],
        },
    }
