"""The gateway's observability: ``GET /metrics``, request metrics and request ids.

:func:`observe_middleware` (the outermost middleware) binds the request's
``X-Reqid`` for the request's logs and the worker calls it makes
(:mod:`dora.logs`), then counts and times every request by route, op and
final status (``dora_requests_total``, ``dora_request_seconds``) and logs
one ``request`` line. Route is ``process`` (a processing URL), ``object``
(a download), ``upload`` (``POST /``), ``manage`` (``/v1``), ``unmatched``,
or else the route's last literal path segment (``pfop``, ``prefop``,
``health``, ``metrics``, ...); op is a processing URL's chain of op names
(``imageView2``, ``imageView2|watermark``; names not in the catalog are
``unknown``), empty elsewhere. A client that hangs up
counts as status 499. The time is the handler's, up to its answer; a file
answer's sending is not in it.

``GET /metrics`` answers Prometheus' text format. Under ``dora serve`` it
merges the files of every process of the installation (gateways, workers,
the supervisor: see :mod:`dora.metrics`), so any gateway gives the same
answer; without a multiprocess directory it shows this process's metrics.
Before answering, this gateway copies its caches' and its worker pool's
state into the metrics (every gateway also does so each second, so the
others' are at most that old), and reads the job counts (``dora_jobs``) from
the job store, at most once per :data:`JOB_COUNTS_EVERY` seconds. The route
is not signed, like ``/health``: expose it to the network you scrape from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dora import metrics as m
from dora.errors import DoraError
from dora.fop import Catalog
from dora.gateway.cache import LruCache, ResultCache, SourceCache
from dora.gateway.context import GatewayContext
from dora.gateway.errors import request_id
from dora.gateway.urls import split_query
from dora.jobstore import JobStore
from dora.logs import REQID
from dora.workers.metrics import HasPoolStats, PoolSampler

__all__ = ["add_metrics", "observe_middleware"]

log = logging.getLogger("dora.access")

SAMPLE_EVERY = 1.0  # seconds between a gateway's copies of its caches and pool
JOB_COUNTS_EVERY = 2.0  # at most one job-store read per this many seconds
JOB_COUNTS_TIMEOUT = 2.0  # a scrape waits this long for the counts, then shows the last
CLIENT_GONE = 499


@dataclasses.dataclass(frozen=True, slots=True)
class _GatewayMetrics:
    requests: m.LabelCache[Counter]
    request_seconds: m.LabelCache[Histogram]
    hits: Counter
    misses: Counter
    cache_bytes: Gauge
    cache_entries: Gauge
    gateways: Gauge


@functools.cache
def _gateway_metrics() -> _GatewayMetrics:
    """This process's gateway metrics, created once (see :mod:`dora.metrics`)."""
    m.multiprocess_dir()  # claims this process's pid in the shared directory, once
    reg = m.process_registry()
    return _GatewayMetrics(
        m.LabelCache(Counter(m.REQUESTS, "HTTP requests by route, op and status",
                             ["route", "op", "status"], registry=reg).labels),
        m.LabelCache(Histogram(m.REQUEST_SECONDS, "Time to answer a request", ["route", "op"],
                               buckets=m.LATENCY_BUCKETS, registry=reg).labels),
        Counter(m.CACHE_HITS, "Cache lookups answered from memory", ["cache"], registry=reg),
        Counter(m.CACHE_MISSES, "Cache lookups not in memory", ["cache"], registry=reg),
        Gauge(m.CACHE_BYTES, "Bytes held by the gateways' caches", ["cache"],
              multiprocess_mode="livesum", registry=reg),
        Gauge(m.CACHE_ENTRIES, "Entries held by the gateways' caches", ["cache"],
              multiprocess_mode="livesum", registry=reg),
        Gauge(m.GATEWAY_PROCESSES, "Gateway applications serving", multiprocess_mode="livesum",
              registry=reg),
    )  # fmt: skip


# -- requests ---------------------------------------------------------------------------


def _op_label(request: web.Request, catalog: Catalog | None) -> tuple[str, str]:
    """Route and op labels of a request the catch-all route answered."""
    try:
        fops, _ = split_query(request.raw_path.partition("?")[2])
    except DoraError:
        return "process", "invalid"
    if fops is None:
        return "object", ""
    names = [part.partition("/")[0] for part in fops.split("|")]
    known = None if catalog is None else catalog.__contains__
    return "process", m.ops_label((n for n in names if n != "saveas"), known)


def _labels(request: web.Request, state: _RequestLabels | None) -> tuple[str, str]:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched", ""
    canonical = resource.canonical
    if canonical == "/{tail}":
        route, op = _op_label(request, state.catalog if state else None)
        if op:
            op = state.ops(op) if state is not None else m.OTHER  # bounded either way
        return route, op
    if canonical.startswith("/v1/"):
        return "manage", ""
    # The last literal segment: /status/get/prefop -> prefop, /mkblk/{size} -> mkblk.
    literal = [part for part in canonical.split("/") if part and not part.startswith("{")]
    return (literal[-1] if literal else "upload"), ""


@dataclasses.dataclass(frozen=True, slots=True)
class _RequestLabels:
    catalog: Catalog
    ops: m.LabelGuard


LABELS: Final = web.AppKey("dora_metrics_labels", _RequestLabels)


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the reqid; count, time and log the request (see the module docstring)."""
    reqid = request_id(request)
    token = REQID.set(reqid)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = CLIENT_GONE
        raise
    finally:
        REQID.reset(token)
        seconds = time.perf_counter() - started
        route, op = _labels(request, request.app.get(LABELS))
        metrics = _gateway_metrics()
        metrics.requests(route, op, str(status)).inc()
        metrics.request_seconds(route, op).observe(seconds)
        if log.isEnabledFor(logging.INFO):
            log.info("request", extra={
                "reqid": reqid, "method": request.method, "route": route, "op": op,
                "status": status, "ms": round(seconds * 1000, 1),
            })  # fmt: skip


# -- state copied into the metrics ------------------------------------------------------


class _CacheSampler:
    """Copies the caches' counters and sizes into the metrics."""

    def __init__(self, results: ResultCache, sources: SourceCache) -> None:
        self._caches: dict[str, LruCache[Any, Any]] = {
            "result": results.lru,
            "source": sources.lru,
        }
        self._copied = {name: (0, 0) for name in self._caches}  # hits, misses
        metrics = _gateway_metrics()
        for name in self._caches:  # the series exist (at 0) before the first lookup
            metrics.hits.labels(name)
            metrics.misses.labels(name)

    def sample(self) -> None:
        metrics = _gateway_metrics()
        for name, lru in self._caches.items():
            hits, misses = self._copied[name]
            if lru.hits > hits:
                metrics.hits.labels(name).inc(lru.hits - hits)
            if lru.misses > misses:
                metrics.misses.labels(name).inc(lru.misses - misses)
            self._copied[name] = (lru.hits, lru.misses)
            metrics.cache_bytes.labels(name).set(lru.used_bytes)
            metrics.cache_entries.labels(name).set(len(lru))

    def zero(self) -> None:
        metrics = _gateway_metrics()
        for name in self._caches:
            metrics.cache_bytes.labels(name).set(0)
            metrics.cache_entries.labels(name).set(0)


class JobCounts:
    """``dora_jobs{pipeline, state}``, read from the job store no more than every ``every`` s."""

    def __init__(self, jobs: JobStore | None, every: float = JOB_COUNTS_EVERY) -> None:
        self._jobs = jobs
        self._every = every
        self._counts: dict[str, dict[str, int]] = {}
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the counts if the last read is older than ``every`` (bounded in time)."""
        if self._jobs is None:
            return
        async with self._lock:  # concurrent scrapes share one read
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._every:
                return
            self._read_at = now
            try:
                async with asyncio.timeout(JOB_COUNTS_TIMEOUT):
                    self._counts = await self._jobs.counts()
            except (DoraError, TimeoutError) as exc:
                log.warning("job counts for /metrics: %r; showing the last ones", exc)

    def collect(self) -> Iterable[Metric]:
        if self._jobs is None:
            return []
        family = GaugeMetricFamily(
            m.JOBS, "Jobs by pipeline and state", labels=["pipeline", "state"]
        )
        for pipeline, states in sorted(self._counts.items()):
            for state, count in sorted(states.items()):
                family.add_metric([pipeline, state], count)
        return [family]


class _Files:
    """Every process's metrics from the multiprocess directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        return m.collect_files(self.path)


_PER_INSTANCE: Final = frozenset({m.POOL_INFLIGHT, m.POOL_LOAD})


class _Chain:
    """Several collectors as one; pool series only of instances listed now (if given)."""

    def __init__(self, collectors: Sequence[Collector], instances: frozenset[str] | None) -> None:
        self._collectors = collectors
        self._instances = instances

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            for metric in collector.collect():
                if self._instances is not None and metric.name in _PER_INSTANCE:
                    # A series removed in multiprocess mode stays in its file (at 0).
                    metric.samples = [
                        s for s in metric.samples if s.labels.get("instance") in self._instances
                    ]
                yield metric


class MetricsExporter:
    """The state behind one gateway application's ``/metrics``."""

    def __init__(self, ctx: GatewayContext, results: ResultCache, sources: SourceCache) -> None:
        self.directory = m.multiprocess_dir()
        self.caches = _CacheSampler(results, sources)
        processor = ctx.processor
        self.pool = PoolSampler(processor) if isinstance(processor, HasPoolStats) else None
        self.jobs = JobCounts(ctx.jobs)
        self._base: Collector = _Files(self.directory) if self.directory else m.process_registry()

    def sample(self) -> None:
        self.caches.sample()
        if self.pool is not None:
            self.pool.sample()

    async def render(self) -> bytes:
        self.sample()
        await self.jobs.refresh()
        instances = self.pool.instances if self.pool and self.directory else None
        # Reading every process's files is blocking I/O: off the loop.
        chain = _Chain([self._base, self.jobs], instances)
        return await asyncio.to_thread(generate_latest, chain)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Count this gateway as serving; copy its state each second when processes share."""
        gateways = _gateway_metrics().gateways
        gateways.inc()

        async def loop() -> None:
            while True:
                await asyncio.sleep(SAMPLE_EVERY)
                self.sample()

        task = asyncio.create_task(loop(), name="metrics-sampler") if self.directory else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
            gateways.dec()
            self.caches.zero()


EXPORTER: Final = web.AppKey("dora_metrics_exporter", MetricsExporter)


async def handle_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus' text format."""
    body = await request.app[EXPORTER].render()
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    async with app[EXPORTER].running():
        yield


def add_metrics(
    app: web.Application, ctx: GatewayContext, results: ResultCache, sources: SourceCache
) -> None:
    """Add ``GET /metrics`` and its state to ``app`` (before the catch-all route)."""
    app[LABELS] = _RequestLabels(ctx.catalog, m.LabelGuard())
    app[EXPORTER] = MetricsExporter(ctx, results, sources)
    app.cleanup_ctx.append(_lifespan)
    app.router.add_get("/metrics", handle_metrics)
