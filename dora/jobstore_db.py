"""The job store's transactions, synchronous, run on the store's own thread.

:class:`JobDatabase` owns one SQLite connection and is used from exactly one
thread (the :class:`dora.jobstore.SqliteJobStore` executor); each public
method is one transaction. Commits that record something a client was or
will be told (an enqueue, an item's result, a final state, a delivered
notify) are fsynced (``synchronous = FULL``); leases and heartbeats are not,
because losing one to a power cut only makes a job run again.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from dora.errors import BadRequest, TooManyRequests, UnknownJob
from dora.jobs import (
    Conflict,
    Job,
    JobCode,
    JobItem,
    JobPage,
    JobSpec,
    JobState,
    JobStoreOptions,
    LeaseLost,
    NotifyState,
    new_job_id,
    pipeline_name,
)
from dora.jobstore_outbox import NotifyOutbox
from dora.jobstore_pipelines import PipelineTable
from dora.jobstore_sql import (
    connect,
    item_values,
    load_jobs,
    migrate,
    placeholders,
    transaction,
)

_QUEUED, _RUNNING = JobState.QUEUED.value, JobState.RUNNING.value
_DONE, _FAILED = JobState.DONE.value, JobState.FAILED.value
_PENDING = NotifyState.PENDING.value
CANCELLED = "cancelled"


class JobDatabase:
    """Every job store operation as one SQLite transaction (see the module doc)."""

    def __init__(self, path: Path, options: JobStoreOptions, clock: Callable[[], float]) -> None:
        self._opts = options
        self._clock = clock
        self._rr_last: str | None = None  # pipeline served last, for round-robin
        self._synchronous = "NORMAL"
        self._conn = connect(path, options)
        try:
            migrate(self._conn, options, clock())
        except BaseException:
            self._conn.close()
            raise
        self.pipelines = PipelineTable(self._tx, options, clock)
        self.outbox = NotifyOutbox(self._tx, options, clock)

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _tx(self, *, write: bool = True, durable: bool = False) -> Iterator[sqlite3.Connection]:
        wanted = "FULL" if durable and self._opts.durable else "NORMAL"
        if write and wanted != self._synchronous:
            self._conn.execute(f"PRAGMA synchronous = {wanted}")  # outside any transaction
            self._synchronous = wanted
        with transaction(self._conn, write=write) as conn:
            yield conn

    # -- jobs ---------------------------------------------------------------

    def enqueue(self, spec: JobSpec) -> Job:
        name = pipeline_name(spec.pipeline)
        chains = self._opts.check_spec(spec)
        now = self._clock()
        with self._tx(durable=True) as conn:
            if spec.id is not None:
                existing = conn.execute(
                    "SELECT seq, bucket, key, fops, pipeline FROM jobs WHERE id = ?", (spec.id,)
                ).fetchone()
                if existing is not None:
                    if tuple(existing[1:]) != (spec.bucket, spec.key, spec.fops, name):
                        raise Conflict(f"job id {spec.id!r} is taken by a different job")
                    return load_jobs(conn, [existing[0]])[0]
            self._check_room(conn, name)
            job_id = spec.id or new_job_id()
            while conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                job_id = new_job_id()  # a random collision; never in practice
            cursor = conn.execute(
                "INSERT INTO jobs (id, pipeline, bucket, key, fops, notify_url, force, type, "
                "reqid, state, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, name, spec.bucket, spec.key, spec.fops, spec.notify_url,
                 int(spec.force), spec.type, spec.reqid, _QUEUED, now, now),
            )  # fmt: skip
            seq = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT INTO items (job_seq, idx, cmd, code, desc) VALUES (?, ?, ?, ?, ?)",
                [(seq, i, cmd, int(JobCode.WAITING), JobCode.WAITING.desc)
                 for i, cmd in enumerate(chains)],
            )  # fmt: skip
            return load_jobs(conn, [seq])[0]

    def lease(self, owner: str, lease_seconds: float, limit: int) -> builtins.list[Job]:
        self._opts.check_lease(owner, lease_seconds)
        limit = self._opts.check_limit(limit)
        now = self._clock()
        with self._tx() as conn:
            self._expire_leases(conn, now)
            running = dict(
                conn.execute(
                    "SELECT pipeline, count(*) FROM jobs WHERE state = ? GROUP BY pipeline",
                    (_RUNNING,),
                ).fetchall()
            )
            queues: dict[str, builtins.list[int]] = {}
            for name, concurrency in conn.execute(
                "SELECT name, concurrency FROM pipelines WHERE paused = 0 ORDER BY name"
            ).fetchall():
                free = min(concurrency - running.get(name, 0), limit)
                if free <= 0:
                    continue
                seqs = conn.execute(
                    "SELECT seq FROM jobs WHERE pipeline = ? AND state = ? ORDER BY seq LIMIT ?",
                    (name, _QUEUED, free),
                ).fetchall()
                if seqs:
                    queues[name] = [row[0] for row in reversed(seqs)]  # pop() takes the oldest
            picked = self._round_robin(queues, limit)
            if not picked:
                return []
            conn.execute(
                f"UPDATE jobs SET state = ?, lease_owner = ?, lease_expires = ?, "
                f"attempts = attempts + 1, updated = ? WHERE seq IN ({placeholders(len(picked))})",
                (_RUNNING, owner, now + lease_seconds, now, *picked),
            )
            return load_jobs(conn, picked)

    def _round_robin(self, queues: dict[str, builtins.list[int]], limit: int) -> builtins.list[int]:
        """Take one job per pipeline in turn, starting after the one served last."""
        names = sorted(queues)
        if not names:
            return []
        start = 0 if self._rr_last is None else bisect.bisect_right(names, self._rr_last)
        order = names[start:] + names[:start]
        picked: builtins.list[int] = []
        while len(picked) < limit and any(queues[name] for name in order):
            for name in order:
                if queues[name] and len(picked) < limit:
                    picked.append(queues[name].pop())
                    self._rr_last = name
        return picked

    def _expire_leases(self, conn: sqlite3.Connection, now: float) -> None:
        """Requeue jobs whose runner stopped renewing its lease, or give up on them."""
        expired = conn.execute(
            "SELECT seq, attempts, cancel_requested, lease_owner FROM jobs "
            "WHERE state = ? AND lease_expires < ?",
            (_RUNNING, now),
        ).fetchall()
        for seq, attempts, cancel_requested, owner in expired:
            if cancel_requested:
                self._finish(conn, seq, CANCELLED, CANCELLED, now)
            elif attempts >= self._opts.max_attempts:
                reason = (
                    f"gave up after {attempts} attempts: the runner's lease expired "
                    f"each time (last runner {owner!r})"
                )
                self._finish(conn, seq, reason, reason, now)
            else:
                self._requeue(conn, seq, now)

    def _requeue(self, conn: sqlite3.Connection, seq: int, now: float) -> None:
        conn.execute(
            "UPDATE items SET code = ?, desc = ?, progress = NULL WHERE job_seq = ? AND code = ?",
            (int(JobCode.WAITING), JobCode.WAITING.desc, seq, int(JobCode.PROCESSING)),
        )
        conn.execute(
            "UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires = NULL, updated = ? "
            "WHERE seq = ?",
            (_QUEUED, now, seq),
        )

    def _finish(
        self, conn: sqlite3.Connection, seq: int, job_error: str, item_error: str, now: float
    ) -> None:
        """Make the job final: unfinished items fail with ``item_error``."""
        conn.execute(
            "UPDATE items SET code = ?, desc = ?, error = ?, progress = NULL "
            "WHERE job_seq = ? AND code NOT IN (?, ?)",
            (int(JobCode.FAILED), JobCode.FAILED.desc, self._opts.clip(item_error), seq,
             int(JobCode.DONE), int(JobCode.FAILED)),
        )  # fmt: skip
        any_failed = conn.execute(
            "SELECT 1 FROM items WHERE job_seq = ? AND code = ? LIMIT 1", (seq, int(JobCode.FAILED))
        ).fetchone()
        state = _FAILED if job_error or any_failed else _DONE
        conn.execute(
            "UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, lease_expires = NULL, "
            "notify_state = CASE WHEN notify_url != '' THEN ? ELSE ? END, "
            "notify_owner = NULL, notify_expires = NULL, finished = ?, updated = ? WHERE seq = ?",
            (state, self._opts.clip(job_error), _PENDING, NotifyState.NONE.value, now, now, seq),
        )

    def _owned(self, conn: sqlite3.Connection, job_id: str, owner: str) -> tuple[int, bool, int]:
        """``(seq, cancel_requested, attempts)`` of a job ``owner`` holds, else LeaseLost."""
        row = conn.execute(
            "SELECT seq, state, lease_owner, cancel_requested, attempts FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise UnknownJob(f"no such job: {job_id}")
        if row[1] != _RUNNING or row[2] != owner:
            raise LeaseLost(f"job {job_id} is not leased by {owner!r} (it is {row[1]})")
        return row[0], bool(row[3]), row[4]

    def heartbeat(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        self._opts.check_lease(owner, lease_seconds)
        now = self._clock()
        with self._tx() as conn:
            try:
                seq, cancel_requested, _ = self._owned(conn, job_id, owner)
            except LeaseLost:
                return False
            if cancel_requested:
                return False
            conn.execute(
                "UPDATE jobs SET lease_expires = ?, updated = ? WHERE seq = ?",
                (now + lease_seconds, now, seq),
            )
            return True

    def update_item(self, job_id: str, owner: str, item: JobItem) -> None:
        values = item_values(self._opts.check_item(item))
        with self._tx(durable=True) as conn:
            seq, _, _ = self._owned(conn, job_id, owner)
            row = conn.execute(
                "SELECT cmd FROM items WHERE job_seq = ? AND idx = ?", (seq, item.index)
            ).fetchone()
            if row is None:
                raise BadRequest(f"job {job_id} has no item {item.index}")
            if row[0] != item.cmd:
                raise BadRequest(
                    f"item {item.index} of job {job_id} is {row[0]!r}, not {item.cmd!r}"
                )
            assignments = ", ".join(f"{column} = :{column}" for column in values)
            conn.execute(
                f"UPDATE items SET {assignments} WHERE job_seq = :seq AND idx = :idx",
                {**values, "seq": seq, "idx": item.index},
            )
            conn.execute("UPDATE jobs SET updated = ? WHERE seq = ?", (self._clock(), seq))

    def complete(self, job_id: str, owner: str) -> Job:
        with self._tx(durable=True) as conn:
            seq, cancel_requested, _ = self._owned(conn, job_id, owner)
            reason = CANCELLED if cancel_requested else "the runner finished without running it"
            self._finish(conn, seq, "", reason, self._clock())
            return load_jobs(conn, [seq])[0]

    def fail(self, job_id: str, owner: str, error: str) -> Job:
        error = error or "failed"
        with self._tx(durable=True) as conn:
            seq, _, _ = self._owned(conn, job_id, owner)
            self._finish(conn, seq, error, error, self._clock())
            return load_jobs(conn, [seq])[0]

    def release(self, job_id: str, owner: str, error: str) -> Job:
        now = self._clock()
        with self._tx(durable=True) as conn:
            seq, cancel_requested, attempts = self._owned(conn, job_id, owner)
            if cancel_requested:
                self._finish(conn, seq, CANCELLED, CANCELLED, now)
            elif attempts >= self._opts.max_attempts:
                reason = f"gave up after {attempts} attempts: {error or 'released by its runner'}"
                self._finish(conn, seq, reason, reason, now)
            else:
                self._requeue(conn, seq, now)
            return load_jobs(conn, [seq])[0]

    def get(self, job_id: str) -> Job:
        with self._tx(write=False) as conn:
            return load_jobs(conn, [self._seq(conn, job_id)])[0]

    def list(
        self, state: JobState | None, pipeline: str | None, limit: int, marker: str | None
    ) -> JobPage:
        limit = self._opts.check_limit(limit)
        where, args = ["1"], builtins.list[object]()
        if state is not None:
            where.append("state = ?")
            args.append(JobState(state).value)
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline_name(pipeline))
        if marker:
            if not marker.isdigit() or len(marker) > 19:
                raise BadRequest(f"invalid marker {marker!r}")
            where.append("seq < ?")
            args.append(int(marker))
        with self._tx(write=False) as conn:
            rows = conn.execute(
                f"SELECT seq FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            seqs = [row[0] for row in rows[:limit]]
            jobs = load_jobs(conn, seqs)
        return JobPage(tuple(jobs), str(seqs[-1]) if len(rows) > limit else "")

    def cancel(self, job_id: str) -> Job:
        now = self._clock()
        with self._tx(durable=True) as conn:
            seq = self._seq(conn, job_id)
            state = conn.execute("SELECT state FROM jobs WHERE seq = ?", (seq,)).fetchone()[0]
            if state in (_QUEUED, _RUNNING):
                conn.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated = ? WHERE seq = ?", (now, seq)
                )
            if state == _QUEUED:
                self._finish(conn, seq, CANCELLED, CANCELLED, now)
            return load_jobs(conn, [seq])[0]

    def retry(self, job_id: str) -> Job:
        now = self._clock()
        with self._tx(durable=True) as conn:
            seq = self._seq(conn, job_id)
            state, name = conn.execute(
                "SELECT state, pipeline FROM jobs WHERE seq = ?", (seq,)
            ).fetchone()
            if state != _FAILED:
                raise Conflict(f"job {job_id} is {state}; only a failed job (code 3) is retried")
            self._check_room(conn, name)
            conn.execute(
                "UPDATE items SET code = ?, desc = ?, error = '', key = '', keys = '[]', "
                "hash = '', return_old = 0, progress = NULL, meta = '{}' "
                "WHERE job_seq = ? AND code = ?",
                (int(JobCode.WAITING), JobCode.WAITING.desc, seq, int(JobCode.FAILED)),
            )
            conn.execute(
                "UPDATE jobs SET state = ?, error = '', attempts = 0, cancel_requested = 0, "
                "notify_state = ?, notify_attempts = 0, finished = NULL, updated = ? "
                "WHERE seq = ?",
                (_QUEUED, NotifyState.NONE.value, now, seq),
            )
            return load_jobs(conn, [seq])[0]

    def counts(self) -> dict[str, dict[str, int]]:
        with self._tx(write=False) as conn:
            out = {
                row[0]: {state.value: 0 for state in JobState}
                for row in conn.execute("SELECT name FROM pipelines")
            }
            for name, state, count in conn.execute(
                "SELECT pipeline, state, count(*) FROM jobs GROUP BY pipeline, state"
            ):
                out.setdefault(name, {s.value: 0 for s in JobState})[state] = count
            return out

    def purge(self, before: float, limit: int) -> int:
        limit = self._opts.check_limit(limit)
        with self._tx() as conn:
            cursor = conn.execute(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN (?, ?) "
                "AND finished < ? AND notify_state != ? ORDER BY seq LIMIT ?)",
                (_DONE, _FAILED, before, _PENDING, limit),
            )
            return cursor.rowcount

    # -- checks -------------------------------------------------------------

    def _seq(self, conn: sqlite3.Connection, job_id: str) -> int:
        row = conn.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no such job: {job_id}")
        return int(row[0])

    def _check_room(self, conn: sqlite3.Connection, name: str) -> None:
        """Raise unless pipeline ``name`` exists and has room for one more queued job."""
        row = conn.execute("SELECT max_queued FROM pipelines WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise BadRequest(f"no such pipeline: {name}")
        queued = conn.execute(
            "SELECT count(*) FROM jobs WHERE pipeline = ? AND state = ?", (name, _QUEUED)
        ).fetchone()[0]
        if queued >= row[0]:
            raise TooManyRequests(
                f"pipeline {name!r} is full: {queued} jobs are waiting and it holds at most "
                f"{row[0]} (max_queued); retry later",
                retry_after=5.0,
            )
