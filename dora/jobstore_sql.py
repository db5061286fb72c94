"""The SQLite side of the job store: schema, migrations, rows ↔ model.

One file in WAL mode, so readers never block the single writer; every
write transaction starts with ``BEGIN IMMEDIATE``, so several processes on
one file (a restarted scheduler, a second one) serialise their writes and
always decide on fresh data. The schema version lives in
``PRAGMA user_version``; :func:`migrate` brings an older file up to date and
refuses a file written by a newer Dora.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dora.errors import DoraError
from dora.jobs import (
    DEFAULT_PIPELINE,
    Job,
    JobCode,
    JobItem,
    JobState,
    JobStoreOptions,
    NotifyState,
    Pipeline,
)

SCHEMA_VERSION = 1

# Each entry upgrades the file from version ``index`` to ``index + 1``.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pipelines (
        name        TEXT PRIMARY KEY,
        concurrency INTEGER NOT NULL,
        max_queued  INTEGER NOT NULL,
        paused      INTEGER NOT NULL DEFAULT 0,
        created     REAL NOT NULL
    );
    CREATE TABLE jobs (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT NOT NULL UNIQUE,
        pipeline         TEXT NOT NULL,
        bucket           TEXT NOT NULL,
        key              TEXT NOT NULL,
        fops             TEXT NOT NULL,
        notify_url       TEXT NOT NULL,
        force            INTEGER NOT NULL,
        type             INTEGER NOT NULL,
        reqid            TEXT NOT NULL,
        state            TEXT NOT NULL,
        error            TEXT NOT NULL DEFAULT '',
        attempts         INTEGER NOT NULL DEFAULT 0,
        lease_owner      TEXT,
        lease_expires    REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        notify_state     TEXT NOT NULL DEFAULT 'none',
        notify_attempts  INTEGER NOT NULL DEFAULT 0,
        notify_owner     TEXT,
        notify_expires   REAL,
        created          REAL NOT NULL,
        updated          REAL NOT NULL,
        finished         REAL
    );
    CREATE INDEX jobs_by_pipeline ON jobs (pipeline, state, seq);
    CREATE INDEX jobs_by_state ON jobs (state, seq);
    CREATE INDEX jobs_notify ON jobs (notify_state, finished) WHERE notify_state = 'pending';
    CREATE TABLE items (
        job_seq    INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
        idx        INTEGER NOT NULL,
        cmd        TEXT NOT NULL,
        code       INTEGER NOT NULL,
        desc       TEXT NOT NULL,
        error      TEXT NOT NULL DEFAULT '',
        key        TEXT NOT NULL DEFAULT '',
        keys       TEXT NOT NULL DEFAULT '[]',
        hash       TEXT NOT NULL DEFAULT '',
        return_old INTEGER NOT NULL DEFAULT 0,
        progress   REAL,
        meta       TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (job_seq, idx)
    ) WITHOUT ROWID;
    """,
)

JOB_COLUMNS = (
    "seq, id, pipeline, bucket, key, fops, notify_url, force, type, reqid, state, error, "
    "attempts, lease_owner, lease_expires, cancel_requested, notify_state, notify_attempts, "
    "created, updated, finished"
)
ITEM_COLUMNS = "job_seq, idx, cmd, code, desc, error, key, keys, hash, return_old, progress, meta"
PIPELINE_COLUMNS = "name, concurrency, max_queued, paused, created"


def connect(path: Path, options: JobStoreOptions) -> sqlite3.Connection:
    """Open the file in WAL mode, autocommit (transactions are explicit)."""
    conn = sqlite3.connect(
        path, timeout=options.busy_timeout, isolation_level=None, check_same_thread=True
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(options.busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise DoraError(f"job store {path}: cannot use WAL journaling (got {mode!r})")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool) -> Iterator[sqlite3.Connection]:
    """One transaction; a write one takes the file's write lock up front."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, options: JobStoreOptions, now: float) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` and make sure ``default`` exists."""
    with transaction(conn, write=True):
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise DoraError(
                f"the job store was written by a newer Dora (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); refusing to touch it"
            )
        for script in _MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(
            "INSERT OR IGNORE INTO pipelines (name, concurrency, max_queued, paused, created) "
            "VALUES (?, ?, ?, 0, ?)",
            (DEFAULT_PIPELINE, options.default_concurrency, options.default_max_queued, now),
        )


def placeholders(count: int) -> str:
    """``?, ?, ...`` for an ``IN (...)`` of ``count`` values."""
    return ", ".join("?" * count)


def item_from_row(row: Sequence[Any]) -> JobItem:
    return JobItem(
        index=row[1],
        cmd=row[2],
        code=JobCode(row[3]),
        desc=row[4],
        error=row[5],
        key=row[6],
        keys=tuple(json.loads(row[7])),
        hash=row[8],
        return_old=bool(row[9]),
        progress=row[10],
        meta=json.loads(row[11]),
    )


def item_values(item: JobItem) -> dict[str, Any]:
    """The columns of ``item`` (without its job and index), ready to bind."""
    return {
        "code": int(item.code),
        "desc": item.desc,
        "error": item.error,
        "key": item.key,
        "keys": json.dumps(list(item.keys), ensure_ascii=False),
        "hash": item.hash,
        "return_old": int(item.return_old),
        "progress": item.progress,
        "meta": json.dumps(dict(item.meta), ensure_ascii=False, separators=(",", ":")),
    }


def job_from_row(row: Sequence[Any], items: Sequence[JobItem]) -> Job:
    fops = row[5]
    return Job(
        id=row[1],
        pipeline=row[2],
        bucket=row[3],
        key=row[4],
        fops=fops,
        chains=tuple(item.cmd for item in items),
        notify_url=row[6],
        force=bool(row[7]),
        type=row[8],
        reqid=row[9],
        state=JobState(row[10]),
        error=row[11],
        attempts=row[12],
        lease_owner=row[13],
        lease_expires=row[14],
        cancel_requested=bool(row[15]),
        notify_state=NotifyState(row[16]),
        notify_attempts=row[17],
        created=row[18],
        updated=row[19],
        finished=row[20],
        items=tuple(items),
    )


def pipeline_from_row(row: Sequence[Any]) -> Pipeline:
    return Pipeline(
        name=row[0],
        concurrency=row[1],
        max_queued=row[2],
        paused=bool(row[3]),
        created=row[4],
    )


def load_jobs(conn: sqlite3.Connection, seqs: Sequence[int]) -> list[Job]:
    """The jobs with these ``seq`` values, in the order given."""
    if not seqs:
        return []
    marks = placeholders(len(seqs))
    rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE seq IN ({marks})", seqs)
    by_seq = {row[0]: row for row in rows}
    items: dict[int, list[JobItem]] = {seq: [] for seq in by_seq}
    for row in conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE job_seq IN ({marks}) ORDER BY job_seq, idx",
        seqs,
    ):
        items[row[0]].append(item_from_row(row))
    return [job_from_row(by_seq[seq], items[seq]) for seq in seqs if seq in by_seq]
