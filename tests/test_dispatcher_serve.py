"""Jobs through a real ``dora serve``: its dispatcher runs them, and survives a SIGKILL.

``dora serve`` is a child process (``bench/serving.py``); jobs go into the
installation's job store file and sources into its buckets, as a gateway
would put them; the notify receiver listens on 127.0.0.1, allow-listed
through ``DORA_SSRF_ALLOW``. The whole serve is SIGKILLed mid-transcode (its
workers and gateway follow it down), started again, and the job ends with
correct outputs and one notify.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

from serving import dora_serve

from dora.b64 import encode_entry
from dora.config import Limits, load_settings
from dora.jobs import Job, JobCode, JobSpec, JobState
from dora.jobstore import SqliteJobStore
from dora.layout import buckets_root, job_store_path
from dora.scheduler.jobtesting import NotifyReceiver, ffprobe, make_clip
from dora.storage.local import LocalStore

# A short lease brings the killed serve's job back soon (once Settings reads it).
ENV = {"DORA_SSRF_ALLOW": "127.0.0.1/32", "DORA_JOB_LEASE_SECONDS": "4"}
LONG = "avthumb/mp4/s/1280x720"  # ~5 s of x264 on the 10 s clip


async def wait_for(store: SqliteJobStore, job: Job, ready: str, within: float) -> Job:
    give_up = time.monotonic() + within
    while True:
        job = await store.get(job.id)
        item = job.items[-1]
        if ready == "transcoding" and item.code == JobCode.PROCESSING and (item.progress or 0) > 0:
            return job
        if ready == "finished" and job.state.finished:
            return job
        assert time.monotonic() < give_up, f"not {ready} in {within}s: {job.status_json()}"
        await asyncio.sleep(0.1)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def until_free(port: int, within: float) -> None:
    """Wait until nothing listens on ``port`` (the old gateway has exited)."""
    give_up = time.monotonic() + within
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        assert time.monotonic() < give_up, f"port {port} still in use"
        await asyncio.sleep(0.1)


async def test_a_sigkilled_serve_finishes_its_job_after_a_restart(tmp_path: Path) -> None:
    data_dir = (tmp_path / "data").resolve()
    data_dir.mkdir()
    settings = load_settings(data_dir=data_dir, env={})
    clip = make_clip(tmp_path / "clip.mp4", seconds=10.0)
    async with (
        LocalStore(buckets_root(settings), Limits()) as objects,
        SqliteJobStore(job_store_path(settings)) as store,
        NotifyReceiver() as receiver,
    ):
        await objects.put("media", "clip.mp4", clip.read_bytes())
        fops = (
            f"vframe/jpg/offset/1|saveas/{encode_entry('out', 'poster.jpg')};"
            f"{LONG}|saveas/{encode_entry('out', 'movie.mp4')}"
        )
        job = await store.enqueue(JobSpec("media", "clip.mp4", fops, notify_url=receiver.url))
        with dora_serve(data_dir, workers=1, env=ENV) as served:
            job = await wait_for(store, job, "transcoding", within=60)
            os.killpg(served.proc.pid, signal.SIGKILL)
            served.proc.wait(10)
        assert (await store.get(job.id)).state is JobState.RUNNING
        poster = await objects.stat("out", "poster.jpg")
        await until_free(port_of(served.url), within=20)
        with dora_serve(data_dir, workers=1, env=ENV):
            job = await wait_for(store, job, "finished", within=60)
            [notice] = await receiver.wait_for(1, within=20)
            await asyncio.sleep(0.5)
        assert job.state is JobState.DONE
        assert job.attempts == 2
        assert notice.body["code"] == 0
        assert len(receiver.received) == 1
        assert (await objects.stat("out", "poster.jpg")).put_time == poster.put_time
        info = ffprobe(str(objects.local_path("out", "movie.mp4")))
        assert abs(float(info["format"]["duration"]) - 10.0) < 0.3
