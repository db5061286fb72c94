"""Result and source caches, and the coalescing of identical in-flight work.

Two ideas, composed:

- :class:`LruCache` — a least-recently-used map bounded in bytes. An entry
  larger than an eighth of the budget is not kept: one huge result must not
  flush every small one. A budget of 0 turns the cache off.
- :class:`SingleFlight` — one task per key. The first request for a key
  starts the work; identical requests arriving while it runs await the same
  task. A waiter that is cancelled (its client went away) leaves the work
  running for the others; when the last waiter leaves, the work is cancelled,
  since nobody wants it any more.

:class:`ResultCache` keys processed results by ``(object hash, fops text)``,
so a changed object (a new hash) can never be answered with a stale result.
:class:`SourceCache` keys object bytes by ``(bucket, key, hash)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from dora.errors import ServiceUnavailable
from dora.ops import Output

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Bookkeeping per entry (key tuple, dict slot, object headers), so that many
# tiny entries still count against the budget.
ENTRY_OVERHEAD = 256
# A bound on distinct pieces of work in flight at once; beyond it a request
# is refused with 503 rather than queued without limit.
DEFAULT_MAX_FLIGHTS = 512


class LruCache(Generic[K, V]):
    """A least-recently-used map bounded by the total size of its values."""

    def __init__(self, budget: int, sizeof: Callable[[V], int]) -> None:
        self._budget = max(0, budget)
        self._max_entry = self._budget // 8
        self._sizeof = sizeof
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._budget > 0

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found[0]

    def put(self, key: K, value: V) -> bool:
        """Keep ``value`` unless it is too large; evict the least recently used."""
        size = self._sizeof(value) + ENTRY_OVERHEAD
        if not self.enabled or size > self._max_entry:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._used -= old[1]
        self._entries[key] = (value, size)
        self._used += size
        while self._used > self._budget:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._used -= evicted
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._used = 0


@dataclasses.dataclass(slots=True)
class _Flight(Generic[V]):
    task: asyncio.Task[V]
    waiters: int = 0


class SingleFlight(Generic[K, V]):
    """Run at most one piece of work per key at a time; share its outcome."""

    def __init__(self, max_flights: int = DEFAULT_MAX_FLIGHTS) -> None:
        self._flights: dict[K, _Flight[V]] = {}
        self._max_flights = max_flights
        self._closed = False

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> tuple[V, bool]:
        """The outcome of ``work()`` for ``key``, and whether this call joined a
        flight another caller had started (so did no work of its own)."""
        if self._closed:
            raise ServiceUnavailable("shutting down")
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            if len(self._flights) >= self._max_flights:
                raise ServiceUnavailable("too much work in flight", retry_after=1.0)
            flight = _Flight(asyncio.create_task(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda task: self._landed(key, task))
        flight.waiters += 1
        try:
            # shield: cancelling this waiter must not cancel the shared task.
            return await asyncio.shield(flight.task), joined
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if flight.task.cancelled() and (current is None or not current.cancelling()):
                # The work was cancelled under us (shutdown), not this request.
                raise ServiceUnavailable("processing was cancelled") from None
            raise
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # nobody is left to want the result

    def _landed(self, key: K, task: asyncio.Task[V]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # mark it retrieved: waiters may all be gone

    async def close(self) -> None:
        """Cancel all work in flight and refuse new work; idempotent."""
        self._closed = True
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


ResultKey = tuple[str, str]  # (object hash, fops text)


def _output_size(output: Output) -> int:
    return len(output.body) if output.body is not None else 0


class ResultCache:
    """Processed results by ``(object hash, fops text)``, with coalescing."""

    def __init__(self, budget: int, max_flights: int = DEFAULT_MAX_FLIGHTS) -> None:
        self.lru: LruCache[ResultKey, Output] = LruCache(budget, _output_size)
        self.flights: SingleFlight[ResultKey, Output] = SingleFlight(max_flights)

    async def get_or_compute(
        self, key: ResultKey, compute: Callable[[], Coroutine[Any, Any, Output]]
    ) -> tuple[Output, bool]:
        """The result for ``key`` and whether it came from the cache.

        Concurrent misses for one key run ``compute`` once. Only results held
        in memory (``Output.body``) are cached; file results are not.
        """
        cached = self.lru.get(key)
        if cached is not None:
            return cached, True

        async def compute_and_keep() -> Output:
            output = await compute()
            if output.body is not None:
                self.lru.put(key, output)
            return output

        output, _ = await self.flights.run(key, compute_and_keep)
        return output, False

    async def close(self) -> None:
        await self.flights.close()
        self.lru.clear()


SourceKey = tuple[str, str, str]  # (bucket, key, object hash)


class SourceCache:
    """Object bytes by ``(bucket, key, hash)``; one read per key at a time."""

    def __init__(self, budget: int, max_flights: int = DEFAULT_MAX_FLIGHTS) -> None:
        self.lru: LruCache[SourceKey, bytes] = LruCache(budget, len)
        self.flights: SingleFlight[SourceKey, bytes] = SingleFlight(max_flights)

    async def get_or_read(
        self, key: SourceKey, read: Callable[[], Coroutine[Any, Any, tuple[bytes, str]]]
    ) -> bytes:
        """The bytes for ``key``; ``read`` returns the bytes and the hash it found.

        Bytes whose hash is not the key's (the object changed between stat and
        read) are returned to this caller but not kept.
        """
        cached = self.lru.get(key)
        if cached is not None:
            return cached

        async def read_and_keep() -> bytes:
            data, found_hash = await read()
            if found_hash == key[2]:
                self.lru.put(key, data)
            return data

        data, _ = await self.flights.run(key, read_and_keep)
        return data

    async def close(self) -> None:
        await self.flights.close()
        self.lru.clear()
