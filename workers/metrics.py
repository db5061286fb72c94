"""Metrics and per-call log lines of builtin workers, and of the pools that call them.

A worker process observes each RPC call (:class:`CallObserver`): once its
answer is sent (or the call is cancelled: status 499) it counts the call by
ops and status, times it from arrival to answer, adds up the bytes in and
out, and logs one structured line (reqid, ops, status, ms, bytes). The op
chain itself is timed in its thread, which also tells how many op threads
are busy (:meth:`CallObserver.wrap_chain`); every second the worker publishes its
calls in flight, busy threads and queued calls, labelled with its instance
id (:meth:`CallObserver.gauges`).

Under ``dora serve`` these land in the installation's multiprocess metrics
directory (see :mod:`dora.metrics`), which a gateway's ``/metrics`` merges:
workers need no metrics endpoint or RPC of their own, and a worker that dies
takes its gauges with it (the supervisor's sweep) while its counts stay in
the totals.

A process that calls workers samples its :class:`~dora.workers.pool.WorkerPool`
(:class:`PoolSampler`): calls in flight to each instance and the load each
last reported, as this pool sees them, summed over the gateways and the
dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from prometheus_client import Counter, Gauge, Histogram

from dora import metrics as m
from dora.config import Limits
from dora.ops import Output
from dora.rpc import CallRequest
from dora.workers.avchain import is_av_call
from dora.workers.pool_state import PoolStats

__all__ = ["CallObserver", "CallRecord", "HasPoolStats", "PoolSampler"]

log = logging.getLogger("dora.call")

GAUGE_EVERY = 1.0  # seconds between a worker's gauge updates
ChainFn = Callable[[Sequence[Sequence[str]], bytes, Limits], Output]


@dataclasses.dataclass(frozen=True, slots=True)
class _WorkerMetrics:
    calls: m.LabelCache[Counter]
    call_seconds: m.LabelCache[Histogram]
    op_seconds: m.LabelCache[Histogram]
    bytes: m.LabelCache[Counter]
    inflight: Gauge
    threads_busy: Gauge
    queued: Gauge


@functools.cache
def _worker_metrics() -> _WorkerMetrics:
    """This process's worker metrics, created once (see :mod:`dora.metrics`)."""
    m.multiprocess_dir()  # claims this process's pid in the shared directory, once
    reg = m.process_registry()
    return _WorkerMetrics(
        m.LabelCache(Counter(m.WORKER_CALLS, "RPC calls answered by builtin workers",
                             ["op", "status"], registry=reg).labels),
        m.LabelCache(Histogram(m.WORKER_CALL_SECONDS, "Worker calls from arrival to answer",
                               ["op"], buckets=m.LATENCY_BUCKETS, registry=reg).labels),
        m.LabelCache(Histogram(m.WORKER_OP_SECONDS, "Op chains run in a worker thread", ["op"],
                               buckets=m.LATENCY_BUCKETS, registry=reg).labels),
        m.LabelCache(Counter(m.WORKER_BYTES, "Source and result bytes through workers",
                             ["direction"], registry=reg).labels),
        Gauge(m.WORKER_INFLIGHT, "Calls in flight in a worker", ["instance"],
              multiprocess_mode="livesum", registry=reg),
        Gauge(m.WORKER_THREADS_BUSY, "Op threads running a chain", ["instance"],
              multiprocess_mode="livesum", registry=reg),
        Gauge(m.WORKER_QUEUED, "Calls admitted and waiting for an op thread", ["instance"],
              multiprocess_mode="livesum", registry=reg),
    )  # fmt: skip


@dataclasses.dataclass(slots=True)
class CallRecord:
    """What the observer noted when a call arrived."""

    reqid: str | None
    ops: str
    bytes_in: int
    started: float  # perf_counter
    queued: bool  # counts toward the op-thread queue (image calls)


CANCELLED = 499  # the call was cancelled before its answer (the client left)


def _status(response: Mapping[str, Any] | None) -> int:
    if response is None:
        return CANCELLED
    if response.get("ok") is True:
        return 200
    code = response.get("code")
    return code if isinstance(code, int) else 500


class CallObserver:
    """Counts, times and logs a worker's calls (see the module docstring)."""

    def __init__(self) -> None:
        self._metrics = _worker_metrics()
        self._ops = m.LabelGuard()
        self._lock = threading.Lock()  # op threads and the loop both count
        self._busy = 0
        self._pending = 0  # image calls admitted whose answer is not ready

    @property
    def threads_busy(self) -> int:
        """Op threads running a chain now."""
        return self._busy

    def begin(self, req: CallRequest) -> CallRecord:
        """A call arrived (admitted or about to be refused)."""
        src = req["src"]
        size = len(src["bytes"]) if "bytes" in src else 0
        if "path" in src:  # a local object read in place: its size on disk
            with contextlib.suppress(OSError):
                size = os.stat(src["path"]).st_size
        names = [stage[0] for stage in req["stages"]]
        queued = not is_av_call(req["stages"])  # AV calls have threads of their own
        if queued:
            with self._lock:
                self._pending += 1
        return CallRecord(
            req.get("reqid"), self._ops(m.ops_label(names)), size, time.perf_counter(), queued
        )

    def end(self, record: CallRecord, response: Mapping[str, Any] | None) -> None:
        """The call is over: count, time and log it (``response`` None: cancelled)."""
        seconds = time.perf_counter() - record.started
        if record.queued:
            with self._lock:
                self._pending -= 1
        status = _status(response)
        body = response.get("body") if response is not None else None
        bytes_out = len(body) if isinstance(body, bytes) else 0
        metrics = self._metrics
        metrics.calls(record.ops, str(status)).inc()
        metrics.call_seconds(record.ops).observe(seconds)
        metrics.bytes("in").inc(record.bytes_in)
        metrics.bytes("out").inc(bytes_out)
        log.info(
            "call",
            extra={
                "reqid": record.reqid,
                "ops": record.ops,
                "status": status,
                "ms": round(seconds * 1000, 1),
                "bytes_in": record.bytes_in,
                "bytes_out": bytes_out,
            },
        )

    def wrap_chain(self, chain: ChainFn) -> ChainFn:
        """``chain``, timed in its thread and counted as a busy thread while it runs."""
        op_seconds = self._metrics.op_seconds

        def run(wire: Sequence[Sequence[str]], src: bytes, limits: Limits) -> Output:
            label = self._ops(m.ops_label(stage[0] for stage in wire))
            with self._lock:
                self._busy += 1
            started = time.perf_counter()
            try:
                return chain(wire, src, limits)
            finally:
                op_seconds(label).observe(time.perf_counter() - started)
                with self._lock:
                    self._busy -= 1

        return run

    def publish(self, instance: str, inflight: int) -> None:
        """Set this worker's gauges (``inflight`` from its executor)."""
        metrics = self._metrics
        metrics.inflight.labels(instance).set(inflight)
        metrics.threads_busy.labels(instance).set(self._busy)
        metrics.queued.labels(instance).set(max(0, self._pending - self._busy))

    @contextlib.asynccontextmanager
    async def gauges(self, instance: str, inflight: Callable[[], int]) -> AsyncIterator[None]:
        """Publish the gauges every :data:`GAUGE_EVERY` seconds while the block runs."""

        async def loop() -> None:
            while True:
                self.publish(instance, inflight())
                await asyncio.sleep(GAUGE_EVERY)

        task = asyncio.create_task(loop(), name="worker-gauges")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])
            metrics = self._metrics
            for gauge in (metrics.inflight, metrics.threads_busy, metrics.queued):
                gauge.labels(instance).set(0)


# -- the calling side --------------------------------------------------------------


@runtime_checkable
class HasPoolStats(Protocol):
    """A processor that can describe its instances (the worker pool)."""

    def stats(self) -> PoolStats: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _PoolMetrics:
    inflight: Gauge
    load: Gauge
    calls: Counter
    failures: Counter
    retries: Counter


@functools.cache
def _pool_metrics() -> _PoolMetrics:
    m.multiprocess_dir()  # claims this process's pid in the shared directory, once
    reg = m.process_registry()
    return _PoolMetrics(
        Gauge(m.POOL_INFLIGHT, "Calls sent to a worker instance and not yet answered",
              ["instance"], multiprocess_mode="livesum", registry=reg),
        Gauge(m.POOL_LOAD, "The load a worker instance last reported to a pool", ["instance"],
              multiprocess_mode="livemax", registry=reg),
        Counter(m.POOL_CALLS, "Calls given to the worker pools", registry=reg),
        Counter(m.POOL_FAILURES, "Pool calls that failed after any retries", registry=reg),
        Counter(m.POOL_RETRIES, "Pool calls sent again to another instance", registry=reg),
    )  # fmt: skip


class PoolSampler:
    """Copies a pool's counters and per-instance state into the metrics."""

    def __init__(self, pool: HasPoolStats) -> None:
        self._pool = pool
        self._metrics = _pool_metrics()
        self._seen: set[str] = set()
        self._totals = (0, 0, 0)  # calls, failures, retries copied so far

    @property
    def instances(self) -> frozenset[str]:
        """The instance labels of the last sample."""
        return frozenset(self._seen)

    def sample(self) -> None:
        """Bring the metrics up to date with the pool (cheap; on the loop)."""
        stats = self._pool.stats()
        metrics = self._metrics
        totals = (stats.calls, stats.failures, stats.retries)
        for counter, now, before in zip(
            (metrics.calls, metrics.failures, metrics.retries), totals, self._totals, strict=True
        ):
            if now > before:
                counter.inc(now - before)
        self._totals = totals
        current: set[str] = set()
        for inst in stats.instances[: m.MAX_LABEL_VALUES]:
            label = inst.id  # from the registry: as many as instances run at once
            current.add(label)
            metrics.inflight.labels(label).set(inst.inflight)
            metrics.load.labels(label).set(inst.load)
        for gone in self._seen - current:
            # Zero first: in multiprocess mode removing a series leaves its file entry.
            for gauge in (metrics.inflight, metrics.load):
                gauge.labels(gone).set(0)
                gauge.remove(gone)
        self._seen = current
