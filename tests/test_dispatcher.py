"""The job dispatcher end to end: real store, real worker process, real ffmpeg, real notify.

One worker process (registered in Dora's embedded registry) serves the whole
module; each test gets its own SQLite job store, bucket tree, dispatcher and
notify receiver on 127.0.0.1 (allow-listed for the SSRF guard). Outputs are
read back from the object store and checked with Pillow and ffprobe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from dora import ssrf
from dora.b64 import encode_entry
from dora.config import Limits
from dora.jobs import Job, JobCode, JobSpec, JobStoreOptions
from dora.jobstore import SqliteJobStore
from dora.scheduler.dispatcher import Dispatcher, DispatchPolicy, NotifyPolicy, Outcome
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.scheduler.jobtesting import NotifyReceiver, ffmpeg_pids, ffprobe, make_clip
from dora.storage.local import LocalStore
from dora.workers.pool import WorkerPool
from dora.workers.registry import ConsulRegistry
from dora.workers.testing import WorkerProcess, sample_jpeg

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICY = DispatchPolicy(
    lease_seconds=5.0,
    heartbeat_interval=0.5,
    poll_interval=0.1,
    progress_interval=0.3,
    retry_delays=(0.1, 0.2),
    release_pause=0.2,
    shutdown_grace=2.0,
)
NOTIFY = NotifyPolicy(attempts=3, first_delay=0.1, timeout=2.0, poll_interval=0.2)
LOOPBACK = ssrf.parse_allow("127.0.0.1/32")
SLOW = "avthumb/mp4/s/1920x1080"  # ~10 s of x264 on the clip: a long transcode
_names = itertools.count()


@dataclasses.dataclass
class Rig:
    """What one test drives: a store of jobs, a bucket tree, a running dispatcher."""

    jobs: SqliteJobStore
    objects: LocalStore
    dispatcher: Dispatcher
    notify: NotifyReceiver

    async def submit(self, fops: str, *, key: str = "clip.mp4", **kwargs: Any) -> Job:
        spec = JobSpec("media", key, fops, notify_url=self.notify.url, **kwargs)
        job = await self.jobs.enqueue(spec)
        self.dispatcher.nudge()
        return job

    async def finished(self, job: Job, within: float = 60.0) -> Job:
        give_up = time.monotonic() + within
        while True:
            job = await self.jobs.get(job.id)
            if job.state.finished:
                return job
            assert time.monotonic() < give_up, f"job still {job.state} after {within}s"
            await asyncio.sleep(0.05)

    async def notified(self, job: Job, within: float = 10.0) -> Job:
        """The job once its notify is recorded (sent or failed)."""
        give_up = time.monotonic() + within
        while (job := await self.jobs.get(job.id)).notify_state.value == "pending":
            assert time.monotonic() < give_up, "the notify was not recorded"
            await asyncio.sleep(0.05)
        return job

    def path(self, bucket: str, key: str) -> Path:
        found = self.objects.local_path(bucket, key)
        assert found is not None
        return found


def saveas(bucket: str, key: str) -> str:
    return f"saveas/{encode_entry(bucket, key)}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dispatch")
    make_clip(base / "clip.mp4", seconds=10.0)
    return base


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry() -> AsyncIterator[ConsulRegistry]:
    async with EmbeddedRegistry(datacenter="dc1") as server:
        assert server.port is not None
        async with ConsulRegistry("127.0.0.1", server.port, datacenter="dc1") as client:
            yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(registry: ConsulRegistry, data_dir: Path) -> AsyncIterator[WorkerPool]:
    worker = WorkerProcess(
        data_dir,
        registry=(registry.host, registry.port),
        threads=2,
        env={"DORA_LOG_LEVEL": "WARNING"},
    )
    await worker.astart()
    try:
        async with WorkerPool(registry, instance_wait=1.0) as pool:
            await pool.wait_for_instances(1)
            yield pool
        assert worker.alive  # no job took it down
    finally:
        worker.close()


RigFactory = Callable[..., Awaitable[Rig]]


@pytest_asyncio.fixture(loop_scope="module")
async def rig(pool: WorkerPool, data_dir: Path, tmp_path: Path) -> AsyncIterator[RigFactory]:
    """Make a rig (``processor=`` another pool, ``options=`` store options)."""
    made: list[tuple[Dispatcher, asyncio.Task[None], NotifyReceiver, Any, Any]] = []

    async def make(**kwargs: Any) -> Rig:
        jobs = await SqliteJobStore(
            tmp_path / "jobs.db", kwargs.get("options") or JobStoreOptions(durable=False)
        ).open()
        objects = await LocalStore(data_dir / f"buckets-{next(_names)}", Limits()).open()
        await objects.put("media", "clip.mp4", (data_dir / "clip.mp4").read_bytes())
        await objects.put("media", "photo.jpg", sample_jpeg(640, 480))
        notify = await NotifyReceiver().__aenter__()
        dispatcher = await Dispatcher(
            jobs,
            objects,
            kwargs.get("processor") or pool,
            work_root=data_dir / "tmp" / "work",
            policy=POLICY,
            notify_policy=NOTIFY,
            allow=LOOPBACK,
        ).__aenter__()
        task = asyncio.create_task(dispatcher.run())
        made.append((dispatcher, task, notify, jobs, objects))
        return Rig(jobs, objects, dispatcher, notify)

    yield make
    for dispatcher, task, notify, jobs, objects in made:
        dispatcher.stop()
        await task
        await dispatcher.__aexit__(None, None, None)
        await notify.__aexit__(None, None, None)
        await jobs.close()
        await objects.close()


async def test_an_image_job_stores_its_outputs_and_notifies_once(rig: RigFactory) -> None:
    r = await rig()
    job = await r.submit(
        f"imageView2/2/w/200|{saveas('out', 'thumbs/a.jpg')};imageView2/1/w/50/h/50",
        key="photo.jpg",
    )
    job = await r.finished(job)
    saved, auto = job.items
    assert (job.code, saved.code, auto.code) == (JobCode.DONE, JobCode.DONE, JobCode.DONE)
    meta = await r.objects.stat("out", "thumbs/a.jpg")
    assert (saved.key, saved.hash, saved.return_old) == ("thumbs/a.jpg", meta.hash, False)
    with Image.open(r.path("out", "thumbs/a.jpg")) as img:
        assert (img.format, img.size) == ("JPEG", (200, 150))
    # Without saveas: stored in the job's bucket under its own hash.
    assert auto.key == auto.hash
    with Image.open(r.path("media", auto.key)) as img:
        assert img.size == (50, 50)
    [notice] = await r.notify.wait_for(1, within=10)
    assert notice.content_type == "application/json"
    job = await r.notified(job)
    assert notice.body == {**job.status_json(), "code": 0, "desc": JobCode.DONE.desc}
    assert notice.body["items"][0]["key"] == "thumbs/a.jpg"
    assert (job.notify_state.value, job.notify_attempts) == ("sent", 1)
    await asyncio.sleep(0.5)
    assert len(r.notify.received) == 1  # once, and only once


async def test_an_mp4_transcode_and_a_mixed_chain(rig: RigFactory) -> None:
    r = await rig()
    job = await r.submit(
        f"avthumb/mp4/ab/64k|{saveas('out', 'v/clip.mp4')};"
        f"vframe/jpg/offset/1|imageView2/2/w/100|{saveas('out', 'v/poster.jpg')}"
    )
    job = await r.finished(job)
    assert [item.code for item in job.items] == [JobCode.DONE, JobCode.DONE]
    info = ffprobe(r.path("out", "v/clip.mp4"))
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == (320, 240)
    assert streams["audio"]["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - 10.0) < 0.3
    assert (await r.objects.stat("out", "v/clip.mp4")).mime == "video/mp4"
    with Image.open(r.path("out", "v/poster.jpg")) as img:
        assert (img.format, img.size) == ("JPEG", (100, 75))
    assert "progress" not in job.status_json()["items"][0]
    await r.notify.wait_for(1, within=10)
    # The worker's work directories were removed once the outputs were stored.
    work = r.dispatcher.work_root
    assert not work.exists() or not any(work.iterdir())


async def test_an_hls_job_stores_playlist_and_segments_under_their_keys(rig: RigFactory) -> None:
    r = await rig()
    pattern = "cGFydC0kKGNvdW50KS50cw=="  # "part-$(count).ts"
    job = await r.submit(
        f"avthumb/m3u8/segtime/2|{saveas('out', 'hls/clip.m3u8')};"
        f"avthumb/m3u8/segtime/4/pattern/{pattern}|{saveas('out', 'hls2/index.m3u8')}"
    )
    job = await r.finished(job)
    first, second = job.items
    assert (first.code, second.code) == (JobCode.DONE, JobCode.DONE)
    assert first.key == "hls/clip.m3u8"
    assert len(first.keys) == 5
    assert all(k.startswith("hls/clip-segment-") and k.endswith(".ts") for k in first.keys)
    playlist = r.path("out", "hls/clip.m3u8").read_text()
    listed = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    assert listed == [k.removeprefix("hls/") for k in first.keys]
    assert first.hash == (await r.objects.stat("out", "hls/clip.m3u8")).hash
    # ffprobe reads the playlist from the store's directory, segments and all.
    info = ffprobe(r.path("out", "hls/clip.m3u8"))
    assert abs(float(info["format"]["duration"]) - 10.0) < 0.5
    assert {s["codec_type"] for s in info["streams"]} == {"video", "audio"}
    # A pattern names the segments, in the playlist's folder.
    assert second.keys == tuple(f"hls2/part-{n:06d}.ts" for n in range(3))
    assert abs(float(ffprobe(r.path("out", "hls2/index.m3u8"))["format"]["duration"]) - 10) < 0.5


async def test_saveas_without_force_keeps_an_existing_object(rig: RigFactory) -> None:
    r = await rig()
    old = await r.objects.put("out", "keep.jpg", b"old bytes", mime="image/jpeg")
    fops = f"imageView2/2/w/64|{saveas('out', 'keep.jpg')}"
    job = await r.finished(await r.submit(fops, key="photo.jpg"))
    [item] = job.items
    assert (item.code, item.return_old, item.key, item.hash) == (
        JobCode.DONE,
        True,
        "keep.jpg",
        old.hash,
    )
    assert item.status_json()["returnOld"] == 1
    assert r.path("out", "keep.jpg").read_bytes() == b"old bytes"
    job = await r.finished(await r.submit(fops, key="photo.jpg", force=True))
    [item] = job.items
    assert (item.code, item.return_old) == (JobCode.DONE, False)
    with Image.open(r.path("out", "keep.jpg")) as img:
        assert img.size[0] == 64
    assert item.hash == (await r.objects.stat("out", "keep.jpg")).hash != old.hash


async def test_a_corrupt_video_fails_its_item_with_ffmpegs_reason(rig: RigFactory) -> None:
    r = await rig()
    await r.objects.put("media", "broken.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(5000))
    job = await r.submit(
        f"avthumb/mp4|{saveas('out', 'broken.mp4')};vframe/jpg/offset/0|{saveas('out', 'b.jpg')}",
        key="broken.mp4",
    )
    job = await r.finished(job)
    assert job.code == JobCode.FAILED
    for item in job.items:
        assert item.code == JobCode.FAILED
        assert "invalid media" in item.error
        assert len(item.error) < 600
        assert "buckets" not in item.error  # no local paths leak
    [notice] = await r.notify.wait_for(1, within=10)
    assert notice.body["code"] == 3
    # The worker survived: the next job runs.
    good = await r.finished(await r.submit(f"avinfo|{saveas('out', 'info.json')}"))
    assert good.code == JobCode.DONE


async def test_missing_source_and_bad_chain_fail_only_their_items(rig: RigFactory) -> None:
    r = await rig()
    job = await r.finished(await r.submit("imageView2/2/w/10", key="nope.jpg"))
    assert job.items[0].code == JobCode.FAILED
    assert "no such key" in job.items[0].error
    job = await r.finished(await r.submit("imageView2/9/w/10;imageView2/2/w/10", key="photo.jpg"))
    bad, good = job.items
    assert (bad.code, good.code, job.code) == (JobCode.FAILED, JobCode.DONE, JobCode.FAILED)
    assert "imageView2" in bad.error


async def test_progress_shows_while_transcoding_and_cancel_kills_ffmpeg(
    rig: RigFactory, data_dir: Path
) -> None:
    r = await rig()
    job = await r.submit(f"{SLOW}|{saveas('out', 'slow.mp4')}")
    seen: list[float] = []
    give_up = time.monotonic() + 30
    while len(seen) < 2:
        status = (await r.jobs.get(job.id)).status_json()
        item = status["items"][0]
        running = status["code"] == 2 and item["code"] == 2
        progress = item.get("progress", 0)
        if running and 0 < progress < 100 and (not seen or progress > seen[-1]):
            seen.append(progress)
        assert time.monotonic() < give_up, f"no progress seen: {status}"
        await asyncio.sleep(0.1)
    source = str(r.path("media", "clip.mp4"))
    assert ffmpeg_pids(source)
    await r.jobs.cancel(job.id)
    job = await r.finished(job, within=10)
    assert job.code == JobCode.FAILED
    assert job.items[0].error == "cancelled"
    give_up = time.monotonic() + 5
    while ffmpeg_pids(source):
        assert time.monotonic() < give_up, "ffmpeg still runs after the cancel"
        await asyncio.sleep(0.05)
    assert r.dispatcher.outcomes[Outcome.CANCELLED] == 1
    [notice] = await r.notify.wait_for(1, within=10)
    assert notice.body["items"][0]["error"] == "cancelled"
    assert await r.objects.buckets() == ["media"]  # nothing was stored


async def test_no_worker_releases_the_job_until_it_gives_up(
    rig: RigFactory, registry: ConsulRegistry
) -> None:
    async with WorkerPool(registry, service="no-such-workers", instance_wait=0.2) as empty:
        r = await rig(processor=empty, options=JobStoreOptions(max_attempts=2, durable=False))
        job = await r.finished(await r.submit("imageView2/2/w/10", key="photo.jpg"), within=20)
    assert job.code == JobCode.FAILED
    assert job.attempts == 2
    assert "gave up after 2 attempts" in job.items[0].error
    assert "no healthy no-such-workers instance" in job.items[0].error
    assert r.dispatcher.outcomes[Outcome.RELEASED] == 2
