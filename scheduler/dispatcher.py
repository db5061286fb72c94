"""The job dispatcher: leases jobs from the store and runs them, bounded.

One :class:`Dispatcher` per scheduler process. Its loop leases as many jobs
as it has free slots (``DispatchPolicy.max_jobs``); the store decides which,
serving pipelines round-robin within each pipeline's concurrency, so several
dispatchers sharing one store stay within those bounds together. Each leased
job runs in a task of its own (:class:`dora.scheduler.jobrun.JobRun`), and
the :class:`dora.scheduler.notify.Notifier` delivers the callbacks of
finished jobs from the store's outbox.

Jobs come from gateways in other processes. With a ``wake_path`` the
dispatcher listens there (:class:`dora.wakeup.WakeListener`) and leases as
soon as a submitter signals a new job; when the queues are empty it also
looks again every ``poll_interval`` seconds, which is what finds the jobs
no wake-up announced (a lost datagram, a socket another dispatcher took
over, a path too long to bind).

When a job had to be released for transient failures (no worker answers),
leasing pauses for ``release_pause`` seconds, doubling while releases go
on, up to ``max_release_pause``: there is no point taking jobs nobody can
run.

Shutdown (:meth:`Dispatcher.stop`, or cancelling :meth:`Dispatcher.run`)
stops leasing, gives running jobs ``shutdown_grace`` seconds, then cancels
the rest: their worker calls are cancelled and the jobs released to their
queues with finished items kept, so the next start takes them up at once.
Crash safety does not depend on any of this: the jobs of a runner that was
killed come back when their short lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import shutil
import socket
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from dora import ssrf
from dora.errors import DoraError
from dora.fop import Catalog
from dora.jobs import Job
from dora.jobstore import JobStore
from dora.scheduler.jobrun import (
    JOB_CATALOG,
    DispatchPolicy,
    JobContext,
    JobRun,
    Outcome,
    Processor,
)
from dora.scheduler.metrics import timed_run
from dora.scheduler.notify import Notifier, NotifyPolicy
from dora.storage.base import ObjectStore
from dora.wakeup import WakeListener

__all__ = ["DispatchPolicy", "Dispatcher", "NotifyPolicy", "Outcome", "sweep_work_root"]

log = logging.getLogger(__name__)

STALE_WORK = 3600.0  # seconds past the job timeout after which a work directory is litter


def default_owner() -> str:
    """A lease owner name unique to this process."""
    return f"dispatcher-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def sweep_work_root(work_root: Path, older_than: float) -> int:
    """Remove call work directories untouched for ``older_than`` seconds (left by a
    crash between a worker's answer and its storing); the number removed."""
    cutoff = time.time() - older_than
    removed = 0
    try:
        entries = list(os.scandir(work_root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


class Dispatcher:
    """Leases and runs jobs, and delivers their notifies (see the module doc).

    ``async with Dispatcher(...) as d:`` then ``await d.run()`` (in a task);
    ``d.stop()`` ends it gracefully.
    """

    def __init__(
        self,
        store: JobStore,
        objects: ObjectStore,
        processor: Processor,
        *,
        work_root: Path,
        policy: DispatchPolicy | None = None,
        notify_policy: NotifyPolicy | None = None,
        allow: Sequence[ssrf.IPNetwork] = (),
        owner: str | None = None,
        catalog: Catalog = JOB_CATALOG,
        max_source_bytes: int = 20 * 1024 * 1024,
        max_item_keys: int = 10_000,
        wake_path: Path | None = None,
    ) -> None:
        self.policy = policy or DispatchPolicy()
        self.owner = owner or default_owner()
        self.work_root = work_root
        self.ctx = JobContext(
            store=store,
            objects=objects,
            processor=processor,
            owner=self.owner,
            work_root=work_root,
            policy=self.policy,
            catalog=catalog,
            max_source_bytes=max_source_bytes,
            max_item_keys=max_item_keys,
        )
        self.notifier = Notifier(store, owner=self.owner, allow=allow, policy=notify_policy)
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self._runs: dict[str, asyncio.Task[Outcome]] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pause_until = 0.0
        self._pause = 0.0
        self._entered = False
        self._listener = WakeListener(wake_path, self.nudge) if wake_path is not None else None

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a Dispatcher is entered once")
        self._entered = True
        await self.notifier.__aenter__()
        older = self.policy.job_timeout + STALE_WORK
        swept = await asyncio.to_thread(sweep_work_root, self.work_root, older)
        if swept:
            log.info("removed %d stale work directories", swept)
        if self._listener is not None:
            await self._listener.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()
        if self._listener is not None:
            self._listener.close()
        await self._drain()
        await self.notifier.aclose()

    @property
    def running(self) -> list[str]:
        """Ids of the jobs running now."""
        return list(self._runs)

    def stop(self) -> None:
        """Stop leasing; :meth:`run` drains running jobs and returns."""
        self._stopping.set()
        self._wake.set()

    def nudge(self) -> None:
        """Lease now rather than at the next poll (a job was just enqueued)."""
        self._wake.set()

    async def run(self) -> None:
        """Lease and run jobs until :meth:`stop` (or cancellation), then drain."""
        notifier = asyncio.create_task(self.notifier.run(), name="notifier")
        try:
            await self._lease_loop()
        finally:
            await self._drain()
            notifier.cancel()
            await asyncio.wait([notifier])

    async def _lease_loop(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        while not self._stopping.is_set():
            self._wake.clear()
            free = policy.max_jobs - len(self._runs)
            paused_for = self._pause_until - loop.time()
            if free <= 0 or paused_for > 0:
                await self._sleep(paused_for if free > 0 else policy.poll_interval)
                continue
            try:
                jobs = await self.ctx.store.lease(self.owner, policy.lease_seconds, free)
            except DoraError as exc:
                log.warning("cannot lease jobs: %s", exc.message)
                jobs = []
            for job in jobs:
                self._start(job)
            if not jobs:
                await self._sleep(policy.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken (a slot freed, stop, nudge)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()

    def _start(self, job: Job) -> None:
        log.info("job %s: leased (attempt %d, %d items pending)", job.id, job.attempts,
                 len(job.pending_items()))  # fmt: skip
        # timed_run: the job's reqid on its worker calls, its duration in the metrics.
        run = timed_run(JobRun(self.ctx, job).run(), job)
        task = asyncio.create_task(run, name=f"run-{job.id}")
        self._runs[job.id] = task
        task.add_done_callback(functools.partial(self._finished, job.id))

    def _finished(self, job_id: str, task: asyncio.Task[Outcome]) -> None:
        self._runs.pop(job_id, None)
        self._wake.set()
        if task.cancelled():
            log.info("job %s: given back to its queue (shutting down)", job_id)
            return
        exc = task.exception()
        if exc is not None:
            # The store failed under the run; its lease expires and it runs again.
            log.error("job %s: run stopped by %r", job_id, exc)
            self.outcomes[Outcome.LOST] += 1
            return
        outcome = task.result()
        self.outcomes[outcome] += 1
        log.info("job %s: %s", job_id, outcome.value)
        if outcome is Outcome.RELEASED:
            policy = self.policy
            self._pause = min(max(self._pause * 2, policy.release_pause), policy.max_release_pause)
            self._pause_until = asyncio.get_running_loop().time() + self._pause
        else:
            self._pause = 0.0
        if outcome in (Outcome.FINISHED, Outcome.CANCELLED):
            self.notifier.wake()

    async def _drain(self) -> None:
        """Give running jobs the grace period, then cancel (and so release) the rest."""
        tasks = list(self._runs.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.policy.shutdown_grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
