"""LocalProvider: this machine's CPUs and memory as a ResourceProvider.

Host-network tasks are child processes. A task is RUNNING once it prints a
``READY <port>`` line on stdout; it is FAILED when it exits on its own and
KILLED when we stopped it. Children are started in their own session (a
Ctrl-C at the terminal reaches only the supervisor, which stops them in
order) and with a parent-death signal, so no child outlives a supervisor
that was killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import itertools
import logging
import os
import signal
from collections.abc import Callable

from dora.errors import BadRequest
from dora.scheduler.provider import (
    Offer,
    OffersEvent,
    ProviderEvent,
    Resources,
    TaskSpec,
    TaskState,
    TaskStatus,
)

log = logging.getLogger("dora.scheduler.local")

_PR_SET_PDEATHSIG = 1
MAX_EVENTS = 4096


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def machine_memory_mb() -> float:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return 1024.0


@dataclasses.dataclass(slots=True)
class _Task:
    spec: TaskSpec
    proc: asyncio.subprocess.Process
    killing: bool = False
    watcher: asyncio.Task[None] | None = None
    port: int | None = None


class LocalProvider:
    """Offers one machine's resources and runs tasks as child processes."""

    def __init__(
        self,
        *,
        cpus: float | None = None,
        mem_mb: float | None = None,
        hostname: str = "localhost",
        datacenter: str = "dc1",
        kill_grace: float = 10.0,
        ready_timeout: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._total = Resources(float(cpus or os.cpu_count() or 1), mem_mb or machine_memory_mb())
        self._hostname = hostname
        self._datacenter = datacenter
        self._kill_grace = kill_grace
        self._ready_timeout = ready_timeout
        self._events: asyncio.Queue[ProviderEvent] = asyncio.Queue(MAX_EVENTS)
        self._tasks: dict[str, _Task] = {}
        self._offer_ids = itertools.count(1)
        self._outstanding: Offer | None = None
        self._refused_until = 0.0
        self._reoffer: asyncio.TimerHandle | None = None
        self._closed = False
        self._clock = clock or (lambda: asyncio.get_running_loop().time())

    # -- offers -----------------------------------------------------------------

    def _free(self) -> Resources:
        free = self._total
        for task in self._tasks.values():
            free = free.minus(task.spec.resources)
        return free

    def _maybe_offer(self) -> None:
        """Offer what is free, one outstanding offer at a time, as Mesos does."""
        if self._closed or self._outstanding is not None:
            return
        now = self._clock()
        if now < self._refused_until:
            if self._reoffer is None:
                delay = self._refused_until - now
                self._reoffer = asyncio.get_running_loop().call_later(delay, self._reoffer_now)
            return
        offer = Offer(
            id=f"local-offer-{next(self._offer_ids)}",
            agent_id=f"local-{self._hostname}",
            hostname=self._hostname,
            resources=self._free(),
            datacenter=self._datacenter,
        )
        self._outstanding = offer
        self._put(OffersEvent((offer,)))

    def _reoffer_now(self) -> None:
        self._reoffer = None
        self._maybe_offer()

    def _put(self, event: ProviderEvent) -> None:
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:  # a stalled scheduler; statuses are re-sent by reconcile
            log.error("provider event queue full, dropping %r", event)

    async def next_event(self) -> ProviderEvent:
        if not self._events.qsize():
            self._maybe_offer()
        return await self._events.get()

    def _take_offer(self, offer: Offer) -> None:
        if self._outstanding is None or self._outstanding.id != offer.id:
            raise BadRequest(f"offer {offer.id} is not outstanding")
        self._outstanding = None

    async def decline(self, offer: Offer, refuse_seconds: float = 5.0) -> None:
        self._take_offer(offer)
        self._refused_until = self._clock() + refuse_seconds
        self._maybe_offer()

    def revive(self) -> None:
        """Lift a decline's filter: the scheduler wants offers again now."""
        self._refused_until = 0.0
        if self._reoffer is not None:
            self._reoffer.cancel()
            self._reoffer = None
        self._maybe_offer()

    # -- tasks ------------------------------------------------------------------

    async def launch(self, offer: Offer, tasks: list[TaskSpec]) -> None:
        self._take_offer(offer)
        need = Resources(
            sum(t.resources.cpus for t in tasks), sum(t.resources.mem_mb for t in tasks)
        )
        if not offer.resources.fits(need):
            for spec in tasks:
                self._put(TaskStatus(spec.task_id, TaskState.LOST, "offer too small"))
            return
        for spec in tasks:
            await self._spawn(spec)
        self._maybe_offer()

    async def _spawn(self, spec: TaskSpec) -> None:
        if spec.network != "host":
            self._put(
                TaskStatus(
                    spec.task_id, TaskState.FAILED, "bridged tasks need the container runtime"
                )
            )
            return
        env = {**os.environ, **spec.env}
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            self._put(TaskStatus(spec.task_id, TaskState.FAILED, f"cannot start: {exc}"))
            return
        task = _Task(spec, proc)
        self._tasks[spec.task_id] = task
        self._put(TaskStatus(spec.task_id, TaskState.STARTING, f"pid {proc.pid}"))
        task.watcher = asyncio.create_task(self._watch(task), name=f"watch-{spec.task_id}")

    async def _watch(self, task: _Task) -> None:
        spec, proc = task.spec, task.proc
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self._ready_timeout):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        break
                    text = line.decode(errors="replace").strip()
                    if text.startswith("READY"):
                        parts = text.split()
                        task.port = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
                        self._put(TaskStatus(spec.task_id, TaskState.RUNNING, text))
                        break
        except TimeoutError:
            log.error("%s did not become ready in %.0fs", spec.task_id, self._ready_timeout)
            self._signal(task, signal.SIGKILL)
        # Keep draining stdout so a chatty child never blocks on a full pipe.
        while await proc.stdout.readline():
            pass
        code = await proc.wait()
        self._tasks.pop(spec.task_id, None)
        if task.killing:
            state = TaskState.KILLED
        elif code == 0:
            state = TaskState.FINISHED
        else:
            state = TaskState.FAILED
        self._put(TaskStatus(spec.task_id, state, f"exit code {code}"))
        self._maybe_offer()

    def _signal(self, task: _Task, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(task.proc.pid, sig)

    async def kill(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.killing = True
        self._signal(task, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._kill_grace):
                await task.proc.wait()
        except TimeoutError:
            self._signal(task, signal.SIGKILL)
            await task.proc.wait()

    def pid_of(self, task_id: str) -> int | None:
        task = self._tasks.get(task_id)
        if task is None or task.proc.returncode is not None:
            return None
        return task.proc.pid

    async def reconcile(self) -> None:
        for task_id, task in list(self._tasks.items()):
            state = TaskState.RUNNING if task.port is not None else TaskState.STARTING
            self._put(TaskStatus(task_id, state, "reconciled"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reoffer is not None:
            self._reoffer.cancel()
        await asyncio.gather(*(self.kill(t) for t in list(self._tasks)), return_exceptions=True)
        watchers = [t.watcher for t in self._tasks.values() if t.watcher is not None]
        for watcher in watchers:
            watcher.cancel()

    async def __aenter__(self) -> LocalProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
