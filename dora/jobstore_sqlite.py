"""SqliteJobStore: the JobStore on one SQLite file (the default).

All SQL runs on one dedicated thread that owns the only connection, never
on the event loop; calls queue up on that thread in order. Every call is
shielded: a caller cancelled mid-write does not undo the write (the thread
finishes it), so bookkeeping is never half-done. Several processes may open
the same file (WAL mode, ``BEGIN IMMEDIATE`` writes, a busy timeout); a
restarted process finds every job where the last commit left it.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

from dora.errors import DoraError, ServiceUnavailable
from dora.jobs import Job, JobItem, JobPage, JobSpec, JobState, JobStoreOptions, Pipeline
from dora.jobstore_db import JobDatabase

T = TypeVar("T")


def _translate(exc: sqlite3.Error) -> DoraError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return ServiceUnavailable(f"job store is busy: {text}", retry_after=1.0)
    return DoraError(f"job store: {text}")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # The caller may have been cancelled; consume the outcome so it is not logged.
    if not fut.cancelled():
        fut.exception()


class SqliteJobStore:
    """:class:`dora.jobstore.JobStore` on the SQLite file ``path``.

    Use as ``async with SqliteJobStore(path) as store:`` (or ``await
    store.open()`` … ``await store.close()``). ``clock`` gives Unix time
    (tests pass a fake one to expire leases without waiting).
    """

    def __init__(
        self,
        path: Path | str,
        options: JobStoreOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.options = options or JobStoreOptions()
        self._clock = clock
        self._db: JobDatabase | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False

    async def open(self) -> Self:
        """Open (create or migrate) the file; a no-op when open, an error once closed."""
        async with self._open_lock:
            if self._closed:
                raise ServiceUnavailable("job store is closed")
            if self._db is not None:
                return self
            executor = ThreadPoolExecutor(1, thread_name_prefix="dora-jobstore")
            fut = asyncio.get_running_loop().run_in_executor(executor, self._open_db)
            try:
                self._db = await asyncio.shield(fut)
            except asyncio.CancelledError:
                fut.add_done_callback(lambda f: self._discard(f, executor))
                raise
            except BaseException as exc:
                executor.shutdown(wait=False)
                if isinstance(exc, sqlite3.Error):
                    raise _translate(exc) from exc
                raise
            self._executor = executor
            return self

    def _open_db(self) -> JobDatabase:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return JobDatabase(self.path, self.options, self._clock)

    @staticmethod
    def _discard(fut: asyncio.Future[JobDatabase], executor: ThreadPoolExecutor) -> None:
        """Close a database whose opener was cancelled, on its own thread."""
        if not fut.cancelled() and fut.exception() is None:
            executor.submit(fut.result().close)
        executor.shutdown(wait=False)

    async def close(self) -> None:
        """Let the calls already queued finish, then close; harmless twice."""
        if self._closed:
            return
        self._closed = True
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if db is None or executor is None:
            return
        try:
            # The thread runs calls in order, so every earlier call is done after this.
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(executor, db.close))
        finally:
            executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, fn: Callable[[JobDatabase], T]) -> T:
        db, executor = self._db, self._executor
        if db is None or executor is None:
            raise ServiceUnavailable(
                "job store is closed" if self._closed else "job store is not open"
            )
        fut = asyncio.get_running_loop().run_in_executor(executor, fn, db)
        fut.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(fut)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    # -- jobs (documented on dora.jobstore.JobStore) ----------------------------

    async def enqueue(self, spec: JobSpec) -> Job:
        return await self._call(lambda db: db.enqueue(spec))

    async def lease(self, owner: str, lease_seconds: float, limit: int) -> builtins.list[Job]:
        return await self._call(lambda db: db.lease(owner, lease_seconds, limit))

    async def heartbeat(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        return await self._call(lambda db: db.heartbeat(job_id, owner, lease_seconds))

    async def update_item(self, job_id: str, owner: str, item: JobItem) -> None:
        await self._call(lambda db: db.update_item(job_id, owner, item))

    async def complete(self, job_id: str, owner: str) -> Job:
        return await self._call(lambda db: db.complete(job_id, owner))

    async def fail(self, job_id: str, owner: str, error: str) -> Job:
        return await self._call(lambda db: db.fail(job_id, owner, error))

    async def release(self, job_id: str, owner: str, error: str = "") -> Job:
        return await self._call(lambda db: db.release(job_id, owner, error))

    async def mark_notified(self, job_id: str, ok: bool, attempts: int) -> bool:
        return await self._call(lambda db: db.outbox.mark(job_id, ok, attempts))

    async def pending_notifies(
        self, limit: int, *, owner: str | None = None, lease_seconds: float = 60.0
    ) -> builtins.list[Job]:
        return await self._call(lambda db: db.outbox.pending(limit, owner, lease_seconds))

    async def get(self, job_id: str) -> Job:
        return await self._call(lambda db: db.get(job_id))

    async def list(
        self,
        state: JobState | None = None,
        pipeline: str | None = None,
        limit: int = 100,
        marker: str | None = None,
    ) -> JobPage:
        return await self._call(lambda db: db.list(state, pipeline, limit, marker))

    async def cancel(self, job_id: str) -> Job:
        return await self._call(lambda db: db.cancel(job_id))

    async def retry(self, job_id: str) -> Job:
        return await self._call(lambda db: db.retry(job_id))

    async def purge(self, before: float, limit: int = 1000) -> int:
        return await self._call(lambda db: db.purge(before, limit))

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self._call(lambda db: db.counts())

    # -- pipelines ----------------------------------------------------------------

    async def create_pipeline(
        self, name: str, concurrency: int | None = None, max_queued: int | None = None
    ) -> Pipeline:
        return await self._call(lambda db: db.pipelines.create(name, concurrency, max_queued))

    async def update_pipeline(
        self, name: str, *, concurrency: int | None = None, max_queued: int | None = None
    ) -> Pipeline:
        return await self._call(lambda db: db.pipelines.update(name, concurrency, max_queued))

    async def get_pipeline(self, name: str) -> Pipeline:
        return await self._call(lambda db: db.pipelines.get(name))

    async def list_pipelines(self) -> builtins.list[Pipeline]:
        return await self._call(lambda db: db.pipelines.list())

    async def pause(self, name: str) -> Pipeline:
        return await self._call(lambda db: db.pipelines.set_paused(name, True))

    async def resume(self, name: str) -> Pipeline:
        return await self._call(lambda db: db.pipelines.set_paused(name, False))

    async def delete_pipeline(self, name: str) -> None:
        await self._call(lambda db: db.pipelines.delete(name))
