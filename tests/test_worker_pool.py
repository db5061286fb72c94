"""WorkerPool against real worker processes found through a real registry.

The registry is Dora's embedded Consul-compatible server on loopback, talked
to by the real client (ConsulRegistry) from both the workers and the pool.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from dora.errors import ServiceUnavailable
from dora.fop import Stage
from dora.ops import Output
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.workers.connection import ConnectionLost, WorkerConnection
from dora.workers.pool import WorkerPool
from dora.workers.registry import ConsulRegistry
from dora.workers.testing import WorkerProcess, sample_jpeg

JPEG = sample_jpeg(320, 240)


def stage(text: str) -> Stage:
    """A wire-ready stage (the worker re-validates it against the real catalog)."""
    op, _, _ = text.partition("/")
    return Stage(op, {}, (), text)


def width_of(out: Output) -> int:
    assert out.body is not None
    with Image.open(io.BytesIO(out.body)) as img:
        return img.size[0]


@pytest.fixture
async def registry() -> AsyncIterator[EmbeddedRegistry]:
    async with EmbeddedRegistry(datacenter="dc1") as reg:
        yield reg


@pytest.fixture
async def client(registry: EmbeddedRegistry) -> AsyncIterator[ConsulRegistry]:
    assert registry.port is not None
    async with ConsulRegistry("127.0.0.1", registry.port, datacenter="dc1") as reg:
        yield reg


@pytest.fixture
def spawn(tmp_path: Path, registry: EmbeddedRegistry) -> Iterator[Callable[..., WorkerProcess]]:
    """Make workers registered in ``registry`` (or another, via ``registry=``)."""
    made: list[WorkerProcess] = []

    def make(**kwargs: Any) -> WorkerProcess:
        kwargs.setdefault("registry", ("127.0.0.1", registry.port))
        kwargs.setdefault("env", {"DORA_SHUTDOWN_GRACE": "5"})
        made.append(WorkerProcess(tmp_path, **kwargs))
        return made[-1]

    yield make
    for proc in made:
        proc.close()


def soon(seconds: float = 10.0) -> float:
    return time.time() + seconds


async def test_a_registered_worker_answers_through_the_pool(
    client: ConsulRegistry, spawn: Callable[..., WorkerProcess]
) -> None:
    worker = spawn()
    port = await worker.astart()
    [inst] = await client.healthy("dora-builtin")
    assert (inst.address, inst.port) == ("127.0.0.1", port)
    assert inst.id == f"dora-builtin-127.0.0.1-{port}-{worker.proc.pid}"
    assert inst.meta["pid"] == str(worker.proc.pid)
    async with WorkerPool(client) as pool:
        await pool.wait_for_instances(1)
        out = await pool.call([stage("imageView2/2/w/100")], JPEG, deadline=soon())
        assert (out.mime, width_of(out)) == ("image/jpeg", 100)
        assert await pool.ping_all() == {inst.id: 0.0}
        stats = pool.stats()
        assert (stats.calls, stats.retries, stats.failures) == (1, 0, 0)
        assert stats.instances[0].connected


async def test_killing_a_worker_mid_call_fails_over_every_call(
    client: ConsulRegistry, spawn: Callable[..., WorkerProcess]
) -> None:
    doomed, survivor = spawn(threads=4), spawn(threads=4)
    await asyncio.gather(doomed.astart(), survivor.astart())
    async with WorkerPool(client) as pool:
        await pool.wait_for_instances(2)
        widths = list(range(40, 56))
        calls = [
            asyncio.create_task(
                pool.call(
                    [stage("debug-sleep/0.4"), stage(f"imageView2/2/w/{w}")], JPEG, deadline=soon()
                )
            )
            for w in widths
        ]
        await asyncio.sleep(0.2)
        by_port = {inst.port: inst.inflight for inst in pool.stats().instances}
        assert by_port == {doomed.port: 8, survivor.port: 8}  # least-loaded spreads them
        started = time.monotonic()
        doomed.send_signal(signal.SIGKILL)
        results = await asyncio.gather(*calls)
        assert time.monotonic() - started < 5.0  # failed over at once, not after a timeout
        assert [width_of(out) for out in results] == widths
        assert pool.stats().retries >= 8
        assert pool.stats().failures == 0


async def test_a_busy_answer_is_retried_on_another_worker(
    client: ConsulRegistry, spawn: Callable[..., WorkerProcess]
) -> None:
    busy = spawn(env={"DORA_MAX_INFLIGHT_PER_WORKER": "1"})
    free = spawn()
    await asyncio.gather(busy.astart(), free.astart())
    hog = await WorkerConnection.open(
        "127.0.0.1", busy.port, max_frame_bytes=1 << 20, connect_timeout=2.0
    )
    hold = asyncio.create_task(
        hog.call(
            lambda cid: {
                "id": cid,
                "stages": [["debug-sleep", "10"]],
                "src": {"bytes": b""},
                "deadline": soon(),
            }
        )
    )
    async with asyncio.timeout(5):
        # another process's state: nothing to wait on but its answers
        while (await hog.call(lambda cid: {"id": cid, "ping": True}))["load"] < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    async with asyncio.timeout(5):  # the TTL pass reports calls in flight as the load

        async def busy_load() -> float | None:
            found = {i.port: i.load for i in await client.healthy("dora-builtin")}
            return found.get(busy.port)

        while await busy_load() != 1.0:  # noqa: ASYNC110 (polls the registry)
            await asyncio.sleep(0.1)
    async with WorkerPool(client) as pool:
        await pool.wait_for_instances(2)
        await pool.ping_all()  # connect both first, so the two calls pick in order
        # Two calls at once: by in-flight count one of them must go to the busy worker.
        outs = await asyncio.gather(
            *(pool.call([stage("imageView2/2/w/50")], JPEG, deadline=soon()) for _ in range(2))
        )
        assert [width_of(out) for out in outs] == [50, 50]
        assert pool.stats().retries >= 1
    await hog.aclose()
    assert isinstance((await asyncio.gather(hold, return_exceptions=True))[0], ConnectionLost)


async def test_no_instance_is_503_after_a_short_wait(client: ConsulRegistry) -> None:
    async with WorkerPool(client, instance_wait=0.5) as pool:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="no healthy dora-builtin instance"):
            await pool.call([stage("imageView2/2/w/10")], JPEG, deadline=soon())
        assert 0.4 < time.monotonic() - started < 2.0
        assert pool.stats().failures == 1


async def test_a_call_waits_for_a_worker_that_is_starting(
    client: ConsulRegistry, spawn: Callable[..., WorkerProcess]
) -> None:
    async with WorkerPool(client, instance_wait=15.0) as pool:
        pending = asyncio.create_task(
            pool.call([stage("imageView2/2/w/70")], JPEG, deadline=soon(15))
        )
        await asyncio.sleep(0.1)
        assert not pending.done()
        await spawn().astart()
        assert width_of(await pending) == 70


async def test_sigterm_drains_then_deregisters(
    registry: EmbeddedRegistry, client: ConsulRegistry, spawn: Callable[..., WorkerProcess]
) -> None:
    worker = spawn()
    await worker.astart()
    async with WorkerPool(client) as pool:
        [inst] = await pool.wait_for_instances(1)
        slow = asyncio.create_task(
            pool.call([stage("debug-sleep/2.0"), stage("imageView2/2/w/33")], JPEG, deadline=soon())
        )
        await asyncio.sleep(0.3)
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(1.5):  # its check fails at once: clients look elsewhere
            while await client.healthy("dora-builtin"):  # noqa: ASYNC110 (polls the registry)
                await asyncio.sleep(0.05)
        assert not slow.done()
        assert width_of(await slow) == 33  # the call in flight still finished
        assert await worker.astop() == 0
    async with aiohttp.ClientSession() as http, http.get(f"{registry.url}/v1/agent/services") as r:
        assert inst.id not in await r.json()


async def test_other_data_centres_serve_when_the_local_one_has_none(
    registry: EmbeddedRegistry, client: ConsulRegistry, spawn: Callable[..., WorkerProcess]
) -> None:
    async with EmbeddedRegistry(datacenter="dc2") as far:
        registry.link(far)
        worker = spawn(registry=("127.0.0.1", far.port), datacenter="dc2")
        await worker.astart()
        async with WorkerPool(client) as pool:
            [inst] = await pool.wait_for_instances(1)
            assert inst.datacenter == "dc2"
            out = await pool.call([stage("imageView2/2/w/20")], JPEG, deadline=soon())
            assert width_of(out) == 20
        await worker.astop()
