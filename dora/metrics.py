"""Dora's Prometheus metrics: names, bounded labels, and the files that join processes.

How the processes of one installation reach one ``/metrics``
-----------------------------------------------------------

``dora serve`` runs several processes: the supervisor (scheduler, job
dispatcher, notify), one or more gateways sharing a port, and the builtin
workers, which restart when they die. They share metrics through
prometheus-client's *multiprocess mode*: the supervisor empties
``<data_dir>/tmp/metrics`` at start (:func:`reset_metrics_dir`) and every
process it starts gets ``PROMETHEUS_MULTIPROC_DIR`` pointing there
(:func:`metrics_env`), so each one writes its own counters, histograms and
gauges into small memory-mapped files named after its pid. A gateway's
``GET /metrics`` merges every file (:func:`collect_files`): the answer does
not depend on which gateway the kernel picked, and a worker's counters reach
it without any RPC. Only the job counts are read live (from the shared job
store) by the gateway that answers.

Processes come and go, so the files are kept honest:

- a process starting claims its pid (:func:`claim_pid`): live-gauge files a
  dead process with the same pid left behind are removed;
- the supervisor sweeps the directory every few seconds
  (:func:`compact_dead`): a dead process's gauges are dropped (its
  in-flight calls are gone), and its counters and histograms are folded into
  one archive file per type, so totals never go backwards and the number of
  files stays bounded however often workers restart;
- readers take a shared ``flock`` on the directory's lock file and the sweep
  an exclusive one, so a scrape never sees a process's counts both in its
  own file and in the archive.

Without ``PROMETHEUS_MULTIPROC_DIR`` (tests, a gateway run alone) every
process keeps its metrics in memory (:func:`process_registry`) and exposes
its own. Either way the metric objects are created once per process, by the
role that writes them (``dora.gateway.metrics``, ``dora.workers.metrics``,
``dora.scheduler.metrics``): prometheus-client's values are per process by
nature, and in multiprocess mode two objects with one name would overwrite
each other's file entries.

This module imports prometheus-client only inside functions: the supervisor
must set ``PROMETHEUS_MULTIPROC_DIR`` (:func:`use_metrics_dir`) before the
library is first imported, since it picks its storage at import time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Generic, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

# -- names (counters are exposed with ``_total``, histograms with ``_bucket`` ...) ------

REQUESTS: Final = "dora_requests"  # counter {route, op, status}
REQUEST_SECONDS: Final = "dora_request_seconds"  # histogram {route, op}
CACHE_HITS: Final = "dora_cache_hits"  # counter {cache: result|source}
CACHE_MISSES: Final = "dora_cache_misses"  # counter {cache}
CACHE_BYTES: Final = "dora_cache_bytes"  # gauge {cache}, summed over gateways
CACHE_ENTRIES: Final = "dora_cache_entries"  # gauge {cache}
GATEWAY_PROCESSES: Final = "dora_gateway_processes"  # gauge: live gateway processes
POOL_INFLIGHT: Final = "dora_pool_inflight"  # gauge {instance}: calls sent, not answered
POOL_LOAD: Final = "dora_pool_load"  # gauge {instance}: load the worker last reported
POOL_CALLS: Final = "dora_pool_calls"  # counter: calls the pools were given
POOL_FAILURES: Final = "dora_pool_failures"  # counter: calls that failed after any retries
POOL_RETRIES: Final = "dora_pool_retries"  # counter: calls sent again to another instance
WORKER_CALLS: Final = "dora_worker_calls"  # counter {op, status}
WORKER_CALL_SECONDS: Final = "dora_worker_call_seconds"  # histogram {op}: arrival to answer
WORKER_OP_SECONDS: Final = "dora_worker_op_seconds"  # histogram {op}: the chain in its thread
WORKER_BYTES: Final = "dora_worker_bytes"  # counter {direction: in|out}
WORKER_INFLIGHT: Final = "dora_worker_inflight"  # gauge {instance}
WORKER_THREADS_BUSY: Final = "dora_worker_threads_busy"  # gauge {instance}
WORKER_QUEUED: Final = "dora_worker_queued"  # gauge {instance}: admitted, waiting for a thread
RESTARTS: Final = "dora_restarts"  # counter {service}: instances the scheduler replaced
INSTANCES: Final = "dora_instances"  # gauge {service, kind: running|desired}
JOBS: Final = "dora_jobs"  # gauge {pipeline, state}: read from the job store at scrape time
JOB_SECONDS: Final = "dora_job_seconds"  # histogram {pipeline, outcome}: lease to end
JOB_ITEMS: Final = "dora_job_items"  # counter {status: done|failed}
NOTIFY_ATTEMPTS: Final = "dora_notify_attempts"  # counter {outcome}
NOTIFIES: Final = "dora_notifies"  # counter {result: delivered|failed|refused}

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS: Final = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

# -- bounded labels ------------------------------------------------------------------

OTHER: Final = "other"
MAX_LABEL_VALUES = 64  # distinct values of one open-ended label, per process
MAX_LABEL_OPS = 4  # op names spelled out in a chain label


class LabelGuard:
    """At most ``limit`` distinct values of one label; later newcomers become ``other``.

    Op chains and pipeline names come from outside; without a bound a client
    could mint series without end.
    """

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # workers label from their op threads

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
        return value


C = TypeVar("C")


class LabelCache(Generic[C]):
    """A metric's children by label values, looked up once each.

    ``metric.labels(...)`` costs microseconds per call, on every request;
    the values are bounded (:class:`LabelGuard`), so is this cache. Not for
    metrics whose series are removed.
    """

    def __init__(self, labels: Callable[..., C]) -> None:
        self._labels = labels
        self._children: dict[tuple[str, ...], C] = {}

    def __call__(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._labels(*values)
        return child


def ops_label(names: Iterable[str], known: Callable[[str], bool] | None = None) -> str:
    """A chain's op names as one label value: ``imageView2|watermark``.

    Names ``known`` rejects become ``unknown``; beyond :data:`MAX_LABEL_OPS`
    names the label ends in ``|+``.
    """
    out: list[str] = []
    for count, name in enumerate(names):
        if count == MAX_LABEL_OPS:
            out.append("+")
            break
        out.append(name if known is None or known(name) else "unknown")
    return "|".join(out) or "none"


# -- the multiprocess directory ------------------------------------------------------

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR: Final = Path("tmp") / "metrics"
LOCK_FILE: Final = "lock"
ARCHIVE: Final = "archive"  # counter_archive.db, histogram_archive.db
LOCK_WAIT = 2.0  # seconds a reader or the sweep waits for the directory lock
_FILE = re.compile(r"(counter|histogram|gauge_live[a-z]+)_(\d+)\.db")


def metrics_dir(data_dir: Path) -> Path:
    """Where the processes of the installation at ``data_dir`` keep their metrics."""
    return data_dir.resolve() / METRICS_DIR


def metrics_env(data_dir: Path) -> dict[str, str]:
    """The environment that puts a child process in multiprocess mode."""
    return {MULTIPROC_ENV: str(metrics_dir(data_dir))}


def use_metrics_dir(data_dir: Path) -> Path:
    """Put this process in multiprocess mode; call before prometheus-client is imported."""
    path = metrics_dir(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def reset_metrics_dir(path: Path) -> None:
    """Empty ``path`` of a previous run's files (the supervisor, before anything starts)."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.suffix in (".db", ".tmp") and entry.is_file():
            entry.unlink(missing_ok=True)


def multiprocess_dir() -> Path | None:
    """The shared directory when this process writes its metrics there, else None.

    The first call in a process claims its pid there (:func:`claim_pid`), so
    every role calls this before it creates its metrics.
    """
    raw = os.environ.get(MULTIPROC_ENV)
    if not raw:
        return None
    from prometheus_client import values  # noqa: PLC0415 - see the module docstring

    if not getattr(values.ValueClass, "_multiprocess", False):
        return None  # prometheus-client was imported before the variable was set
    return _claimed(raw, os.getpid())


@functools.cache
def _claimed(raw: str, pid: int) -> Path:
    path = Path(raw)
    path.mkdir(parents=True, exist_ok=True)
    claim_pid(path)  # once per process: later it would drop this process's own gauges
    return path


def claim_pid(path: Path) -> None:
    """Remove live gauges a dead process with this process's pid left in ``path``."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(os.getpid(), str(path))  # type: ignore[no-untyped-call]


@functools.cache
def process_registry() -> CollectorRegistry:
    """This process's registry of Dora metrics (exposed as is without multiprocess mode)."""
    import prometheus_client  # noqa: PLC0415

    # ``_created`` series only add noise here
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    return prometheus_client.CollectorRegistry()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def dir_lock(path: Path, *, exclusive: bool, wait: float = LOCK_WAIT) -> Iterator[bool]:
    """Hold the directory's lock (shared for readers); yields False if ``wait`` ran out."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        give_up = time.monotonic() + wait
        held = False
        while True:
            try:
                fcntl.flock(fd, mode)
                held = True
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > give_up:
                    break
                time.sleep(0.01)
        yield held
    finally:
        os.close(fd)  # closing releases the lock


def collect_files(path: Path) -> list[Metric]:
    """Every process's metrics in ``path``, merged (blocking: call it in a thread)."""
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    with dir_lock(path, exclusive=False):
        files = [str(p) for p in path.glob("*.db")]
        merged = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return list(merged)


def compact_dead(path: Path, alive: Callable[[int], bool] = pid_alive) -> int:
    """Drop dead processes' gauges and fold their counters and histograms into the
    archive files; the number of processes swept (blocking: call it in a thread)."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    with dir_lock(path, exclusive=True) as held:
        if not held:
            return 0  # a slow reader: sweep next time
        dead: dict[str, list[Path]] = {}
        pids: set[int] = set()
        for entry in path.glob("*.db"):
            match = _FILE.fullmatch(entry.name)
            if match is None or alive(int(match.group(2))):
                continue
            pids.add(int(match.group(2)))
            dead.setdefault(match.group(1), []).append(entry)
        for kind, files in dead.items():
            if kind in ("counter", "histogram"):
                archive = path / f"{kind}_{ARCHIVE}.db"
                sources = [str(f) for f in files]
                if archive.exists():
                    sources.append(str(archive))
                merged = MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
                tmp = path / f"{kind}_{ARCHIVE}.tmp"
                tmp.unlink(missing_ok=True)
                out = MmapedDict(str(tmp))  # type: ignore[no-untyped-call]
                try:
                    for metric in merged:
                        for sample in metric.samples:
                            labels = sample.labels
                            key = mmap_key(
                                metric.name, sample.name, list(labels), list(labels.values()),
                                metric.documentation,
                            )  # fmt: skip
                            out.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
                finally:
                    out.close()  # type: ignore[no-untyped-call]
                os.replace(tmp, archive)
            for f in files:
                f.unlink(missing_ok=True)
    return len(pids)
