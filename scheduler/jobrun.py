"""Running one leased job: its chains in order, under a renewed lease.

A :class:`JobRun` owns one job from lease to its end. Beside the work, a
heartbeat renews the lease every ``heartbeat_interval`` seconds; when the
store answers that the lease is lost (it expired and another runner took the
job) or that the job was cancelled, the work is cancelled at once (the worker
call is cancelled, which kills its ffmpeg) — a lost job is left alone, a
cancelled one is completed (its unfinished items fail as ``cancelled``).

Each chain (item) not yet finished, in order:

1. parse it against :data:`JOB_CATALOG` (builtin image and AV ops); a bad
   chain fails the item (the gateway checks chains at submit time already);
2. without ``force``, a saveas target that exists ends the item at once with
   ``returnOld: 1`` — unless this job itself was writing it when its previous
   runner died (the item's ``meta.writing`` says so);
3. read the source: the input object's local path when the chain has AV ops
   (the worker reads the file in place), else its bytes;
4. run the chain's segments through the worker pool (third-party segments
   answer 503 until the ufop runtime lands), reporting progress to the store;
5. store the output (:mod:`dora.scheduler.jobsave`), remove the worker's
   work directory, and record the item's result durably.

Only then is the job completed, and its notify enters the outbox.

Failures: a 503 (no worker, busy, a worker lost mid-call) is transient and
tried again after ``retry_delays``; when those run out the job is released
to its queue (:attr:`Outcome.RELEASED`; the store fails it after its
``max_attempts`` leases). Any other error of an op fails the item (code 3)
with the op's message — for ffmpeg, its reason in a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from dora.builtin_ops.av import AV_SPECS, JOB_TIMEOUT
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.errors import DoraError, ProcessingFailed, ServiceUnavailable
from dora.fop import Catalog, FopChain, Stage, parse_fops, plan
from dora.jobs import Job, JobCode, JobItem, LeaseLost
from dora.jobstore import JobStore
from dora.ops import Output
from dora.scheduler.jobsave import Saved, auto_key, existing, save_output
from dora.scheduler.metrics import item_finished
from dora.storage.base import ObjectStore
from dora.workers.avchain import work_dir_of

log = logging.getLogger(__name__)

JOB_CATALOG: Catalog = MappingProxyType({**BUILTIN_CATALOG, **AV_SPECS})
"""The ops a job may run: the builtin image ops and the audio/video ops."""

ProgressCallback = Callable[[float], None]
_SUMMARY_DROP = frozenset({"files", "segments"})  # listed as keys instead


class Processor(Protocol):
    """What runs a fused segment of builtin stages (the worker pool)."""

    async def call(
        self,
        stages: Sequence[Stage],
        src: bytes | str,
        *,
        deadline: float,
        progress: ProgressCallback | None = None,
    ) -> Output: ...


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """Bounds and rhythm of the dispatcher (seconds unless said otherwise)."""

    max_jobs: int = 8  # jobs running at once in this dispatcher
    lease_seconds: float = 15.0  # short: a dead runner's jobs come back soon
    heartbeat_interval: float = 3.0
    # between leases while the queues are empty. Jobs arrive from gateways in
    # other processes; those wake the dispatcher (dora.wakeup), so polling is
    # the safety net, and without wake-ups it is the pickup delay of a new job
    # (an idle lease is one small SQLite transaction)
    poll_interval: float = 0.2
    progress_interval: float = 2.0  # between progress writes of one item
    retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)  # transient failures of one item
    release_pause: float = 5.0  # no leasing after a transient release, doubling
    max_release_pause: float = 60.0
    job_timeout: float = JOB_TIMEOUT  # one chain's time budget
    deadline_slack: float = 5.0  # waited beyond the worker's own deadline
    shutdown_grace: float = 10.0  # for running jobs to finish before they are released

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        if not 0 < self.heartbeat_interval < self.lease_seconds:
            raise ValueError("heartbeat_interval must be positive and shorter than the lease")


class Outcome(enum.Enum):
    """How a job run ended."""

    FINISHED = "finished"  # completed (done or failed); its notify is in the outbox
    RELEASED = "released"  # given back to its queue after transient failures
    CANCELLED = "cancelled"  # cancelled by a user, completed as such
    LOST = "lost"  # the lease was lost: another runner has the job (or will)


class Transient(Exception):
    """Transient failures outlasted the retries: release the job."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobContext:
    """What every job run of a dispatcher shares."""

    store: JobStore
    objects: ObjectStore
    processor: Processor
    owner: str
    work_root: Path  # where workers leave AV outputs (<data dir>/tmp/work)
    policy: DispatchPolicy
    catalog: Catalog  # JOB_CATALOG
    max_source_bytes: int = 20 * 1024 * 1024
    max_item_keys: int = 10_000


class JobRun:
    """Runs one leased job (see the module doc); :meth:`run` once."""

    def __init__(self, ctx: JobContext, job: Job) -> None:
        self.ctx = ctx
        self.job = job
        self._progress: float | None = None

    async def run(self) -> Outcome:
        """Run the job to its end; cancelled (dispatcher shutdown), release it."""
        work = asyncio.create_task(self._items(), name=f"job-{self.job.id}")
        beat = asyncio.create_task(self._keep_lease(), name=f"lease-{self.job.id}")
        try:
            await asyncio.wait({work, beat}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _stop(work, beat)
            with contextlib.suppress(DoraError):
                await self.ctx.store.release(self.job.id, self.ctx.owner, "dispatcher shut down")
            raise
        if work.done():
            await _stop(beat)
            return work.result()
        await _stop(work)
        if beat.result() is Outcome.CANCELLED:
            with contextlib.suppress(LeaseLost):
                await self.ctx.store.complete(self.job.id, self.ctx.owner)
            return Outcome.CANCELLED
        return Outcome.LOST

    async def _keep_lease(self) -> Outcome:
        """Renew the lease; return why it can no longer be renewed."""
        policy, store = self.ctx.policy, self.ctx.store
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            await asyncio.sleep(policy.heartbeat_interval)
            try:
                if await store.heartbeat(self.job.id, self.ctx.owner, policy.lease_seconds):
                    last_ok = loop.time()
                    continue
            except DoraError as exc:  # the store is busy: try again, while the lease lasts
                if loop.time() - last_ok < policy.lease_seconds:
                    log.warning("job %s: heartbeat failed: %s", self.job.id, exc.message)
                    continue
                return Outcome.LOST
            try:
                job = await store.get(self.job.id)
            except DoraError:
                return Outcome.LOST
            mine = job.lease_owner == self.ctx.owner
            return Outcome.CANCELLED if job.cancel_requested and mine else Outcome.LOST

    async def _items(self) -> Outcome:
        store, owner = self.ctx.store, self.ctx.owner
        try:
            for item in self.job.pending_items():
                started = time.monotonic()
                result = await self._item(item)
                await store.update_item(self.job.id, owner, result)
                item_finished(self.job, result, time.monotonic() - started)  # log line, metrics
        except Transient as exc:
            log.warning("job %s released: %s", self.job.id, exc)
            await store.release(self.job.id, owner, str(exc))
            return Outcome.RELEASED
        except LeaseLost:
            return Outcome.LOST
        await store.complete(self.job.id, owner)
        return Outcome.FINISHED

    async def _item(self, item: JobItem) -> JobItem:
        """Run one chain; its final result (done or failed) to record."""
        try:
            chain = parse_fops(item.cmd, self.ctx.catalog)
        except DoraError as exc:
            return _failed(item, exc.message)
        delays = self.ctx.policy.retry_delays
        for attempt in range(len(delays) + 1):
            try:
                return await self._attempt(item, chain)
            except ServiceUnavailable as exc:
                if attempt == len(delays):
                    raise Transient(f"{item.cmd}: {exc.message}") from exc
                log.info("job %s item %d: %s; again in %.1fs", self.job.id, item.index,
                         exc.message, delays[attempt])  # fmt: skip
                await asyncio.sleep(delays[attempt])
            except LeaseLost:
                raise
            except DoraError as exc:
                return _failed(item, exc.message)
            except Exception as exc:  # a bug here must fail the item, not loop the job
                log.exception("job %s item %d: unexpected error", self.job.id, item.index)
                return _failed(item, f"internal error: {exc!r}")
        raise AssertionError("unreachable")

    async def _attempt(self, item: JobItem, chain: FopChain) -> JobItem:
        job, ctx = self.job, self.ctx
        bucket = chain.saveas.bucket if chain.saveas is not None else job.bucket
        key = chain.saveas.key if chain.saveas is not None else None
        automatic = key is None  # the output names itself: rewriting it is harmless
        ours = key is not None and item.meta.get("writing") == f"{bucket}:{key}"
        if key is not None and not job.force and not ours:
            old = await existing(ctx.objects, bucket, key)
            if old is not None:
                return _done(item, Saved(old.key, old.hash, return_old=True), {})
        await self._record(item, progress=0.0)
        output = await self._run_chain(item, chain)
        try:
            key = key if key is not None else auto_key(job.id, item.index, output)
            if key is not None:  # from now on a rerun may overwrite what this run wrote
                await self._record(item, progress=100.0, writing=f"{bucket}:{key}")
            saved = await save_output(
                ctx.objects,
                output,
                bucket,
                key,
                overwrite=job.force or ours or automatic,
                last_stage=chain.stages[-1],
                max_keys=ctx.max_item_keys,
            )
        finally:
            await self._discard(output)
        return _done(item, saved, output.meta, output.mime)

    async def _run_chain(self, item: JobItem, chain: FopChain) -> Output:
        ctx = self.ctx
        src = await self._source(chain)
        self._progress = None
        timeout = ctx.policy.job_timeout
        output: Output | None = None
        reporter = asyncio.create_task(self._report_progress(item))
        try:
            for segment in plan(chain, ctx.catalog):
                if segment.service != "builtin":
                    raise ServiceUnavailable(
                        f"{segment.service}: no handler is running for this op"
                    )
                deadline = time.time() + timeout
                try:
                    async with asyncio.timeout(timeout + ctx.policy.deadline_slack):
                        result = await ctx.processor.call(
                            segment.stages, src, deadline=deadline, progress=self._on_progress
                        )
                except TimeoutError:
                    raise ProcessingFailed(f"deadline exceeded ({timeout:g} s)") from None
                if output is not None:
                    await self._discard(output)  # the segment that read it is done
                output = result
                src = output.body if output.body is not None else str(output.path)
        except BaseException:
            if output is not None:
                await self._discard(output)
            raise
        finally:
            await _stop(reporter)
        assert output is not None  # parse_fops guarantees a stage
        return output

    async def _source(self, chain: FopChain) -> bytes | str:
        """A local path for chains with AV ops (read in place), else the bytes."""
        objects, job = self.ctx.objects, self.job
        meta = await objects.stat(job.bucket, job.key)  # NotFound fails the item
        if any(self.ctx.catalog[s.op].kind == "av" for s in chain.stages):
            path = objects.local_path(job.bucket, job.key)
            if path is not None:
                return str(path)
        _, data = await objects.get(meta.bucket, meta.key, max_bytes=self.ctx.max_source_bytes)
        return data

    def _on_progress(self, percent: float) -> None:
        self._progress = percent

    async def _report_progress(self, item: JobItem) -> None:
        reported: float | None = 0.0
        while True:
            await asyncio.sleep(self.ctx.policy.progress_interval)
            if self._progress is not None and self._progress != reported:
                reported = self._progress
                await self._record(item, progress=round(reported, 1))

    async def _record(self, item: JobItem, *, progress: float, writing: str | None = None) -> None:
        """The item is processing (with ``meta.writing`` once outputs are being written)."""
        meta = dict(item.meta)
        if writing is not None:
            meta["writing"] = writing
        running = dataclasses.replace(
            item, code=JobCode.PROCESSING, desc="", error="", progress=progress, meta=meta
        )
        await self.ctx.store.update_item(self.job.id, self.ctx.owner, running)

    async def _discard(self, output: Output) -> None:
        """Remove the worker's work directory of a file output, once it is stored."""
        if output.path is None:
            return
        folder = work_dir_of(output.path, self.ctx.work_root)
        if folder is not None:
            await asyncio.to_thread(shutil.rmtree, folder, True)


def _failed(item: JobItem, error: str) -> JobItem:
    return dataclasses.replace(
        item, code=JobCode.FAILED, desc="", error=error or "failed", progress=None
    )


def _done(item: JobItem, saved: Saved, meta: Mapping[str, Any], mime: str = "") -> JobItem:
    summary = {k: v for k, v in meta.items() if k not in _SUMMARY_DROP and _small(v)}
    if mime:
        summary["mime"] = mime
    return dataclasses.replace(
        item,
        code=JobCode.DONE,
        desc="",
        error="",
        key=saved.key,
        keys=saved.keys,
        hash=saved.hash,
        return_old=saved.return_old,
        progress=None,
        meta=summary,
    )


def _small(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(str(value)) <= 256


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait until they are done, whatever they raise."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
