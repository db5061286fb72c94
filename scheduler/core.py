"""The second-level scheduler: keeps the desired instances of each service
running on whatever a ResourceProvider offers.

It reconciles on every event: launch on a fitting offer while a service has
fewer instances than it wants, decline (with a filter) what it cannot use,
restart what failed with a per-service exponential backoff, and deregister an
instance from the registry *before* killing it, so no client is routed to an
instance that is going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

from dora.errors import DoraError
from dora.registry import Registry
from dora.scheduler.provider import (
    Network,
    Offer,
    OffersEvent,
    ResourceProvider,
    Resources,
    TaskSpec,
    TaskState,
    TaskStatus,
)

log = logging.getLogger("dora.scheduler")

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a task up this long resets its service's backoff


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A handler kind and how many instances of it to keep running."""

    name: str
    command: Callable[[str], tuple[str, ...]]  # task id -> argv
    resources: Resources
    instances: int
    network: Network = "host"
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    registered: bool = True  # instances register in the registry under their task id


@dataclasses.dataclass(slots=True)
class _ServiceState:
    spec: ServiceSpec
    desired: int
    tasks: dict[str, TaskState] = dataclasses.field(default_factory=dict)
    started_at: dict[str, float] = dataclasses.field(default_factory=dict)
    failures: int = 0
    backoff_until: float = 0.0
    restarts: int = 0


class Scheduler:
    """Reconciles desired against running instances, event by event."""

    def __init__(
        self,
        provider: ResourceProvider,
        registry: Registry | None,
        services: list[ServiceSpec],
    ) -> None:
        self._provider = provider
        self._registry = registry
        self._services = {s.name: _ServiceState(s, s.instances) for s in services}
        self._owner: dict[str, str] = {}  # task id -> service name
        self._changed = asyncio.Condition()
        self._stopping = False

    # -- the event loop ---------------------------------------------------------

    async def run(self) -> None:
        """Handle provider events until cancelled."""
        while True:
            event = await self._provider.next_event()
            try:
                if isinstance(event, OffersEvent):
                    for offer in event.offers:
                        await self._on_offer(offer)
                else:
                    await self._on_status(event)
            except DoraError as exc:
                log.error("scheduler: %s", exc)
            async with self._changed:
                self._changed.notify_all()

    async def _on_offer(self, offer: Offer) -> None:
        now = time.monotonic()
        free = offer.resources
        launch: list[TaskSpec] = []
        soonest_retry = 5.0
        for state in self._services.values():
            if self._stopping:
                break
            missing = state.desired - len(state.tasks)
            if missing <= 0:
                continue
            if now < state.backoff_until:
                soonest_retry = min(soonest_retry, state.backoff_until - now)
                continue
            spec = state.spec
            for _ in range(missing):
                if not free.fits(spec.resources):
                    break
                task_id = f"{spec.name}-{uuid.uuid4().hex[:10]}"
                launch.append(
                    TaskSpec(
                        task_id,
                        spec.name,
                        spec.command(task_id),
                        spec.resources,
                        spec.network,
                        spec.env,
                    )
                )
                free = free.minus(spec.resources)
                state.tasks[task_id] = TaskState.STAGING
                self._owner[task_id] = spec.name
        if launch:
            await self._provider.launch(offer, launch)
        else:
            await self._provider.decline(offer, refuse_seconds=max(0.05, soonest_retry))

    async def _on_status(self, status: TaskStatus) -> None:
        name = self._owner.get(status.task_id)
        if name is None:
            if not status.state.terminal:  # an instance we no longer want (e.g. after restart)
                await self._provider.kill(status.task_id)
            return
        state = self._services[name]
        if not status.state.terminal:
            state.tasks[status.task_id] = status.state
            if status.state == TaskState.RUNNING:
                state.started_at[status.task_id] = time.monotonic()
            return
        state.tasks.pop(status.task_id, None)
        started = state.started_at.pop(status.task_id, None)
        self._owner.pop(status.task_id, None)
        if state.spec.registered and self._registry is not None:
            with contextlib.suppress(DoraError):
                await self._registry.deregister(status.task_id)
        if status.state == TaskState.KILLED or self._stopping:
            return
        if started is not None and time.monotonic() - started > STABLE_AFTER:
            state.failures = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * (2**state.failures))
        state.failures += 1
        state.restarts += 1
        state.backoff_until = time.monotonic() + delay
        log.warning(
            "%s %s (%s); restarting in %.1fs",
            status.task_id,
            status.state.value,
            status.message,
            delay,
        )
        revive = getattr(self._provider, "revive", None)
        if callable(revive):
            asyncio.get_running_loop().call_later(delay, revive)

    # -- commands ---------------------------------------------------------------

    async def stop_task(self, task_id: str) -> None:
        """Deregister, then kill: nothing is routed to an instance going away."""
        name = self._owner.get(task_id)
        if name is not None:
            self._services[name].desired = max(0, self._services[name].desired - 1)
            if self._services[name].spec.registered and self._registry is not None:
                with contextlib.suppress(DoraError):
                    await self._registry.deregister(task_id)
        await self._provider.kill(task_id)

    async def stop_service(self, name: str) -> None:
        state = self._services[name]
        state.desired = 0
        await asyncio.gather(*(self.stop_task(t) for t in list(state.tasks)))

    async def wait_running(self, name: str, count: int) -> None:
        """Wait until ``count`` instances of ``name`` are RUNNING (callers bound the wait)."""
        await self.wait_until(lambda: self.running(name) >= count)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some event (callers bound the wait)."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    def task_ids(self, name: str) -> list[str]:
        return list(self._services[name].tasks)

    def restarts(self, name: str) -> int:
        return self._services[name].restarts

    def running(self, name: str) -> int:
        return sum(1 for s in self._services[name].tasks.values() if s == TaskState.RUNNING)

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per service: desired, task states, restarts (for ``dora status``)."""
        return {
            name: {
                "desired": state.desired,
                "tasks": {t: s.value for t, s in state.tasks.items()},
                "restarts": state.restarts,
            }
            for name, state in self._services.items()
        }

    async def shutdown(self, order: list[str]) -> None:
        """Stop services in the given order (e.g. gateways before workers)."""
        self._stopping = True
        for name in order:
            await self.stop_service(name)
