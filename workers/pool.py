"""The client pool the gateway and the job dispatcher use to call builtin workers.

A :class:`WorkerPool` keeps the healthy instances of a service fresh through
the registry's blocking ``watch`` (local data centre first; when it has none,
the first other one that has some), keeps one persistent multiplexed
connection per instance (opened on first use, reopened after a failure), and
sends each call to the least-loaded instance: fewest calls in flight from this
client, then the lowest load the worker last reported, then at random.

A call whose worker dies mid-call, cannot be reached, or answers ``503``
(busy, draining) is retried on another instance, for at most
``max_attempts`` tries and never past its deadline: builtin ops are pure, so a
call may run twice. Out of time the call fails with ``599 "deadline
exceeded"``, as the worker itself would answer. With no instance to send to,
a call waits up to ``instance_wait`` seconds for one, then fails with ``503``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from dora.config import Limits
from dora.errors import DoraError, ProcessingFailed, ServiceUnavailable, error_from_status
from dora.logs import current_reqid
from dora.ops import Output
from dora.registry import Instance, Registry
from dora.rpc import make_call, output_from_response
from dora.workers.connection import ConnectionLost, ProgressCallback, WorkerConnection
from dora.workers.pool_state import Member, PoolStats, pool_stats

log = logging.getLogger(__name__)

SERVICE = "dora-builtin"
FALLBACK_POLL = 2.0  # how often to look at other data centres while the local one has none
MAX_BACKOFF = 5.0


class WireStage(Protocol):
    """What a call needs of a stage (:class:`dora.fop.Stage` has both)."""

    @property
    def op(self) -> str: ...

    @property
    def argtext(self) -> str: ...


class WorkerPool:
    """Calls builtin workers found in the registry; an async context manager."""

    def __init__(
        self,
        registry: Registry,
        service: str = SERVICE,
        limits: Limits | None = None,
        *,
        datacenter: str | None = None,
        max_attempts: int = 4,
        connect_timeout: float = 2.0,
        instance_wait: float = 5.0,
        watch_wait: float = 30.0,
        cooldown: float = 0.5,
    ) -> None:
        self.registry = registry
        self.service = service
        self.limits = limits or Limits()
        self.datacenter = datacenter
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.instance_wait = instance_wait
        self.watch_wait = watch_wait
        self.cooldown = cooldown
        self._members: dict[str, Member] = {}
        self._retired: set[Member] = set()  # left the registry, calls still in flight
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._state = "new"
        self.calls = 0
        self.retries = 0
        self.failures = 0

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a WorkerPool cannot be entered twice")
        self._state = "open"
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.service}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching and close every connection; closing twice is harmless."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._notify()  # calls waiting for an instance see the pool closed
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])
        members = [*self._members.values(), *self._retired]
        self._members.clear()
        self._retired.clear()
        conns = [m.conn for m in members if m.conn is not None]
        await asyncio.gather(*(conn.aclose() for conn in conns))

    def instances(self) -> list[Instance]:
        """The instances calls may go to now."""
        return [m.instance for m in self._members.values()]

    async def wait_for_instances(self, count: int = 1, within: float = 5.0) -> list[Instance]:
        """Wait until at least ``count`` instances are known; 503 after ``within`` s."""
        try:
            async with asyncio.timeout(within):
                while len(self._members) < count:
                    await self._changed.wait()
        except TimeoutError:
            raise ServiceUnavailable(
                f"{len(self._members)} of {count} {self.service} instances after {within}s"
            ) from None
        return self.instances()

    async def call(
        self,
        stages: Sequence[WireStage],
        src: bytes | str,
        *,
        deadline: float,
        progress: ProgressCallback | None = None,
    ) -> Output:
        """Run a fused chain of builtin stages on ``src`` (bytes, or a path on
        the worker's host) before ``deadline`` (unix time); raise its error.
        ``progress`` hears how far the worker got (0-100; long AV stages)."""
        if self._state != "open":
            raise RuntimeError("the WorkerPool is not open")
        self.calls += 1
        try:
            return await self._call([(s.op, s.argtext) for s in stages], src, deadline, progress)
        except DoraError:
            self.failures += 1
            raise

    async def _call(
        self,
        wire: list[tuple[str, str]],
        src: bytes | str,
        deadline: float,
        progress: ProgressCallback | None,
    ) -> Output:
        loop = asyncio.get_running_loop()
        end = loop.time() + (deadline - time.time())
        tried: set[str] = set()
        reqid = current_reqid()  # the request this call serves, for the worker's log
        last: DoraError = ServiceUnavailable(f"no {self.service} instance answered")
        for attempt in range(self.max_attempts):
            if loop.time() >= end:
                raise ProcessingFailed("deadline exceeded")
            member = await self._pick(tried, end)
            if attempt:
                self.retries += 1
            tried.add(member.instance.id)
            member.inflight += 1
            conn: WorkerConnection | None = None
            try:
                async with asyncio.timeout_at(end):
                    conn = await self._connect(member)
                    reply = await conn.call(
                        lambda cid: make_call(
                            cid, wire, src, deadline, progress=bool(progress), reqid=reqid
                        ),
                        progress=progress,
                    )
            except ConnectionLost as exc:
                self._mark_down(member, conn, exc)
                last = exc
                continue
            except TimeoutError:
                raise ProcessingFailed("deadline exceeded") from None
            finally:
                member.inflight -= 1
                self._release(member)
            member.failures = 0
            member.note_load(reply.get("load"))
            if reply.get("ok") is not True and reply.get("code") == ServiceUnavailable.status:
                last = error_from_status(503, str(reply.get("error", "busy")))
                await self._busy_pause(tried, attempt, end)
                continue
            return output_from_response(reply)
        raise last

    async def _pick(self, tried: set[str], end: float) -> Member:
        """The least-loaded usable instance, preferring ones this call has not tried."""
        loop = asyncio.get_running_loop()
        give_up = min(end, loop.time() + self.instance_wait)
        while True:
            if self._state != "open":
                raise ServiceUnavailable(f"the {self.service} pool is closed")
            now = loop.time()
            live = [m for m in self._members.values() if m.down_until <= now]
            fresh = [m for m in live if m.instance.id not in tried]
            choices = fresh or live
            if choices:
                return min(choices, key=lambda m: (m.inflight, m.load, random.random()))
            if now >= give_up:
                raise ServiceUnavailable(f"no healthy {self.service} instance", retry_after=1.0)
            wake = min((m.down_until for m in self._members.values()), default=give_up)
            changed = self._changed
            try:
                async with asyncio.timeout_at(min(give_up, max(wake, now))):
                    await changed.wait()
            except TimeoutError:
                pass

    async def _busy_pause(self, tried: set[str], attempt: int, end: float) -> None:
        # Every instance has said "busy" to this call: give them a moment.
        if all(m.instance.id in tried for m in self._members.values()):
            loop = asyncio.get_running_loop()
            pause = min(0.05 * 2**attempt, max(0.0, end - loop.time()))
            await asyncio.sleep(pause)

    async def _connect(self, member: Member) -> WorkerConnection:
        conn = member.conn
        if conn is not None and not conn.closed:
            return conn
        async with member.lock:  # one connect per instance, however many calls wait
            conn = member.conn
            if conn is None or conn.closed:
                inst = member.instance
                conn = await WorkerConnection.open(
                    inst.address,
                    inst.port,
                    max_frame_bytes=self.limits.max_rpc_frame_bytes,
                    connect_timeout=self.connect_timeout,
                    name=inst.id,
                )
                member.conn = conn
            return conn

    def _mark_down(
        self, member: Member, conn: WorkerConnection | None, exc: ConnectionLost
    ) -> None:
        # Many calls fail together when one connection dies: count it once.
        if conn is not None and member.conn is not conn:
            return
        member.conn = None
        member.failures += 1
        pause = min(self.cooldown * 2 ** (member.failures - 1), MAX_BACKOFF)
        member.down_until = asyncio.get_running_loop().time() + pause
        log.warning("%s down for %.1fs: %s", member.instance.id, pause, exc.message)
        self._notify()

    def _release(self, member: Member) -> None:
        if member in self._retired and member.inflight == 0:
            self._retired.discard(member)
            if member.conn is not None:
                member.conn.abort("instance left the registry")

    async def _watch(self) -> None:
        index = 0
        backoff = 0.1
        local = True
        while True:
            wait = self.watch_wait if local else FALLBACK_POLL
            try:
                async with asyncio.timeout(wait * 1.2 + 10.0):
                    new_index, found = await self.registry.watch(
                        self.service, index, wait, self.datacenter
                    )
                local = bool(found)
                if not local:
                    found = await self.registry.healthy_any_dc(self.service)
            except Exception as exc:  # the watcher must outlive any one failure
                log.warning("watching %s failed: %r; retrying in %.1fs", self.service, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 0.1
            # An index that goes backwards means the registry restarted: start over.
            index = new_index if new_index >= index else 0
            self._update(found)

    def _update(self, instances: list[Instance]) -> None:
        listed = {inst.id: inst for inst in instances}
        for inst_id, member in list(self._members.items()):
            new = listed.get(inst_id)
            if new is None or (new.address, new.port) != (
                member.instance.address,
                member.instance.port,
            ):
                del self._members[inst_id]
                self._retired.add(member)
                self._release(member)
        for inst in instances:
            known = self._members.get(inst.id)
            if known is None:
                self._members[inst.id] = Member(inst, load=inst.load or 0.0)
            else:
                known.instance = inst
                known.note_load(inst.load)
        self._notify()

    def _notify(self) -> None:
        # Wake everyone waiting on the current event, and arm a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def ping_all(self, per_instance: float = 1.0) -> dict[str, float | DoraError]:
        """Ping every instance: its reported load, or the error that stopped it
        (each given ``per_instance`` seconds to answer)."""

        async def ping(member: Member) -> float | DoraError:
            try:
                async with asyncio.timeout(per_instance):
                    conn = await self._connect(member)
                    reply = await conn.call(lambda cid: {"id": cid, "ping": True})
            except TimeoutError:
                return ServiceUnavailable(f"{member.instance.id}: no pong in {per_instance}s")
            except DoraError as exc:
                return exc
            member.note_load(reply.get("load"))
            return member.load

        members = list(self._members.values())
        results = await asyncio.gather(*(ping(m) for m in members))
        return {m.instance.id: r for m, r in zip(members, results, strict=True)}

    def stats(self) -> PoolStats:
        """Counters and per-instance state, for metrics."""
        return pool_stats(self.calls, self.retries, self.failures, self._members.values())
