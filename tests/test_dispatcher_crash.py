"""A dispatcher process killed mid-transcode, and one stopped: the job still ends right.

Everything is real and separate: the dispatcher runs as
``python -P -m dora.scheduler.jobserve`` (SIGKILLed, then SIGTERMed, then
started again), the worker is its own process, the job store and buckets
are the installation's files under one data directory, and the notify
receiver listens on 127.0.0.1 (allow-listed through ``DORA_SSRF_ALLOW``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dora.b64 import encode_entry
from dora.config import Limits, load_settings
from dora.jobs import Job, JobCode, JobSpec, JobState
from dora.jobstore import SqliteJobStore
from dora.layout import buckets_root, job_store_path
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.scheduler.jobtesting import (
    DispatcherProcess,
    NotifyReceiver,
    ffmpeg_pids,
    ffprobe,
    make_clip,
)
from dora.storage.local import LocalStore
from dora.workers.testing import WorkerProcess

ENV = {"DORA_SSRF_ALLOW": "127.0.0.1/32", "DORA_SHUTDOWN_GRACE": "0.5", "DORA_LOG_LEVEL": "INFO"}
ARGS = ("--lease-seconds", "3", "--heartbeat", "0.5", "--poll", "0.2")
LONG = "avthumb/mp4/s/1280x720"  # ~5 s of x264 on the 10 s clip


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return (tmp_path / "data").resolve()


@pytest.fixture
async def registry() -> AsyncIterator[tuple[str, int]]:
    async with EmbeddedRegistry(datacenter="dc1") as server:
        assert server.port is not None
        yield ("127.0.0.1", server.port)


@pytest.fixture
async def worker(data_dir: Path, registry: tuple[str, int]) -> AsyncIterator[WorkerProcess]:
    proc = WorkerProcess(data_dir, registry=registry, env={"DORA_LOG_LEVEL": "WARNING"})
    await proc.astart()
    yield proc
    proc.close()


@pytest.fixture
def dispatchers(
    data_dir: Path, registry: tuple[str, int], tmp_path: Path
) -> Iterator[list[DispatcherProcess]]:
    made: list[DispatcherProcess] = []
    yield made
    for proc in made:
        proc.close()


async def start_dispatcher(
    made: list[DispatcherProcess], data_dir: Path, registry: tuple[str, int]
) -> DispatcherProcess:
    proc = DispatcherProcess(
        data_dir, registry, args=ARGS, env=ENV, log=data_dir.parent / "jobs.log"
    )
    made.append(proc)
    await proc.astart()
    return proc


async def until_transcoding(
    store: SqliteJobStore, job: Job, attempt: int, within: float = 30.0
) -> Job:
    """The job, leased for the ``attempt``-th time, once its first item is done and
    the second one shows progress."""
    give_up = time.monotonic() + within
    while True:
        job = await store.get(job.id)
        first, second = job.items
        progress = second.progress or 0.0
        running = first.code == JobCode.DONE and second.code == JobCode.PROCESSING
        if job.attempts == attempt and running and progress > 0:
            return job
        assert time.monotonic() < give_up, f"no transcode under way: {job.status_json()}"
        await asyncio.sleep(0.05)


async def test_killed_and_stopped_dispatchers_lose_nothing_and_notify_once(
    data_dir: Path,
    registry: tuple[str, int],
    worker: WorkerProcess,
    dispatchers: list[DispatcherProcess],
) -> None:
    settings = load_settings(data_dir=data_dir, env={})
    clip = make_clip(data_dir.parent / "clip.mp4", seconds=10.0)
    async with (
        LocalStore(buckets_root(settings), Limits()) as objects,
        SqliteJobStore(job_store_path(settings)) as store,
        NotifyReceiver() as receiver,
    ):
        await objects.put("media", "clip.mp4", clip.read_bytes())
        source = str(objects.local_path("media", "clip.mp4"))
        poster = f"vframe/jpg/offset/1|saveas/{encode_entry('out', 'poster.jpg')}"
        movie = f"{LONG}|saveas/{encode_entry('out', 'movie.mp4')}"
        job = await store.enqueue(
            JobSpec("media", "clip.mp4", f"{poster};{movie}", notify_url=receiver.url)
        )

        # 1. SIGKILL mid-transcode: the worker, losing its client, kills ffmpeg.
        first = await start_dispatcher(dispatchers, data_dir, registry)
        job = await until_transcoding(store, job, 1)
        poster_meta = await objects.stat("out", "poster.jpg")
        assert job.items[0].hash == poster_meta.hash
        first.kill()
        give_up = time.monotonic() + 5
        while ffmpeg_pids(source):
            assert time.monotonic() < give_up, "the orphaned transcode still runs"
            await asyncio.sleep(0.05)
        assert (await store.get(job.id)).state is JobState.RUNNING  # until its lease expires

        # 2. A new dispatcher takes the job once the lease expired; SIGTERM it
        #    mid-transcode: it gives the job back at once.
        second = await start_dispatcher(dispatchers, data_dir, registry)
        job = await until_transcoding(store, job, 2)
        assert await second.astop() == 0
        job = await store.get(job.id)
        assert (job.state, job.lease_owner) == (JobState.QUEUED, None)
        assert job.items[0].code == JobCode.DONE  # finished items are kept

        # 3. The third run finishes: the poster is not made again, the movie is right.
        started = time.monotonic()
        await start_dispatcher(dispatchers, data_dir, registry)
        [notice] = await receiver.wait_for(1, within=40)
        assert time.monotonic() - started < 30
        job = await store.get(job.id)
        assert job.state is JobState.DONE
        assert job.attempts == 3
        assert notice.body["code"] == 0
        assert [item["code"] for item in notice.body["items"]] == [0, 0]
        assert (await objects.stat("out", "poster.jpg")).put_time == poster_meta.put_time
        info = ffprobe(str(objects.local_path("out", "movie.mp4")))
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        assert (video["width"], video["height"]) == (1280, 720)
        assert abs(float(info["format"]["duration"]) - 10.0) < 0.3
        assert job.items[1].hash == (await objects.stat("out", "movie.mp4")).hash
        await asyncio.sleep(0.5)
        assert len(receiver.received) == 1  # one notify, for three runs
        assert (await store.get(job.id)).notify_state.value == "sent"
    assert worker.alive
