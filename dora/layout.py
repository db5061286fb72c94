"""Where an installation keeps its data, under one data directory.

Every process of ``dora serve`` (gateways, workers, the dispatcher) finds the
same files through these functions, so the layout is written down once::

    <data_dir>/
        buckets/          the local object store (one folder per bucket)
        jobs.sqlite3      the durable job store (WAL)
        keys.json         the access key pairs
        serve.json        the running supervisor's address and registry
        tmp/work/         outputs of audio/video calls before they are saved
        tmp/dispatch.sock the dispatcher's wake-up socket (dora.wakeup)
        tmp/metrics/      Prometheus multiprocess files of every process
        tmp/uploads/      resumable uploads in progress (v1 blocks, v2 parts)
"""

from __future__ import annotations

from pathlib import Path

from dora.config import Settings

BUCKETS_DIR = "buckets"
JOBS_DB = "jobs.sqlite3"
SERVE_STATE = "serve.json"
WORK_DIR = Path("tmp") / "work"
UPLOADS_DIR = Path("tmp") / "uploads"
DISPATCH_SOCKET = Path("tmp") / "dispatch.sock"


def buckets_root(settings: Settings) -> Path:
    """The local object store's root."""
    return settings.data_dir.resolve() / BUCKETS_DIR


def job_store_path(settings: Settings) -> Path:
    """The SQLite job store shared by the gateways and the dispatcher."""
    return settings.data_dir.resolve() / JOBS_DB


def work_root(settings: Settings) -> Path:
    """Where workers write audio/video outputs for the dispatcher to save."""
    return settings.data_dir.resolve() / WORK_DIR


def uploads_root(settings: Settings) -> Path:
    """Where resumable uploads keep their blocks and parts until completed."""
    return settings.data_dir.resolve() / UPLOADS_DIR


def dispatch_socket_path(settings: Settings) -> Path:
    """The dispatcher's wake-up socket, which job submitters signal (:mod:`dora.wakeup`)."""
    return settings.data_dir.resolve() / DISPATCH_SOCKET
