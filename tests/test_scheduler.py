"""The scheduler and LocalProvider with real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest

from dora.registry import Instance
from dora.scheduler.core import Scheduler, ServiceSpec
from dora.scheduler.local import LocalProvider
from dora.scheduler.provider import OffersEvent, Resources, TaskSpec, TaskState

CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "print('READY 1234', flush=True)\n"
    "time.sleep(600)\n"
)


class RecordingRegistry:
    """Records deregistrations with the time they happened."""

    def __init__(self, provider: LocalProvider) -> None:
        self.provider = provider
        self.deregistered: list[tuple[str, float, bool]] = []

    async def deregister(self, instance_id: str) -> None:
        alive = self.provider.pid_of(instance_id) is not None
        self.deregistered.append((instance_id, time.monotonic(), alive))

    async def register(self, inst: Instance, ttl: float, deregister_after: float = 60.0) -> None:
        raise AssertionError("the scheduler never registers instances itself")


def _spec(name: str, instances: int, code: str = CHILD) -> ServiceSpec:
    return ServiceSpec(
        name, lambda _tid: (sys.executable, "-c", code), Resources(0.5, 64), instances
    )


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    async with LocalProvider(cpus=4, mem_mb=4096, kill_grace=5) as prov:
        yield prov


async def _run(scheduler: Scheduler) -> asyncio.Task[None]:
    return asyncio.create_task(scheduler.run())


async def test_launches_the_desired_instances(provider: LocalProvider) -> None:
    registry = RecordingRegistry(provider)
    scheduler = Scheduler(provider, registry, [_spec("svc", 3)])  # type: ignore[arg-type]
    runner = await _run(scheduler)
    async with asyncio.timeout(20):
        await scheduler.wait_running("svc", 3)
    assert scheduler.running("svc") == 3
    tasks = scheduler.task_ids("svc")
    assert len(tasks) == 3
    for task_id in tasks:
        pid = provider.pid_of(task_id)
        assert pid is not None
        os.kill(pid, 0)  # a real, live process
    await scheduler.shutdown(["svc"])
    runner.cancel()


async def test_a_killed_instance_is_deregistered_and_replaced(provider: LocalProvider) -> None:
    registry = RecordingRegistry(provider)
    scheduler = Scheduler(provider, registry, [_spec("svc", 2)])  # type: ignore[arg-type]
    runner = await _run(scheduler)
    async with asyncio.timeout(20):
        await scheduler.wait_running("svc", 2)
    victim = scheduler.task_ids("svc")[0]
    pid = provider.pid_of(victim)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    async with asyncio.timeout(10):
        await scheduler.wait_until(lambda: scheduler.restarts("svc") == 1)
        await scheduler.wait_running("svc", 2)
    assert time.monotonic() - started < 5
    assert [d[0] for d in registry.deregistered] == [victim]
    assert scheduler.restarts("svc") == 1
    assert victim not in scheduler.task_ids("svc")
    await scheduler.shutdown(["svc"])
    runner.cancel()


async def test_stop_deregisters_before_killing(provider: LocalProvider) -> None:
    registry = RecordingRegistry(provider)
    scheduler = Scheduler(provider, registry, [_spec("svc", 1)])  # type: ignore[arg-type]
    runner = await _run(scheduler)
    async with asyncio.timeout(20):
        await scheduler.wait_running("svc", 1)
    (task_id,) = scheduler.task_ids("svc")
    await scheduler.stop_task(task_id)
    assert registry.deregistered[0][0] == task_id
    assert registry.deregistered[0][2] is True  # the process was still alive then
    assert provider.pid_of(task_id) is None
    runner.cancel()


async def test_crash_loop_backs_off(provider: LocalProvider) -> None:
    registry = RecordingRegistry(provider)
    crash = "import sys; print('READY', flush=True); sys.exit(3)"
    scheduler = Scheduler(provider, registry, [_spec("crashy", 1, crash)])  # type: ignore[arg-type]
    runner = await _run(scheduler)
    await asyncio.sleep(2.0)
    restarts = scheduler.restarts("crashy")
    # 0.2 + 0.4 + 0.8 s of backoff fit in 2 s, plus process start-up: a handful, not hundreds
    assert 2 <= restarts <= 5
    await scheduler.shutdown(["crashy"])
    runner.cancel()


async def test_a_task_that_never_gets_ready_is_killed() -> None:
    async with LocalProvider(cpus=1, mem_mb=512, ready_timeout=0.5) as prov:
        registry = RecordingRegistry(prov)
        silent = "import time; time.sleep(600)"
        scheduler = Scheduler(prov, registry, [_spec("mute", 1, silent)])  # type: ignore[arg-type]
        runner = await _run(scheduler)
        await asyncio.sleep(1.5)
        assert scheduler.restarts("mute") >= 1
        assert scheduler.running("mute") == 0
        await scheduler.shutdown(["mute"])
        runner.cancel()


async def test_provider_reports_task_states(provider: LocalProvider) -> None:
    offer_event = await provider.next_event()

    assert isinstance(offer_event, OffersEvent)
    (offer,) = offer_event.offers
    assert offer.resources.cpus == 4
    spec = TaskSpec(
        "t1", "svc", (sys.executable, "-c", "print('READY 7', flush=True)"), Resources(1, 64)
    )
    await provider.launch(offer, [spec])
    states = []
    async with asyncio.timeout(10):
        while True:
            event = await provider.next_event()
            if isinstance(event, OffersEvent):
                await provider.decline(event.offers[0], 60)
                continue
            states.append(event.state)
            if event.state.terminal:
                break
    assert states == [TaskState.STARTING, TaskState.RUNNING, TaskState.FINISHED]
