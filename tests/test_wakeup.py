"""Job wake-ups: a pfop is picked up at once by a dispatcher in another process.

The cross-process test runs everything real and separate: the dispatcher is
``python -P -m dora.scheduler.jobserve`` polling only every 30 s, the
worker is its own process, and the gateway app (in this process, over HTTP on
127.0.0.1) queues the job into the installation's SQLite store. A job queued
without a wake-up stays queued (the control), so a quick pickup can only
come through the wake-up socket. The dispatcher is SIGKILLed (its socket
file stays behind, stale) and started again, and wake-ups still work.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dora.auth import Credentials, KeyRing, qbox_authorization
from dora.b64 import encode_entry
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.config import Limits, Settings, load_settings
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.gateway.jobs_wiring import with_jobs
from dora.jobs import Job, JobSpec, JobState
from dora.jobstore import SqliteJobStore
from dora.layout import buckets_root, dispatch_socket_path, job_store_path
from dora.ops import Output
from dora.scheduler.dispatcher import DispatchPolicy
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.scheduler.jobserve import WOKEN_POLL_INTERVAL, dispatch_policy
from dora.scheduler.jobtesting import DispatcherProcess
from dora.storage.local import LocalStore
from dora.wakeup import MAX_PATH_BYTES, WakeListener, Waker, usable, wake
from dora.workers.testing import WorkerProcess, sample_jpeg

AK, SK = "wake-access-key", "wake-secret-key"
CREDS = Credentials(AK, SK)
FORM = "application/x-www-form-urlencoded"
ENV = {"DORA_LOG_LEVEL": "WARNING", "DORA_SHUTDOWN_GRACE": "0.5"}
ARGS = ("--poll", "30")  # pickups faster than this can only come from a wake-up
FOP = f"imageView2/2/w/64|saveas/{encode_entry('thumbs', 'cat.jpg')}"

Client = TestClient[web.Request, web.Application]


class NoProcessor:
    """The gateway's processor, unused: jobs run in the dispatcher's worker."""

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise AssertionError("the gateway must not process anything here")


def stale_socket(path: Path) -> Path:
    """A socket file nobody listens on, as a SIGKILLed dispatcher leaves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    return path


class Wakes:
    """Counts ``on_wake`` calls and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self, within: float = 2.0) -> None:
        async with asyncio.timeout(within):
            await self.event.wait()
        self.event.clear()


# -- the sender and the listener ------------------------------------------------


def test_wake_without_a_listener_never_raises(tmp_path: Path) -> None:
    assert wake(tmp_path / "missing.sock") is False
    assert wake(stale_socket(tmp_path / "stale.sock")) is False
    (tmp_path / "plain").write_text("not a socket")
    assert wake(tmp_path / "plain") is False
    long = tmp_path / ("x" * (MAX_PATH_BYTES + 1))
    assert not usable(long)
    assert wake(long) is False
    assert Waker(tmp_path / "missing.sock")() is False


def test_wake_into_a_full_queue_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "deaf.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:  # bound, never read
        deaf.bind(str(path))
        sent = 0
        start = time.monotonic()
        while wake(path):
            sent += 1
            assert sent < 1_000_000, "the receive queue never filled"
        assert sent > 0
        assert wake(path) is False
        assert time.monotonic() - start < 10


async def test_listener_wakes_on_a_datagram_and_coalesces(tmp_path: Path) -> None:
    path = tmp_path / "tmp" / "dispatch.sock"  # its folder is made on bind
    wakes = Wakes()
    async with WakeListener(path, wakes) as listener:
        assert listener.bound and path.is_socket()
        assert wake(path) is True
        await wakes.next()
        assert wakes.count == 1
        for _ in range(200):
            wake(path)
        await wakes.next()
        await asyncio.sleep(0.05)
        assert 1 <= wakes.count - 1 <= 200  # drained in bounded batches, one call each
        assert Waker(path)() is True
        await wakes.next()
    assert not path.exists()
    listener.close()  # twice is harmless


async def test_listener_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    path = stale_socket(tmp_path / "dispatch.sock")
    wakes = Wakes()
    async with WakeListener(path, wakes) as listener:
        assert listener.bound
        assert wake(path) is True
        await wakes.next()
    assert not path.exists()


async def test_a_second_listener_takes_over_and_keeps_its_file(tmp_path: Path) -> None:
    path = tmp_path / "dispatch.sock"
    first, second = Wakes(), Wakes()
    async with WakeListener(path, first):
        async with WakeListener(path, second) as newer:
            assert newer.bound
            assert wake(path) is True
            await second.next()
        assert first.count == 0
        assert not path.exists()  # the newer removed its own file
    async with WakeListener(path, first):
        async with WakeListener(path, second):
            pass
        assert not path.exists()
    path2 = tmp_path / "kept.sock"
    older = WakeListener(path2, first)
    await older.__aenter__()
    async with WakeListener(path2, second):
        older.close()  # the older one leaves the newer's file alone
        assert path2.is_socket()
        assert wake(path2) is True
        await second.next()


async def test_listener_on_a_path_too_long_only_polls(tmp_path: Path) -> None:
    path = tmp_path / ("x" * (MAX_PATH_BYTES + 1))
    async with WakeListener(path, Wakes()) as listener:
        assert not listener.bound
    assert not path.exists()


def test_dispatch_policy_polls_slowly_only_with_wake_ups(tmp_path: Path) -> None:
    woken = dispatch_policy(load_settings(data_dir=tmp_path, env={}))
    assert woken.poll_interval == WOKEN_POLL_INTERVAL
    deep = tmp_path / ("d" * (MAX_PATH_BYTES + 1))
    assert not usable(dispatch_socket_path(load_settings(data_dir=deep, env={})))
    polling = dispatch_policy(load_settings(data_dir=deep, env={}))
    assert polling.poll_interval == DispatchPolicy().poll_interval < WOKEN_POLL_INTERVAL


# -- across processes: gateway → wake-up → dispatcher ---------------------------


@pytest.fixture
async def registry() -> AsyncIterator[tuple[str, int]]:
    async with EmbeddedRegistry(datacenter="dc1") as server:
        assert server.port is not None
        yield ("127.0.0.1", server.port)


async def post_pfop(client: Client, key: str) -> str:
    body = urlencode({"bucket": "photos", "key": key, "fops": FOP}).encode()
    auth = qbox_authorization(CREDS, "/pfop/", body, FORM)
    resp = await client.post(
        "/pfop/", data=body, headers={"Content-Type": FORM, "Authorization": auth}
    )
    answer: dict[str, Any] = await resp.json(content_type=None)
    assert resp.status == 200, answer
    return str(answer["persistentId"])


async def picked_up(store: SqliteJobStore, job_id: str, within: float) -> float:
    """Seconds until the job leaves the queue (it is leased, or already done)."""
    start = time.monotonic()
    while (await store.get(job_id)).state is JobState.QUEUED:
        assert time.monotonic() - start < within, f"job {job_id} still queued after {within}s"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def finished(store: SqliteJobStore, job_id: str, within: float) -> Job:
    give_up = time.monotonic() + within
    while not (job := await store.get(job_id)).state.finished:
        assert time.monotonic() < give_up, f"job {job_id} not finished in {within}s"
        await asyncio.sleep(0.02)
    return job


async def test_a_pfop_wakes_a_dispatcher_in_another_process(
    tmp_path: Path, registry: tuple[str, int]
) -> None:
    data_dir = (tmp_path / "data").resolve()
    settings = Settings(data_dir=data_dir)
    sock = dispatch_socket_path(settings)
    assert usable(sock), "the test's data directory is too deep for a socket address"
    worker = WorkerProcess(data_dir, registry=registry, env=ENV)
    await worker.astart()
    procs: list[DispatcherProcess] = []

    async def start_dispatcher() -> DispatcherProcess:
        proc = DispatcherProcess(data_dir, registry, args=ARGS, env=ENV)
        procs.append(proc)
        await proc.astart()
        await asyncio.sleep(1.0)  # past its first lease: from now on it polls every 30 s
        return proc

    try:
        async with (
            LocalStore(buckets_root(settings), Limits()) as objects,
            SqliteJobStore(job_store_path(settings)) as store,
        ):
            await objects.put("photos", "cat.jpg", sample_jpeg())
            ctx = GatewayContext(
                settings, objects, KeyRing([CREDS]), NoProcessor(), BUILTIN_CATALOG
            )
            app = build_app(with_jobs(ctx, store))
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                first = await start_dispatcher()
                assert sock.is_socket()

                # The control: queued behind the gateway's back, nobody wakes the dispatcher.
                quiet = await store.enqueue(JobSpec("photos", "cat.jpg", FOP))
                await asyncio.sleep(1.5)
                assert (await store.get(quiet.id)).state is JobState.QUEUED

                job_id = await post_pfop(client, "cat.jpg")
                assert await picked_up(store, job_id, within=1.0) < 1.0
                assert (await finished(store, job_id, 10.0)).state is JobState.DONE
                # One wake-up, one lease: the quiet job went along.
                assert (await finished(store, quiet.id, 10.0)).state is JobState.DONE

                first.kill()  # its socket file stays behind
                assert sock.is_socket() and wake(sock) is False
                second = await start_dispatcher()
                job_id = await post_pfop(client, "cat.jpg")
                assert await picked_up(store, job_id, within=1.0) < 1.0
                assert (await finished(store, job_id, 10.0)).state is JobState.DONE

                assert await second.astop() == 0
                assert not sock.exists()
    finally:
        for proc in procs:
            proc.close()
        worker.close()
