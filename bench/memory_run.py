"""Does Dora's memory stay flat under a long mixed load?

One ``dora serve`` (result cache off, so every request is really processed
by a worker) gets every compared transformation of every distinct photo,
both sizes, JPEG and WebP, and the near-no-op, interleaved, for a fixed time
(5 minutes by default). The resident set of the gateway(s), the workers and
the supervisor is sampled every few seconds. Reported per role: the RSS at
the start (idle, before the load), after the warm-up (the first sample past
20% of the run, at most 60 s in), the peak and the end; "flat" means the end
is within 15% of the post-warm-up value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadgen import run_wrk, write_script
from measure import LoadSettings
from procs import Sample, TreeSampler, machine_cpu
from scenarios import mixed_paths
from sessions import Servers

FLAT_WITHIN = 0.15


def _series(samples: list[Sample], role: str | None) -> list[float]:
    def mib(sample: Sample) -> float:
        kib = sample.total_kib if role is None else sample.rss_kib.get(role, 0)
        return round(kib / 1024, 1)

    return [mib(s) for s in samples]


def _role_summary(samples: list[Sample], role: str | None, warm_index: int) -> dict[str, Any]:
    values = _series(samples, role)
    post = values[warm_index]
    end = values[-1]
    drift = (end - post) / post if post else 0.0
    return {
        "start_mib": values[0],
        "post_warmup_mib": post,
        "peak_mib": max(values),
        "end_mib": end,
        "end_vs_post_warmup": round(drift, 3),
        "flat": abs(drift) <= FLAT_WITHIN,
    }


def run_memory(
    servers: Servers,
    *,
    objects: int,
    seconds: float,
    interval: float,
    load: LoadSettings,
    work: Path,
) -> dict[str, Any]:
    """The long mixed load and the RSS series of each part of ``dora serve``."""
    paths = mixed_paths(objects)
    script = write_script(paths, work / "mixed.lua")
    warmup_s = min(60.0, seconds * 0.2)
    with servers.dora(cache=False) as (target, _):
        with TreeSampler(target.root_pid, interval, target.classify) as sampler, machine_cpu() as m:
            wrk = run_wrk(target.url, script, connections=load.connections, duration=seconds)
        samples = sampler.samples
    # the first sample is taken before wrk starts; the last just after it ends
    warm_index = next((i for i, s in enumerate(samples) if s.t >= warmup_s), len(samples) - 1)
    roles = sorted({r for s in samples for r in s.rss_kib})
    by_role = {role: _role_summary(samples, role, warm_index) for role in roles}
    total = _role_summary(samples, None, warm_index)
    print(
        f"memory  {seconds:.0f} s mixed load: {wrk.requests_per_s:.1f} req/s, "
        f"{wrk.non_2xx + wrk.socket_errors} errors; RSS MiB start/post-warm-up/peak/end:",
        flush=True,
    )
    for role, summary in [*by_role.items(), ("total", total)]:
        print(
            f"  {role:10} {summary['start_mib']:7.1f} {summary['post_warmup_mib']:7.1f} "
            f"{summary['peak_mib']:7.1f} {summary['end_mib']:7.1f}  "
            f"{'flat' if summary['flat'] else 'NOT flat'} ({summary['end_vs_post_warmup']:+.1%})",
            flush=True,
        )
    return {
        "seconds": seconds,
        "sample_interval_s": interval,
        "warmup_s": warmup_s,
        "flat_within": FLAT_WITHIN,
        "distinct_paths": len(paths),
        "result_cache": "off (DORA_RESULT_CACHE_BYTES=0)",
        "wrk": wrk.as_dict(),
        "machine_busy_share": round(m["busy_s"] / (m["capacity_s"] or 1.0), 3),
        "rss": {**by_role, "total": total},
        "series": {
            "t_s": [s.t for s in samples],
            **{role: _series(samples, role) for role in roles},
        },
    }
