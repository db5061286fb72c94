"""The notify outbox of the SQLite job store.

A job with a ``notifyURL`` enters the outbox when it finishes (its
``notify_state`` turns ``pending`` in the same transaction as its final
state) and leaves it when the dispatcher records the outcome with
:meth:`NotifyOutbox.mark`: ``sent``, or ``failed`` after the dispatcher
gave up (the job then reports code 4). A dispatcher claims pending notifies
for a while (``owner``, ``lease_seconds``) so two dispatchers do not deliver
the same one at once; a claim it did not settle (it died) lapses and
another dispatcher, or the same owner restarted, takes it up. Once marked,
a notify is never handed out again, and marking it twice is a no-op that
answers ``False``: delivery happens at least once, and is recorded exactly
once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable

from dora.errors import UnknownJob
from dora.jobs import Conflict, Job, JobStoreOptions, NotifyState
from dora.jobstore_sql import load_jobs, placeholders

Transaction = Callable[..., contextlib.AbstractContextManager[sqlite3.Connection]]

_PENDING = NotifyState.PENDING.value
_SETTLED = (NotifyState.SENT.value, NotifyState.FAILED.value)


class NotifyOutbox:
    """List, claim and settle the notifies of finished jobs."""

    def __init__(self, tx: Transaction, options: JobStoreOptions, clock: Callable[[], float]):
        self._tx = tx
        self._opts = options
        self._clock = clock

    def pending(self, limit: int, owner: str | None, lease_seconds: float) -> list[Job]:
        """Pending notifies, oldest finished first; with ``owner``, claim them."""
        limit = self._opts.check_limit(limit)
        if owner is None:
            with self._tx(write=False) as conn:
                rows = conn.execute(
                    "SELECT seq FROM jobs WHERE notify_state = ? ORDER BY finished, seq LIMIT ?",
                    (_PENDING, limit),
                ).fetchall()
                return load_jobs(conn, [row[0] for row in rows])
        self._opts.check_lease(owner, lease_seconds)
        now = self._clock()
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT seq FROM jobs WHERE notify_state = ? AND (notify_expires IS NULL "
                "OR notify_expires < ? OR notify_owner = ?) ORDER BY finished, seq LIMIT ?",
                (_PENDING, now, owner, limit),
            ).fetchall()
            seqs = [row[0] for row in rows]
            if seqs:
                conn.execute(
                    f"UPDATE jobs SET notify_owner = ?, notify_expires = ? "
                    f"WHERE seq IN ({placeholders(len(seqs))})",
                    (owner, now + lease_seconds, *seqs),
                )
            return load_jobs(conn, seqs)

    def mark(self, job_id: str, ok: bool, attempts: int) -> bool:
        """Record the outcome; ``False`` if it had been recorded already."""
        with self._tx(durable=True) as conn:
            row = conn.execute(
                "SELECT seq, state, notify_state FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise UnknownJob(f"no such job: {job_id}")
            if row[2] in _SETTLED:
                return False
            if row[2] != _PENDING:
                raise Conflict(f"job {job_id} has no notify waiting (it is {row[1]})")
            conn.execute(
                "UPDATE jobs SET notify_state = ?, notify_attempts = ?, notify_owner = NULL, "
                "notify_expires = NULL, updated = ? WHERE seq = ?",
                (NotifyState.SENT.value if ok else NotifyState.FAILED.value, max(0, attempts),
                 self._clock(), row[0]),
            )  # fmt: skip
            return True
