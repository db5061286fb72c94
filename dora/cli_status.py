"""``dora status``: a terminal summary of a running ``dora serve``.

It finds the installation's running supervisor through ``serve.json`` in the
data directory (its pid, gateway URL and registry) and reads, each within a
few seconds:

- the registry's ``/v1/health/service/dora-builtin``: each worker, whether
  its check passes, and the load its check reports;
- the gateway's ``/metrics``: each worker's calls in flight, busy threads and
  queue, instances running and desired per service, instances the scheduler
  replaced (restarts), gateway processes, requests served;
- the management API (signed with the installation's keys): pipelines with
  their job counts, and the most recent failed jobs with their errors.

``--json`` prints all of it as one JSON object. With nothing running (no
``serve.json``, or its supervisor is gone) it says so and exits with 1; a
part that cannot be read is listed under ``errors`` and the rest still shows.
Standard library only, and prometheus-client's parser imported on use:
``dora serve`` imports this module before it may import that library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dora import metrics as m
from dora.errors import DoraError
from dora.layout import SERVE_STATE
from dora.registry import parse_load

__all__ = ["add_status_command", "collect_status", "render_status"]

TIMEOUT = 5.0  # seconds for each thing read
MAX_BYTES = 8 * 1024 * 1024
WORKER_SERVICE = "dora-builtin"
GATEWAY_SERVICE = "dora-gateway"

Common = Callable[[argparse.ArgumentParser], None]


class NotRunning(Exception):
    """No supervisor runs for this data directory."""


def read_serve_state(data_dir: Path) -> dict[str, Any]:
    """The running supervisor's ``serve.json``; :class:`NotRunning` when there is none."""
    path = data_dir / SERVE_STATE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotRunning(f"nothing is running for {data_dir} (no {SERVE_STATE})") from None
    except (OSError, ValueError) as exc:
        raise NotRunning(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict) or "url" not in state or "registry" not in state:
        raise NotRunning(f"{path} does not describe a running dora serve")
    pid = state.get("pid")
    if isinstance(pid, int) and not m.pid_alive(pid):
        raise NotRunning(f"nothing is running for {data_dir} (dora serve pid {pid} is gone)")
    return state


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(url, timeout=TIMEOUT) as resp:
            data: bytes = resp.read(MAX_BYTES)
            return data
    except urllib.error.HTTPError as exc:
        raise DoraError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise DoraError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name (``dora_requests_total``, ...): ``[(labels, value), ...]``."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((dict(sample.labels), float(sample.value)))
    return out


def _by(samples: list[tuple[dict[str, str], float]], *keys: str) -> dict[tuple[str, ...], float]:
    totals: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in samples:
        totals[tuple(labels.get(k, "") for k in keys)] += value
    return totals


def _workers(registry: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    entries = json.loads(_get(f"http://{registry}/v1/health/service/{WORKER_SERVICE}"))
    inflight = _by(metrics.get(m.WORKER_INFLIGHT, []), "instance")
    busy = _by(metrics.get(m.WORKER_THREADS_BUSY, []), "instance")
    queued = _by(metrics.get(m.WORKER_QUEUED, []), "instance")
    pool = _by(metrics.get(m.POOL_INFLIGHT, []), "instance")
    workers = []
    for entry in entries:
        service = entry.get("Service", {})
        checks = [c for c in entry.get("Checks", []) if c.get("ServiceID") == service.get("ID")]
        statuses = {c.get("Status") for c in checks}
        status = "passing" if statuses <= {"passing"} else "critical"
        if "warning" in statuses and "critical" not in statuses:
            status = "warning"
        load = next((parse_load(str(c.get("Output") or "")) for c in checks), None)
        key = (str(service.get("ID", "")),)
        workers.append(
            {
                "id": key[0],
                "address": f"{service.get('Address')}:{service.get('Port')}",
                "status": status,
                "load": load,
                "inflight": int(inflight.get(key, 0)),
                "threads_busy": int(busy.get(key, 0)),
                "queued": int(queued.get(key, 0)),
                "pool_inflight": int(pool.get(key, 0)),
            }
        )
    return sorted(workers, key=lambda w: str(w["id"]))


def _services(metrics: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (service, kind), value in _by(metrics.get(m.INSTANCES, []), "service", "kind").items():
        out[service][kind] = int(value)
    for (service,), value in _by(metrics.get(m.RESTARTS + "_total", []), "service").items():
        out[service]["restarts"] = int(value)
    return dict(out)


def _jobs_api(url: str, data_dir: Path, failures: int) -> tuple[list[Any], list[Any]]:
    from dora.cli_jobs import GatewayClient  # noqa: PLC0415
    from dora.keys import ensure_keys  # noqa: PLC0415

    client = GatewayClient(url, ensure_keys(data_dir), timeout=TIMEOUT)
    pipelines = client.call("GET", "/v1/pipelines")["items"]
    failed = client.call(
        "GET", "/v1/jobs", query={"state": "failed", "limit": str(max(1, failures))}
    )["items"]
    recent = []
    for job in failed[:failures]:
        errors = [i.get("error") for i in job.get("items", []) if i.get("error")]
        recent.append(
            {
                "id": job.get("id"),
                "pipeline": job.get("pipeline"),
                "input": f"{job.get('inputBucket')}:{job.get('inputKey')}",
                "finished": job.get("finished"),
                "error": job.get("error") or (errors[0] if errors else ""),
            }
        )
    return pipelines, recent


def collect_status(data_dir: Path, *, url: str | None = None, failures: int = 5) -> dict[str, Any]:
    """Everything ``dora status`` shows, as a JSON-ready dict (see the module docstring)."""
    state = read_serve_state(data_dir)
    url = (url or str(state["url"])).rstrip("/")
    registry = str(state["registry"])
    errors: list[str] = []
    status: dict[str, Any] = {"running": True, "pid": state.get("pid"), "url": url,
                              "registry": registry}  # fmt: skip
    metrics: dict[str, Any] = {}
    try:
        metrics = parse_metrics(_get(url + "/metrics").decode())
    except (DoraError, ValueError) as exc:
        errors.append(f"metrics: {exc}")
    try:
        health = json.loads(_get(url + "/health"))
        status["gateway_healthy"] = health.get("status") == "ok"
    except (DoraError, ValueError) as exc:
        status["gateway_healthy"] = False
        errors.append(f"gateway health: {exc}")
    services = _services(metrics)
    status["services"] = services
    status["gateways"] = {
        "processes": int(sum(v for _, v in metrics.get(m.GATEWAY_PROCESSES, []))),
        **services.get(GATEWAY_SERVICE, {}),
    }
    status["worker_restarts"] = services.get(WORKER_SERVICE, {}).get("restarts", 0)
    try:
        status["workers"] = _workers(registry, metrics)
    except (DoraError, ValueError, AttributeError) as exc:
        status["workers"] = []
        errors.append(f"registry: {exc}")
    by_status = _by(metrics.get(m.REQUESTS + "_total", []), "status")
    status["requests"] = {
        "total": int(sum(by_status.values())),
        "errors": int(
            sum(v for (code,), v in by_status.items() if code.isdigit() and int(code) >= 500)
        ),
    }
    try:
        status["pipelines"], status["failures"] = _jobs_api(url, data_dir, failures)
    except (DoraError, KeyError, TypeError) as exc:
        status["pipelines"], status["failures"] = [], []
        errors.append(f"management API: {getattr(exc, 'message', exc)}")
    status["errors"] = errors
    return status


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _ago(when: Any) -> str:
    if not isinstance(when, int | float):
        return "-"
    seconds = max(0.0, time.time() - when)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def render_status(status: dict[str, Any]) -> str:
    """The terminal summary of :func:`collect_status`'s answer."""
    lines = [f"Dora at {status['url']} (supervisor pid {status['pid']}, "
             f"registry {status['registry']})"]  # fmt: skip
    gw = status["gateways"]
    lines.append(
        f"Gateways: {gw.get('running', gw.get('processes', 0))} running of "
        f"{gw.get('desired', '?')}, {'healthy' if status['gateway_healthy'] else 'NOT healthy'}, "
        f"restarts {gw.get('restarts', 0)}; requests {status['requests']['total']} "
        f"({status['requests']['errors']} 5xx)"
    )
    workers = status["workers"]
    passing = sum(1 for w in workers if w["status"] == "passing")
    lines.append(f"Workers: {passing} passing of {len(workers)}, "
                 f"restarts {status['worker_restarts']}")  # fmt: skip
    if workers:
        rows = [["ID", "ADDRESS", "STATUS", "LOAD", "IN-FLIGHT", "BUSY", "QUEUED"]]
        for w in workers:
            load = "-" if w["load"] is None else f"{w['load']:g}"
            rows.append([w["id"], w["address"], w["status"], load, str(w["inflight"]),
                         str(w["threads_busy"]), str(w["queued"])])  # fmt: skip
        lines += _table(rows)
    lines.append(f"Pipelines: {len(status['pipelines'])}")
    if status["pipelines"]:
        rows = [["NAME", "CONCURRENCY", "PAUSED", "QUEUED", "RUNNING", "DONE", "FAILED"]]
        for p in status["pipelines"]:
            jobs = p.get("jobs", {})
            counts = [str(jobs.get(s, 0)) for s in ("queued", "running", "done", "failed")]
            paused = "yes" if p.get("paused") else "no"
            rows.append([str(p.get("name")), str(p.get("concurrency")), paused, *counts])
        lines += _table(rows)
    failures = status["failures"]
    lines.append(f"Recent failures: {len(failures) or 'none'}")
    if failures:
        rows = [["JOB", "PIPELINE", "INPUT", "FINISHED", "ERROR"]]
        for f in failures:
            rows.append([str(f["id"]), str(f["pipeline"]), f["input"], _ago(f["finished"]),
                         str(f["error"])[:120]])  # fmt: skip
        lines += _table(rows)
    for error in status["errors"]:
        lines.append(f"(could not read {error})")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from dora.cli import _settings  # noqa: PLC0415 - cli imports this module

    settings = _settings(args)
    try:
        status = collect_status(settings.data_dir, url=args.url, failures=args.failures)
    except NotRunning as exc:
        if args.json:
            print(json.dumps({"running": False, "reason": str(exc)}))
        print(f"dora status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, ensure_ascii=False, indent=2))
    else:
        print(render_status(status))
    return 0


def add_status_command(sub: Any, common: Common) -> None:
    """Register ``dora status`` on the CLI's subparsers."""
    p = sub.add_parser("status", help="summarise the running system: workers, pipelines, failures")
    common(p)
    p.add_argument("--url", help="gateway URL (default: the running serve's)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--failures", type=int, default=5, help="recent failed jobs to show")
    p.set_defaults(func=cmd_status)
