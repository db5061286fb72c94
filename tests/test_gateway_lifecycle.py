"""Serving and graceful shutdown of a gateway on a real TCP listener."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from dora.auth import Credentials, KeyRing
from dora.config import Limits, Settings
from dora.fop import Stage
from dora.gateway.app import build_app, serve_app
from dora.gateway.context import GatewayContext
from dora.ops import Output
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.schema import OpSpec
from dora.storage.local import LocalStore

# A one-op catalog: these tests are about the listener, not about images.
HOLD_CATALOG = {"hold": OpSpec("hold", raw=True)}


class Holding:
    """Holds every call until released (or cancelled), then answers."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False
        self.cancel_seen = asyncio.Event()

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            self.cancel_seen.set()
            raise
        return Output("text/plain", body=b"finished")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "buckets", Limits()) as opened:
        await opened.put("b", "k", b"source")
        yield opened


async def start(
    store: LocalStore, tmp_path: Path, processor: Holding, grace: float
) -> tuple[asyncio.Task[None], asyncio.Event, int]:
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=0, shutdown_grace=grace)
    ctx = GatewayContext(settings, store, KeyRing([Credentials("a", "s")]), processor, HOLD_CATALOG)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve_app(build_app(ctx), settings, stop=stop, ready=ready.set_result)
    )
    return task, stop, await asyncio.wait_for(ready, 5)


async def test_shutdown_lets_an_in_flight_request_finish(store: LocalStore, tmp_path: Path) -> None:
    processor = Holding()
    task, stop, port = await start(store, tmp_path, processor, grace=5.0)
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/b/k?hold"))
        await asyncio.wait_for(processor.started.wait(), 5)
        stop.set()
        await asyncio.sleep(0.2)
        # The listener is closed: a new connection is refused...
        async with aiohttp.ClientSession() as fresh:
            with pytest.raises(aiohttp.ClientConnectionError):
                await fresh.get(f"http://127.0.0.1:{port}/health")
        # ...while the request in flight still gets its answer.
        processor.release.set()
        resp = await asyncio.wait_for(request, 5)
        assert resp.status == 200
        assert await resp.read() == b"finished"
    await asyncio.wait_for(task, 5)
    assert not processor.cancelled


async def test_stragglers_are_cancelled_after_the_grace(store: LocalStore, tmp_path: Path) -> None:
    processor = Holding()
    task, stop, port = await start(store, tmp_path, processor, grace=0.3)
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/b/k?hold"))
        await asyncio.wait_for(processor.started.wait(), 5)
        began = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - began < 3
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(request, 5)
    await asyncio.sleep(0)
    assert processor.cancelled


async def test_gateway_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``python -P -m dora.gateway.main``: READY, a download, /health, clean exit."""
    data_dir = tmp_path / "data"
    async with LocalStore(data_dir / "buckets", Limits()) as local:
        await local.put("photos", "hello.txt", b"hello from disk")
    async with EmbeddedRegistry() as registry:
        registry_port = registry.port
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "dora.gateway.main",
            "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0",
            "--registry", f"127.0.0.1:{registry_port}",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.startswith(b"READY "), line
            port = int(line.split()[1])
            async with aiohttp.ClientSession() as session:
                resp = await session.get(f"http://127.0.0.1:{port}/photos/hello.txt")
                assert await resp.read() == b"hello from disk"
                health = await session.get(f"http://127.0.0.1:{port}/health")
                assert await health.json() == {"status": "ok", "workers": 0}
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_client_hanging_up_cancels_its_work(store: LocalStore, tmp_path: Path) -> None:
    processor = Holding()
    task, stop, port = await start(store, tmp_path, processor, grace=1.0)
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/b/k?hold"))
            await asyncio.wait_for(processor.started.wait(), 5)
            request.cancel()  # closes the connection
            with pytest.raises(asyncio.CancelledError):
                await request
        await asyncio.wait_for(processor.cancel_seen.wait(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
