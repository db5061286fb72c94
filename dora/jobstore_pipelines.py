"""Pipelines (named job queues) in the SQLite job store.

Run synchronously on the store's thread, like :mod:`dora.jobstore_db`. The
``default`` pipeline always exists: it cannot be deleted, only tuned,
paused and resumed. Unknown names are :class:`dora.errors.NotFound` here
(management calls), while enqueueing into one is a ``BadRequest``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable

from dora.errors import BadRequest, NotFound
from dora.jobs import (
    DEFAULT_PIPELINE,
    Conflict,
    JobState,
    JobStoreOptions,
    Pipeline,
    pipeline_name,
)
from dora.jobstore_sql import PIPELINE_COLUMNS, pipeline_from_row

Transaction = Callable[..., contextlib.AbstractContextManager[sqlite3.Connection]]


class PipelineTable:
    """Create, tune, pause, resume, list and delete pipelines."""

    def __init__(self, tx: Transaction, options: JobStoreOptions, clock: Callable[[], float]):
        self._tx = tx
        self._opts = options
        self._clock = clock

    def create(self, name: str, concurrency: int | None, max_queued: int | None) -> Pipeline:
        name = pipeline_name(name)
        concurrency, max_queued = self._check_sizes(concurrency, max_queued)
        with self._tx(durable=True) as conn:
            if self._row(conn, name) is not None:
                raise Conflict(f"pipeline {name!r} already exists")
            total = conn.execute("SELECT count(*) FROM pipelines").fetchone()[0]
            if total >= self._opts.max_pipelines:
                raise BadRequest(f"too many pipelines: at most {self._opts.max_pipelines}")
            conn.execute(
                "INSERT INTO pipelines (name, concurrency, max_queued, paused, created) "
                "VALUES (?, ?, ?, 0, ?)",
                (name, concurrency, max_queued, self._clock()),
            )
            return self._get(conn, name)

    def update(self, name: str, concurrency: int | None, max_queued: int | None) -> Pipeline:
        name = pipeline_name(name)
        with self._tx(durable=True) as conn:
            current = self._get(conn, name)
            concurrency, max_queued = self._check_sizes(
                current.concurrency if concurrency is None else concurrency,
                current.max_queued if max_queued is None else max_queued,
            )
            conn.execute(
                "UPDATE pipelines SET concurrency = ?, max_queued = ? WHERE name = ?",
                (concurrency, max_queued, name),
            )
            return self._get(conn, name)

    def set_paused(self, name: str, paused: bool) -> Pipeline:
        name = pipeline_name(name)
        with self._tx(durable=True) as conn:
            self._get(conn, name)
            conn.execute("UPDATE pipelines SET paused = ? WHERE name = ?", (int(paused), name))
            return self._get(conn, name)

    def get(self, name: str) -> Pipeline:
        with self._tx(write=False) as conn:
            return self._get(conn, pipeline_name(name))

    def list(self) -> list[Pipeline]:
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT {PIPELINE_COLUMNS} FROM pipelines ORDER BY name")
            return [pipeline_from_row(row) for row in rows]

    def delete(self, name: str) -> None:
        name = pipeline_name(name)
        if name == DEFAULT_PIPELINE:
            raise BadRequest("the default pipeline cannot be deleted")
        with self._tx(durable=True) as conn:
            self._get(conn, name)
            active = dict(
                conn.execute(
                    "SELECT state, count(*) FROM jobs WHERE pipeline = ? AND state IN (?, ?) "
                    "GROUP BY state",
                    (name, JobState.QUEUED.value, JobState.RUNNING.value),
                ).fetchall()
            )
            if active:
                queued = active.get(JobState.QUEUED.value, 0)
                running = active.get(JobState.RUNNING.value, 0)
                raise Conflict(
                    f"pipeline {name!r} still has {queued} queued and {running} running jobs; "
                    "cancel them or let them finish first"
                )
            conn.execute("DELETE FROM pipelines WHERE name = ?", (name,))

    def _row(self, conn: sqlite3.Connection, name: str) -> Pipeline | None:
        row = conn.execute(
            f"SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else pipeline_from_row(row)

    def _get(self, conn: sqlite3.Connection, name: str) -> Pipeline:
        pipeline = self._row(conn, name)
        if pipeline is None:
            raise NotFound(f"no such pipeline: {name}")
        return pipeline

    def _check_sizes(self, concurrency: int | None, max_queued: int | None) -> tuple[int, int]:
        opts = self._opts
        concurrency = opts.default_concurrency if concurrency is None else concurrency
        max_queued = opts.default_max_queued if max_queued is None else max_queued
        if not 1 <= concurrency <= opts.max_concurrency:
            raise BadRequest(f"concurrency must be 1-{opts.max_concurrency}, not {concurrency}")
        if not 1 <= max_queued <= opts.max_queued_limit:
            raise BadRequest(f"max_queued must be 1-{opts.max_queued_limit}, not {max_queued}")
        return concurrency, max_queued
