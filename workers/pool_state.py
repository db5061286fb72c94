"""What a :class:`~dora.workers.pool.WorkerPool` knows about each instance."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterable

from dora.registry import Instance
from dora.workers.connection import WorkerConnection


@dataclasses.dataclass(eq=False, slots=True)
class Member:
    """One instance the pool may call, and its connection (opened lazily)."""

    instance: Instance
    conn: WorkerConnection | None = None
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    inflight: int = 0  # calls from this pool not yet answered
    load: float = 0.0  # what the worker last reported (answers, or the registry)
    failures: int = 0  # consecutive connection failures
    down_until: float = 0.0  # loop time before which no call goes here

    def note_load(self, load: object) -> None:
        """Take a reported load, ignoring anything that is not a finite number."""
        if isinstance(load, int | float) and not isinstance(load, bool) and math.isfinite(load):
            self.load = float(load)


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceStats:
    id: str
    address: str
    port: int
    datacenter: str
    inflight: int
    load: float
    connected: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """Counters since the pool opened, and the instances it knows now."""

    calls: int
    retries: int
    failures: int
    instances: tuple[InstanceStats, ...]

    @property
    def inflight(self) -> int:
        return sum(inst.inflight for inst in self.instances)


def pool_stats(calls: int, retries: int, failures: int, members: Iterable[Member]) -> PoolStats:
    """Freeze the pool's counters and members into a :class:`PoolStats`."""
    return PoolStats(
        calls,
        retries,
        failures,
        tuple(
            InstanceStats(
                m.instance.id,
                m.instance.address,
                m.instance.port,
                m.instance.datacenter,
                m.inflight,
                m.load,
                m.conn is not None and not m.conn.closed,
            )
            for m in members
        ),
    )
