"""The supervisor's metrics and job log lines: restarts, jobs, notifies, and the sweep.

The supervisor of ``dora serve`` writes its metrics into the installation's
multiprocess directory like every other process (see :mod:`dora.metrics`),
so a gateway's ``/metrics`` shows them; it needs no endpoint of its own.

- :class:`MetricsKeeper` copies the scheduler's state each second —
  instances replaced per service (``dora_restarts_total``), instances
  running and desired — and the dispatcher's worker pool; every few seconds
  it sweeps the directory of processes that died (:func:`dora.metrics.compact_dead`).
- :func:`timed_run` wraps one job run for the dispatcher: binds the job's
  reqid (its worker calls carry it), observes its duration by pipeline and
  outcome (``dora_job_seconds``), and logs one ``job`` line.
- :func:`item_finished` counts and logs each finished job item (``job item``
  lines carry the job's reqid), :func:`notify_attempt` and
  :func:`notify_settled` count the notify callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from dora import metrics as m
from dora.jobs import Job, JobCode, JobItem
from dora.logs import bound_reqid
from dora.scheduler.provider import TaskState
from dora.workers.metrics import HasPoolStats, PoolSampler

__all__ = ["MetricsKeeper", "item_finished", "notify_attempt", "notify_settled", "timed_run"]

log = logging.getLogger("dora.jobs")

T = TypeVar("T")
SAMPLE_EVERY = 1.0  # seconds between copies of the scheduler's state
SWEEP_EVERY = 5.0  # seconds between sweeps of dead processes' files
RUNNING = TaskState.RUNNING.value


@dataclasses.dataclass(frozen=True, slots=True)
class _SupervisorMetrics:
    restarts: Counter
    instances: Gauge
    job_seconds: Histogram
    job_items: Counter
    notify_attempts: Counter
    notifies: Counter
    pipelines: m.LabelGuard


@functools.cache
def _supervisor_metrics() -> _SupervisorMetrics:
    """This process's supervisor metrics, created once (see :mod:`dora.metrics`)."""
    m.multiprocess_dir()  # claims this process's pid in the shared directory, once
    reg = m.process_registry()
    return _SupervisorMetrics(
        Counter(m.RESTARTS, "Instances the scheduler replaced after they failed", ["service"],
                registry=reg),
        Gauge(m.INSTANCES, "Instances of a service, running and desired", ["service", "kind"],
              multiprocess_mode="livesum", registry=reg),
        Histogram(m.JOB_SECONDS, "Job runs from lease to end", ["pipeline", "outcome"],
                  buckets=m.JOB_BUCKETS, registry=reg),
        Counter(m.JOB_ITEMS, "Job items (fop chains) finished", ["status"], registry=reg),
        Counter(m.NOTIFY_ATTEMPTS, "Notify POSTs by outcome", ["outcome"], registry=reg),
        Counter(m.NOTIFIES, "Notify callbacks settled", ["result"], registry=reg),
        m.LabelGuard(),
    )  # fmt: skip


# -- jobs and notifies ----------------------------------------------------------------


async def timed_run(run: Coroutine[Any, Any, T], job: Job) -> T:
    """Await one job run under the job's reqid; observe and log how it ended."""
    metrics = _supervisor_metrics()
    pipeline = metrics.pipelines(job.pipeline)
    started = time.monotonic()
    outcome = "lost"
    with bound_reqid(job.reqid):
        try:
            result = await run
            outcome = str(getattr(result, "value", result))
            return result
        except asyncio.CancelledError:
            outcome = "shutdown"
            raise
        finally:
            seconds = time.monotonic() - started
            metrics.job_seconds.labels(pipeline, outcome).observe(seconds)
            log.info("job", extra={
                "job": job.id, "pipeline": job.pipeline, "outcome": outcome,
                "ms": round(seconds * 1000, 1), "items": len(job.items),
            })  # fmt: skip


def item_finished(job: Job, item: JobItem, seconds: float) -> None:
    """Count and log one job item that reached its end (done or failed)."""
    status = "done" if item.code == JobCode.DONE else "failed"
    _supervisor_metrics().job_items.labels(status).inc()
    extra: dict[str, Any] = {
        "reqid": job.reqid,
        "job": job.id,
        "index": item.index,
        "ops": m.ops_label(part.partition("/")[0] for part in item.cmd.split("|")),
        "status": status,
        "ms": round(seconds * 1000, 1),
    }
    if item.error:
        extra["error"] = item.error
    log.info("job item", extra=extra)


def notify_attempt(outcome: str | None) -> None:
    """Count one notify POST: ``outcome`` is None when delivered, else what went wrong."""
    if outcome is None:
        label = "delivered"
    elif outcome.startswith("HTTP "):
        label = "http_error"
    elif outcome.startswith("no answer"):
        label = "timeout"
    else:
        label = "connect_error"
    _supervisor_metrics().notify_attempts.labels(label).inc()


def notify_settled(result: str) -> None:
    """Count one notify settled: ``delivered``, ``failed`` or ``refused`` (SSRF guard)."""
    _supervisor_metrics().notifies.labels(result).inc()


# -- the keeper -----------------------------------------------------------------------


class SchedulerView(Protocol):
    """What the keeper reads of the scheduler."""

    def snapshot(self) -> dict[str, dict[str, object]]: ...


class MetricsKeeper:
    """Copies the scheduler's state into the metrics and sweeps dead processes' files."""

    def __init__(
        self,
        scheduler: SchedulerView,
        pools: Sequence[object] = (),
        *,
        directory: Path | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._metrics = _supervisor_metrics()
        self._pools = [PoolSampler(p) for p in pools if isinstance(p, HasPoolStats)]
        self._directory = directory if directory is not None else m.multiprocess_dir()
        self._restarts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self._directory is None:
            log.info("no multiprocess metrics directory: supervisor metrics stay in-process")
        self.sample()
        self._task = asyncio.create_task(self._run(), name="metrics-keeper")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    def sample(self) -> None:
        """Copy the scheduler's restarts and instance counts, and the pools."""
        metrics = self._metrics
        for service, state in self._scheduler.snapshot().items():
            restarts = state.get("restarts")
            if isinstance(restarts, int):
                before = self._restarts.get(service, 0)
                if restarts > before or service not in self._restarts:
                    metrics.restarts.labels(service).inc(max(0, restarts - before))
                self._restarts[service] = restarts
            tasks = state.get("tasks")
            states = tasks.values() if isinstance(tasks, dict) else ()
            desired = state.get("desired")
            metrics.instances.labels(service, "running").set(sum(s == RUNNING for s in states))
            metrics.instances.labels(service, "desired").set(
                desired if isinstance(desired, int) else 0
            )
        for pool in self._pools:
            pool.sample()

    async def sweep(self) -> int:
        """Sweep the directory of dead processes' files now; how many were swept."""
        if self._directory is None:
            return 0
        return await asyncio.to_thread(m.compact_dead, self._directory)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_EVERY
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            self.sample()
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + SWEEP_EVERY
                with contextlib.suppress(OSError):  # a full disk must not stop the keeper
                    swept = await self.sweep()
                    if swept:
                        log.debug("metrics: swept the files of %d dead processes", swept)
