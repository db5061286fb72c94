"""The SQLite job store, on real files: leases, fairness, restarts, crashes, outbox."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dora.errors import (
    BadRequest,
    DoraError,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    UnknownJob,
)
from dora.jobs import (
    Conflict,
    Job,
    JobCode,
    JobItem,
    JobSpec,
    JobState,
    JobStoreOptions,
    LeaseLost,
    NotifyState,
)
from dora.jobstore import JobStore, SqliteJobStore
from dora.jobstore_db import JobDatabase

T0 = 1_700_000_000.0


class Clock:
    """A settable Unix clock, so leases expire without waiting."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "jobs.db", clock=clock) as opened:
        yield opened


def spec(fops: str = "imageView2/2/w/100|saveas/YjpvdXQ=;avinfo", **kw: object) -> JobSpec:
    return JobSpec(bucket="photos", key="cat.jpg", fops=fops, **kw)  # type: ignore[arg-type]


def done(job: Job, index: int, **kw: object) -> JobItem:
    return JobItem(index, job.items[index].cmd, JobCode.DONE, **kw)  # type: ignore[arg-type]


async def test_round_trip_and_status_json(store: SqliteJobStore) -> None:
    assert isinstance(store, JobStore)
    job = await store.enqueue(spec(notify_url="http://hooks.example/n", reqid="r-1", force=True))
    assert job.id.startswith("z0.") and len(job.id) == 27
    assert job.chains == ("imageView2/2/w/100|saveas/YjpvdXQ=", "avinfo")
    waiting = {"code": 1, "desc": "The fop is waiting for execution", "returnOld": 0}
    assert (await store.get(job.id)).status_json() == {
        "id": job.id,
        "pipeline": "default",
        "code": 1,
        "desc": "The fop is waiting for execution",
        "reqid": "r-1",
        "inputBucket": "photos",
        "inputKey": "cat.jpg",
        "items": [{"cmd": job.chains[0], **waiting}, {"cmd": "avinfo", **waiting}],
    }
    [leased] = await store.lease("w1", 30, 10)
    assert (leased.id, leased.state, leased.attempts, leased.lease_owner) == (
        job.id,
        JobState.RUNNING,
        1,
        "w1",
    )
    await store.update_item(job.id, "w1", done(job, 0, key="out.jpg", hash="Fh", return_old=True))
    running = JobItem(1, "avinfo", JobCode.PROCESSING, progress=42.5)
    await store.update_item(job.id, "w1", running)
    status = (await store.get(job.id)).status_json()
    assert (status["code"], status["desc"]) == (2, "The fop is executing now")
    assert status["items"][0] == {
        "cmd": job.chains[0],
        "code": 0,
        "desc": "The fop was completed successfully",
        "hash": "Fh",
        "key": "out.jpg",
        "returnOld": 1,
    }
    assert status["items"][1]["progress"] == 42.5
    hls = done(job, 1, key="v.m3u8", keys=("v0.ts", "v1.ts"), meta={"duration": 3.5})
    await store.update_item(job.id, "w1", hls)
    final = await store.complete(job.id, "w1")
    assert (final.code, final.state, final.notify_state) == (0, JobState.DONE, NotifyState.PENDING)
    assert final.items[1].meta == {"duration": 3.5}
    assert final.status_json()["items"][1] == {
        "cmd": "avinfo",
        "code": 0,
        "desc": "The fop was completed successfully",
        "key": "v.m3u8",
        "keys": ["v0.ts", "v1.ts"],
        "returnOld": 0,
    }
    assert not await store.heartbeat(job.id, "w1", 30)
    with pytest.raises(LeaseLost):
        await store.complete(job.id, "w1")
    with pytest.raises(UnknownJob) as unknown:
        await store.get("z0.nope")
    assert unknown.value.status == 612


async def test_failed_item_gives_code_3_with_its_error(store: SqliteJobStore) -> None:
    job = await store.enqueue(spec())
    await store.lease("w1", 30, 1)
    await store.update_item(job.id, "w1", done(job, 0, hash="h", key="k"))
    bad = JobItem(1, "avinfo", JobCode.FAILED, error="not a valid video")
    await store.update_item(job.id, "w1", bad)
    final = await store.complete(job.id, "w1")
    assert (final.code, final.state, final.notify_state) == (3, JobState.FAILED, NotifyState.NONE)
    item = final.status_json()["items"][1]
    assert item == {
        "cmd": "avinfo",
        "code": 3,
        "desc": "The fop is failed",
        "error": "not a valid video",
        "returnOld": 0,
    }
    other = await store.enqueue(spec())
    await store.lease("w1", 30, 1)
    failed = await store.fail(other.id, "w1", "source object is missing")
    assert failed.error == "source object is missing"
    assert [i.error for i in failed.items] == ["source object is missing"] * 2


async def test_expired_lease_is_leased_again_with_finished_items_kept(
    store: SqliteJobStore, clock: Clock
) -> None:
    job = await store.enqueue(spec())
    await store.lease("w1", 10, 1)
    await store.update_item(job.id, "w1", done(job, 0, key="out.jpg", hash="h"))
    await store.update_item(job.id, "w1", JobItem(1, "avinfo", JobCode.PROCESSING, progress=5))
    clock.advance(5)
    assert await store.heartbeat(job.id, "w1", 10)  # renewed until T0+15
    clock.advance(8)
    assert await store.lease("w2", 10, 5) == []
    clock.advance(4)  # w1 died: its lease ran out
    [again] = await store.lease("w2", 10, 5)
    assert (again.id, again.lease_owner, again.attempts) == (job.id, "w2", 2)
    assert again.items[0].code == JobCode.DONE and again.items[0].key == "out.jpg"
    assert again.items[1].code == JobCode.WAITING and again.items[1].progress is None
    assert again.pending_items() == [again.items[1]]
    assert not await store.heartbeat(job.id, "w1", 10)
    with pytest.raises(LeaseLost) as lost:
        await store.update_item(job.id, "w1", done(job, 1))
    assert lost.value.status == 409
    with pytest.raises(LeaseLost):
        await store.complete(job.id, "w1")
    await store.update_item(job.id, "w2", done(job, 1))
    assert (await store.complete(job.id, "w2")).code == JobCode.DONE


async def test_a_job_that_keeps_losing_its_lease_fails(tmp_path: Path, clock: Clock) -> None:
    options = JobStoreOptions(max_attempts=2)
    async with SqliteJobStore(tmp_path / "j.db", options, clock=clock) as store:
        job = await store.enqueue(spec())
        for attempt in (1, 2):
            [leased] = await store.lease(f"w{attempt}", 10, 1)
            assert leased.attempts == attempt
            clock.advance(11)
        assert await store.lease("w3", 10, 1) == []
        final = await store.get(job.id)
        assert final.code == JobCode.FAILED
        assert "gave up after 2 attempts" in final.error and "'w2'" in final.error
        assert all("gave up" in item.error for item in final.items)
        second = await store.enqueue(spec())
        await store.lease("w1", 10, 1)
        assert (await store.release(second.id, "w1", "worker busy")).state == JobState.QUEUED
        await store.lease("w1", 10, 1)
        gave_up = await store.release(second.id, "w1", "worker busy")
        assert gave_up.error == "gave up after 2 attempts: worker busy"


async def test_a_restarted_store_sees_everything(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "data" / "jobs.db"
    first = SqliteJobStore(path, clock=clock)
    await first.open()
    await first.create_pipeline("video", concurrency=2, max_queued=5)
    await first.pause("video")
    job = await first.enqueue(spec(pipeline="video", notify_url="http://n.example/"))
    other = await first.enqueue(spec())
    await first.lease("w1", 30, 5)
    await first.update_item(other.id, "w1", done(other, 0, key="a", hash="b"))
    await first.close()
    await first.close()  # harmless twice
    with pytest.raises(ServiceUnavailable):
        await first.get(job.id)
    with pytest.raises(ServiceUnavailable):
        await first.open()  # a closed store does not reopen

    async with SqliteJobStore(path, clock=clock) as second:
        video = await second.get_pipeline("video")
        assert (video.concurrency, video.max_queued, video.paused) == (2, 5, True)
        assert (await second.get(job.id)).state == JobState.QUEUED
        again = await second.get(other.id)
        assert (again.state, again.lease_owner, again.items[0].key) == (JobState.RUNNING, "w1", "a")
        assert await second.heartbeat(other.id, "w1", 30)
        counts = await second.counts()
        assert counts["video"]["queued"] == 1 and counts["default"]["running"] == 1


async def test_fairness_across_pipelines_within_their_concurrency(store: SqliteJobStore) -> None:
    for name, concurrency in (("p1", 1), ("p2", 2), ("p3", 3)):
        await store.create_pipeline(name, concurrency=concurrency)
    by_pipeline: dict[str, list[str]] = {"p1": [], "p2": [], "p3": []}
    for _ in range(5):
        for name, ids in by_pipeline.items():
            ids.append((await store.enqueue(spec(pipeline=name))).id)
    leased = await store.lease("w", 30, 100)
    assert [job.pipeline for job in leased] == ["p1", "p2", "p3", "p2", "p3", "p3"]
    assert [job.id for job in leased if job.pipeline == "p3"] == by_pipeline["p3"][:3]  # FIFO
    assert await store.lease("w", 30, 100) == []  # every pipeline is at its concurrency
    p3_job = next(job for job in leased if job.pipeline == "p3")
    await store.fail(p3_job.id, "w", "boom")
    [next_one] = await store.lease("w", 30, 100)
    assert (next_one.pipeline, next_one.id) == ("p3", by_pipeline["p3"][3])
    # One job per call: the pipelines take turns.
    for name in ("x", "y", "z"):
        await store.create_pipeline(name, concurrency=10)
        for _ in range(3):
            await store.enqueue(spec(pipeline=name))
    turns = [job.pipeline for _ in range(6) for job in await store.lease("w", 30, 1)]
    assert turns == ["x", "y", "z", "x", "y", "z"]


async def test_a_full_pipeline_answers_429(store: SqliteJobStore) -> None:
    await store.create_pipeline("small", concurrency=1, max_queued=2)
    await store.enqueue(spec(pipeline="small"))
    await store.enqueue(spec(pipeline="small"))
    with pytest.raises(TooManyRequests) as full:
        await store.enqueue(spec(pipeline="small"))
    assert full.value.status == 429 and "max_queued" in full.value.message
    assert full.value.retry_after is not None
    await store.lease("w", 30, 1)  # a running job no longer waits in the queue
    await store.enqueue(spec(pipeline="small"))


async def test_pipeline_names(store: SqliteJobStore) -> None:
    with pytest.raises(BadRequest, match="no such pipeline"):
        await store.enqueue(spec(pipeline="ghost"))
    with pytest.raises(BadRequest, match="invalid pipeline name"):
        await store.enqueue(spec(pipeline="bad name!"))
    assert (await store.enqueue(spec(pipeline=""))).pipeline == "default"
    assert (await store.enqueue(spec(pipeline="0.default"))).pipeline == "default"
    assert (await store.get_pipeline("")).name == "default"


async def test_a_paused_pipeline_accepts_but_leases_nothing(store: SqliteJobStore) -> None:
    await store.create_pipeline("video", concurrency=2)
    running = await store.enqueue(spec(pipeline="video"))
    await store.lease("w", 30, 10)
    assert (await store.pause("video")).paused
    queued = await store.enqueue(spec(pipeline="video"))
    assert await store.lease("w", 30, 10) == []
    assert await store.heartbeat(running.id, "w", 30)  # jobs already running go on
    assert not (await store.resume("video")).paused
    assert [job.id for job in await store.lease("w", 30, 10)] == [queued.id]


async def test_cancel(store: SqliteJobStore, clock: Clock) -> None:
    queued = await store.enqueue(spec(notify_url="http://n.example/"))
    cancelled = await store.cancel(queued.id)
    assert (cancelled.code, cancelled.error, cancelled.cancel_requested) == (3, "cancelled", True)
    assert [item.error for item in cancelled.items] == ["cancelled", "cancelled"]
    assert cancelled.notify_state == NotifyState.PENDING
    assert await store.cancel(queued.id) == await store.get(queued.id)  # finished: left alone

    job = await store.enqueue(spec())
    await store.lease("w", 30, 1)
    await store.update_item(job.id, "w", done(job, 0))
    asked = await store.cancel(job.id)
    assert (asked.state, asked.cancel_requested) == (JobState.RUNNING, True)
    assert not await store.heartbeat(job.id, "w", 30)
    await store.update_item(job.id, "w", done(job, 0, key="late"))  # results still land
    final = await store.complete(job.id, "w")
    assert final.code == JobCode.FAILED
    assert [(i.code, i.error) for i in final.items] == [(0, ""), (3, "cancelled")]

    orphan = await store.enqueue(spec())
    await store.lease("w", 10, 1)
    await store.cancel(orphan.id)
    clock.advance(11)  # its runner died: it is not queued again
    assert await store.lease("w2", 10, 1) == []
    assert (await store.get(orphan.id)).error == "cancelled"


async def test_retry_runs_only_the_failed_items(store: SqliteJobStore) -> None:
    job = await store.enqueue(spec(notify_url="http://n.example/"))
    await store.lease("w", 30, 1)
    await store.update_item(job.id, "w", done(job, 0, key="out", hash="h"))
    await store.update_item(job.id, "w", JobItem(1, "avinfo", JobCode.FAILED, error="timeout"))
    await store.complete(job.id, "w")
    assert await store.mark_notified(job.id, True, 1)
    again = await store.retry(job.id)
    assert (again.code, again.attempts, again.notify_state) == (1, 0, NotifyState.NONE)
    assert (again.items[0].code, again.items[0].key) == (JobCode.DONE, "out")
    assert (again.items[1].code, again.items[1].error) == (JobCode.WAITING, "")
    [leased] = await store.lease("w", 30, 1)
    assert [item.index for item in leased.pending_items()] == [1]
    await store.update_item(job.id, "w", done(job, 1))
    final = await store.complete(job.id, "w")
    assert (final.code, final.notify_state) == (JobCode.DONE, NotifyState.PENDING)
    with pytest.raises(Conflict) as conflict:
        await store.retry(job.id)
    assert conflict.value.status == 409
    with pytest.raises(UnknownJob):
        await store.retry("z0.unknown")


async def test_notify_outbox_records_each_delivery_once(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jobs.db"
    async with SqliteJobStore(path, clock=clock) as store:
        quiet = await store.enqueue(spec())
        loud = await store.enqueue(spec(notify_url="http://n.example/a"))
        assert await store.pending_notifies(10) == []  # not finished yet
        for job in await store.lease("w", 30, 2):
            for index in (0, 1):
                await store.update_item(job.id, "w", done(job, index))
            await store.complete(job.id, "w")
        with pytest.raises(Conflict):
            await store.mark_notified(quiet.id, True, 1)  # it has no notifyURL
        [pending] = await store.pending_notifies(10, owner="d1", lease_seconds=30)
        assert pending.id == loud.id and pending.status_json()["code"] == 0
        assert await store.pending_notifies(10, owner="d2", lease_seconds=30) == []
    async with SqliteJobStore(path, clock=clock) as store:  # d1 restarted
        assert [j.id for j in await store.pending_notifies(10)] == [loud.id]
        assert [j.id for j in await store.pending_notifies(10, owner="d1")] == [loud.id]
        clock.advance(61)  # d1 went away: its claim lapses
        assert [j.id for j in await store.pending_notifies(10, owner="d2")] == [loud.id]
        assert await store.mark_notified(loud.id, True, 2)
        assert not await store.mark_notified(loud.id, False, 3)  # recorded once
        sent = await store.get(loud.id)
        assert (sent.notify_state, sent.notify_attempts, sent.code) == (NotifyState.SENT, 2, 0)
        assert await store.pending_notifies(10, owner="d2") == []

        unlucky = await store.enqueue(spec(notify_url="http://n.example/b"))
        await store.lease("w", 30, 1)
        await store.fail(unlucky.id, "w", "boom")
        assert await store.mark_notified(unlucky.id, False, 5)
        status = (await store.get(unlucky.id)).status_json()
        assert (status["code"], status["desc"]) == (4, "Callback failed")
        assert await store.purge(clock() + 1) == 3
        with pytest.raises(UnknownJob):
            await store.get(loud.id)


async def test_idempotent_enqueue_and_listing(store: SqliteJobStore) -> None:
    first = await store.enqueue(spec(id="client-1"))
    assert (await store.enqueue(spec(id="client-1"))).id == first.id == "client-1"
    with pytest.raises(Conflict):
        await store.enqueue(spec(fops="avinfo", id="client-1"))
    ids = [first.id] + [(await store.enqueue(spec())).id for _ in range(4)]
    seen: list[str] = []
    marker: str | None = None
    while True:
        page = await store.list(limit=2, marker=marker)
        seen += [job.id for job in page.jobs]
        if not page.marker:
            break
        marker = page.marker
    assert seen == ids[::-1]
    await store.lease("w", 30, 1)
    running = await store.list(state=JobState.RUNNING, pipeline="")
    assert [job.id for job in running.jobs] == [first.id] and running.marker == ""
    with pytest.raises(BadRequest):
        await store.list(marker="x")
    with pytest.raises(BadRequest):
        await store.lease("w", 30, 0)
    with pytest.raises(BadRequest):
        await store.enqueue(spec(fops=" ; "))
    with pytest.raises(BadRequest):
        await store.enqueue(spec(fops=";".join(["avinfo"] * 101)))


async def test_pipeline_management(store: SqliteJobStore) -> None:
    created = await store.create_pipeline("video", concurrency=3, max_queued=50)
    assert (created.name, created.concurrency, created.max_queued) == ("video", 3, 50)
    with pytest.raises(Conflict):
        await store.create_pipeline("video")
    with pytest.raises(BadRequest):
        await store.create_pipeline("audio", concurrency=0)
    updated = await store.update_pipeline("video", concurrency=8)
    assert (updated.concurrency, updated.max_queued) == (8, 50)
    assert [p.name for p in await store.list_pipelines()] == ["default", "video"]
    job = await store.enqueue(spec(pipeline="video"))
    with pytest.raises(Conflict, match="1 queued and 0 running"):
        await store.delete_pipeline("video")
    await store.cancel(job.id)
    await store.delete_pipeline("video")
    with pytest.raises(NotFound):
        await store.get_pipeline("video")
    with pytest.raises(NotFound):
        await store.pause("video")
    with pytest.raises(BadRequest):
        await store.delete_pipeline("default")
    assert (await store.counts())["video"]["failed"] == 1  # its history stays


async def test_a_cancelled_caller_does_not_undo_its_write(store: SqliteJobStore) -> None:
    job = await store.enqueue(spec())
    await store.lease("w", 30, 1)
    task = asyncio.create_task(store.update_item(job.id, "w", done(job, 0, key="kept")))
    await asyncio.sleep(0)  # the write is on the store's thread now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.get(job.id)).items[0].key == "kept"


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with SqliteJobStore(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(DoraError, match="newer Dora"):
        await SqliteJobStore(path).open()


async def test_concurrent_tasks_on_two_stores_never_double_lease(tmp_path: Path) -> None:
    options = JobStoreOptions(default_concurrency=64, durable=False)
    path = tmp_path / "jobs.db"
    async with SqliteJobStore(path, options) as one, SqliteJobStore(path, options) as two:
        stores = (one, two)
        jobs = await asyncio.gather(*(stores[i % 2].enqueue(spec()) for i in range(120)))
        leases: Counter[str] = Counter()

        async def runner(name: str, store: SqliteJobStore) -> None:
            idle = 0
            while idle < 3:
                batch = await store.lease(name, 60, 3)
                idle = 0 if batch else idle + 1
                for job in batch:
                    leases[job.id] += 1
                    await store.complete(job.id, name)
                await asyncio.sleep(0)

        async with asyncio.TaskGroup() as group:
            for i in range(8):
                group.create_task(runner(f"r{i}", stores[i % 2]))
        assert set(leases) == {job.id for job in jobs}
        assert max(leases.values()) == 1
        assert (await one.counts())["default"]["failed"] == 120  # completed without items


CRASHER = r"""
import asyncio, sys
from dora.jobs import JobCode, JobItem, JobSpec
from dora.jobstore import SqliteJobStore

async def main(path):
    async with SqliteJobStore(path) as store:
        [job] = await store.lease("crasher", 2.0, 1)
        item = JobItem(0, job.items[0].cmd, JobCode.DONE, key="out0", hash="h0")
        await store.update_item(job.id, "crasher", item)
        print(job.id, flush=True)
        n = 0
        while True:  # busy writing when the SIGKILL lands
            await store.heartbeat(job.id, "crasher", 2.0)
            progress = JobItem(1, job.items[1].cmd, JobCode.PROCESSING, progress=n % 100)
            await store.update_item(job.id, "crasher", progress)
            await store.enqueue(JobSpec("b", f"k{n}", "x;y;z", pipeline="bulk"))
            n += 1

asyncio.run(main(sys.argv[1]))
"""


async def test_a_killed_runner_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with SqliteJobStore(path) as store:
        job = await store.enqueue(spec())
        await store.create_pipeline("bulk")
        await store.pause("bulk")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-c", CRASHER, str(path), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 20)
    assert line.decode().strip() == job.id
    await asyncio.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    assert await child.wait() == -signal.SIGKILL

    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        torn = "SELECT count(*) FROM jobs j WHERE pipeline = 'bulk' AND 3 != "
        torn += "(SELECT count(*) FROM items WHERE job_seq = j.seq)"
        assert conn.execute(torn).fetchone() == (0,)
    async with SqliteJobStore(path) as store:
        assert await store.lease("rescuer", 30, 5) == []  # the dead runner's lease still holds
        assert (await store.counts())["bulk"]["queued"] > 0
    later = Clock(time.time() + 10)  # after its lease ran out
    async with SqliteJobStore(path, clock=later) as store:
        [again] = await store.lease("rescuer", 30, 5)
        assert (again.id, again.attempts) == (job.id, 2)
        assert (again.items[0].code, again.items[0].key) == (JobCode.DONE, "out0")
        assert again.items[1].code == JobCode.WAITING


class LeaseMachine(RuleBasedStateMachine):
    """Random interleavings of enqueue, lease, heartbeat, complete and time."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.clock = Clock()
        options = JobStoreOptions(max_attempts=3, default_concurrency=3, durable=False)
        self.db = JobDatabase(Path(self.dir) / "jobs.db", options, self.clock)
        self.db.pipelines.create("p", 2, 100)
        self.held: dict[str, tuple[str, float]] = {}  # job id -> (owner, lease expiry)

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(pipeline=st.sampled_from(["", "p"]))
    def enqueue(self, pipeline: str) -> None:
        self.db.enqueue(spec(pipeline=pipeline))

    @rule(owner=st.sampled_from(["a", "b", "c"]), limit=st.integers(1, 4))
    def lease(self, owner: str, limit: int) -> None:
        now = self.clock()
        for job in self.db.lease(owner, 10.0, limit):
            holder = self.held.get(job.id)
            assert holder is None or holder[1] < now, f"{job.id} leased while {holder} held it"
            self.held[job.id] = (owner, now + 10.0)

    @rule(seconds=st.sampled_from([0.0, 1.0, 6.0, 10.0, 11.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data(), finish=st.booleans())
    def work(self, data: st.DataObject, finish: bool) -> None:
        if not self.held:
            return
        job_id = data.draw(st.sampled_from(sorted(self.held)))
        owner, expires = self.held.pop(job_id)
        valid = expires >= self.clock()
        if finish:
            try:
                self.db.complete(job_id, owner)
            except LeaseLost:
                assert not valid, "a valid lease was refused"
        elif self.db.heartbeat(job_id, owner, 10.0):
            self.held[job_id] = (owner, self.clock() + 10.0)
        else:
            assert not valid, "a valid lease could not be renewed"

    @invariant()
    def within_concurrency_and_agreed(self) -> None:
        counts = self.db.counts()
        assert counts["p"]["running"] <= 2 and counts["default"]["running"] <= 3
        now = self.clock()
        for job_id, (owner, expires) in self.held.items():
            if expires >= now:
                job = self.db.get(job_id)
                assert (job.state, job.lease_owner) == (JobState.RUNNING, owner)


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
