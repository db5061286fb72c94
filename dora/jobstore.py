"""The JobStore seam: where asynchronous jobs (pfop) wait, run and are recorded.

The gateway enqueues jobs and answers ``/status/get/prefop`` from the store;
the scheduler's dispatcher leases jobs, records each item's result as soon
as it is known, completes them and delivers their notify callbacks from the
store's outbox. Implementations: :class:`SqliteJobStore` (one SQLite file,
the default) and, for several schedulers, a server database.

A job's life (see :mod:`dora.jobs` for the model)::

    enqueue ─▶ queued ──lease──▶ running ──complete──▶ done | failed ──▶ notify outbox
                 ▲                  │ fail / cancel ─────▶ failed
                 └── lease expired, release (attempts < max) ┘

Errors, all from :mod:`dora.errors` or :mod:`dora.jobs`: ``BadRequest`` for
bad input (including an unknown pipeline at enqueue), ``TooManyRequests``
(429) when a pipeline already holds ``max_queued`` waiting jobs,
``UnknownJob`` (612) for an unknown id, ``NotFound`` for an unknown
pipeline in the management calls, ``Conflict`` (409) when a request
contradicts the state (retrying a job that did not fail, deleting a busy
pipeline, reusing a job id), ``LeaseLost`` (409) when a runner writes to a
job it no longer holds, ``ServiceUnavailable`` once the store is closed or
while the database stays locked.
"""

from __future__ import annotations

import builtins
import types
from typing import Protocol, Self, runtime_checkable

from dora.jobs import Job, JobItem, JobPage, JobSpec, JobState, Pipeline
from dora.jobstore_sqlite import SqliteJobStore

__all__ = ["JobStore", "SqliteJobStore"]


@runtime_checkable
class JobStore(Protocol):
    """Durable, leased job queues with per-pipeline concurrency (see module doc)."""

    async def enqueue(self, spec: JobSpec) -> Job:
        """Queue a job. With ``spec.id`` set, enqueueing the same job again returns
        the first one; an id already used by a different job is a ``Conflict``.
        A paused pipeline still accepts jobs; a full one is 429."""
        ...

    async def lease(self, owner: str, lease_seconds: float, limit: int) -> builtins.list[Job]:
        """Lease up to ``limit`` queued jobs to ``owner`` for ``lease_seconds``.

        Pipelines are served round-robin (one job each in turn), each up to
        its concurrency (its jobs running now, whoever runs them); paused
        pipelines give none. Jobs whose lease expired are queued again first
        (their finished items kept), or fail once leased ``max_attempts``
        times. Each lease counts one attempt.
        """
        ...

    async def heartbeat(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; ``False`` when the lease is lost (expired and
        requeued, taken over, finished) or the job was cancelled: stop then."""
        ...

    async def update_item(self, job_id: str, owner: str, item: JobItem) -> None:
        """Record one item's progress or result, durably, before acting on it.

        A re-leased job keeps its finished items, so a runner skips them
        (:meth:`dora.jobs.Job.pending_items`). ``LeaseLost`` if ``owner``
        no longer holds the job.
        """
        ...

    async def complete(self, job_id: str, owner: str) -> Job:
        """Finish the job: done if every item is done, else failed (items that
        never ran fail too). The notify, if any, enters the outbox."""
        ...

    async def fail(self, job_id: str, owner: str, error: str) -> Job:
        """Fail the whole job with ``error`` (unfinished items carry it)."""
        ...

    async def release(self, job_id: str, owner: str, error: str = "") -> Job:
        """Give the job back to its queue (a transient failure); after
        ``max_attempts`` leases it fails with ``error`` instead."""
        ...

    async def mark_notified(self, job_id: str, ok: bool, attempts: int) -> bool:
        """Record the notify's outcome (``ok=False``: the job reports code 4).
        Record it before acknowledging anything; ``False`` if already recorded."""
        ...

    async def pending_notifies(
        self, limit: int, *, owner: str | None = None, lease_seconds: float = 60.0
    ) -> builtins.list[Job]:
        """Finished jobs whose notify is not yet recorded, oldest first. With
        ``owner``, claim them for ``lease_seconds`` (others skip claimed ones;
        the same owner, restarted, gets its own claims back at once)."""
        ...

    async def get(self, job_id: str) -> Job:
        """The job, or ``UnknownJob`` (612)."""
        ...

    async def list(
        self,
        state: JobState | None = None,
        pipeline: str | None = None,
        limit: int = 100,
        marker: str | None = None,
    ) -> JobPage:
        """Jobs, newest first, optionally of one state and pipeline; page on
        with the returned marker ('' when there is no more)."""
        ...

    async def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job fails at once with error ``cancelled``; a running
        one is asked to stop (its heartbeat answers ``False``); a finished one
        is left as it is."""
        ...

    async def retry(self, job_id: str) -> Job:
        """Queue a failed job again: failed items run again, done items are
        kept. ``Conflict`` unless the job failed."""
        ...

    async def purge(self, before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` jobs finished before ``before`` (Unix time)
        whose notify is settled; the number deleted."""
        ...

    async def create_pipeline(
        self, name: str, concurrency: int | None = None, max_queued: int | None = None
    ) -> Pipeline:
        """A new pipeline (``Conflict`` if the name is taken); defaults from the options."""
        ...

    async def update_pipeline(
        self, name: str, *, concurrency: int | None = None, max_queued: int | None = None
    ) -> Pipeline:
        """Change a pipeline's concurrency or queue bound."""
        ...

    async def get_pipeline(self, name: str) -> Pipeline:
        """The pipeline (``''`` and ``0.default`` name the default one)."""
        ...

    async def list_pipelines(self) -> builtins.list[Pipeline]:
        """Every pipeline, by name."""
        ...

    async def pause(self, name: str) -> Pipeline:
        """Stop leasing the pipeline's jobs (it still accepts new ones)."""
        ...

    async def resume(self, name: str) -> Pipeline:
        """Lease the pipeline's jobs again."""
        ...

    async def delete_pipeline(self, name: str) -> None:
        """Delete an idle pipeline; ``Conflict`` while it has queued or running jobs."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """``{pipeline: {state: number of jobs}}``, every state present."""
        ...

    async def close(self) -> None:
        """Finish the calls in flight and release the store; harmless twice."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None: ...
