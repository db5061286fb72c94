"""The gateway's caches: LRU bounded in bytes, and coalescing of in-flight work."""

from __future__ import annotations

import asyncio

import pytest

from dora.errors import ProcessingFailed, ServiceUnavailable
from dora.gateway.cache import ENTRY_OVERHEAD, LruCache, ResultCache, SingleFlight, SourceCache
from dora.ops import Output


def test_lru_evicts_least_recently_used_within_budget() -> None:
    cache: LruCache[str, bytes] = LruCache(8 * (100 + ENTRY_OVERHEAD), len)
    for name in "abcdefgh":
        assert cache.put(name, b"x" * 100)
    assert cache.get("a") == b"x" * 100  # a is now the most recent
    assert cache.put("i", b"y" * 100)  # evicts b, the least recently used
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.used_bytes <= 8 * (100 + ENTRY_OVERHEAD)
    assert len(cache) == 8


def test_lru_refuses_entries_over_an_eighth_of_the_budget() -> None:
    cache: LruCache[str, bytes] = LruCache(80_000, len)
    assert not cache.put("big", b"x" * 10_000)
    assert cache.get("big") is None
    assert cache.put("small", b"x" * 5_000)


def test_lru_with_zero_budget_is_off() -> None:
    cache: LruCache[str, bytes] = LruCache(0, len)
    assert not cache.enabled
    assert not cache.put("a", b"")
    assert cache.get("a") is None


def test_lru_replacing_a_key_keeps_the_accounting_right() -> None:
    cache: LruCache[str, bytes] = LruCache(1_000_000, len)
    cache.put("k", b"x" * 1000)
    cache.put("k", b"x" * 10)
    assert cache.used_bytes == 10 + ENTRY_OVERHEAD
    assert len(cache) == 1


async def test_single_flight_runs_identical_work_once() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    tasks = [asyncio.create_task(flights.run("k", work)) for _ in range(10)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert runs == 1
    assert [value for value, _ in results] == [42] * 10
    assert sum(1 for _, joined in results if not joined) == 1
    assert len(flights) == 0


async def test_single_flight_waiter_cancelled_leaves_work_for_others() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        finished.set()
        return "done"

    first = asyncio.create_task(flights.run("k", work))
    second = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == ("done", True)
    assert finished.is_set()


async def test_single_flight_last_waiter_leaving_cancels_the_work() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    waiter = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(cancelled.wait(), 1)
    await asyncio.sleep(0)
    assert len(flights) == 0


async def test_single_flight_shares_errors_and_forgets_them() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ProcessingFailed("broken")

    results = await asyncio.gather(
        flights.run("k", failing), flights.run("k", failing), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, ProcessingFailed) for r in results)

    async def working() -> int:
        return 7

    assert await flights.run("k", working) == (7, False)  # errors are not remembered


async def test_single_flight_bounds_distinct_work() -> None:
    flights: SingleFlight[int, int] = SingleFlight(max_flights=2)
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        return 1

    held = [asyncio.create_task(flights.run(i, work)) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ServiceUnavailable):
        await flights.run(3, work)
    gate.set()
    await asyncio.gather(*held)


async def test_single_flight_close_cancels_and_refuses() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def slow() -> int:
        await asyncio.sleep(30)
        return 0

    waiter = asyncio.create_task(flights.run("k", slow))
    await asyncio.sleep(0.01)
    await flights.close()
    with pytest.raises(ServiceUnavailable):
        await waiter
    with pytest.raises(ServiceUnavailable):
        await flights.run("k", slow)


async def test_result_cache_hits_after_first_compute_and_skips_file_results() -> None:
    cache = ResultCache(10 * 1024 * 1024)
    calls = 0

    async def compute() -> Output:
        nonlocal calls
        calls += 1
        return Output("image/png", body=b"png")

    first = await cache.get_or_compute(("hash", "imageInfo"), compute)
    second = await cache.get_or_compute(("hash", "imageInfo"), compute)
    assert (first[1], second[1]) == (False, True)
    assert calls == 1
    # A different object hash is a different entry: never a stale result.
    assert (await cache.get_or_compute(("hash2", "imageInfo"), compute))[1] is False

    async def to_file() -> Output:
        return Output("video/mp4", path="/tmp/x.mp4")

    await cache.get_or_compute(("h", "avthumb/mp4"), to_file)
    assert (await cache.get_or_compute(("h", "avthumb/mp4"), to_file))[1] is False
    await cache.close()


async def test_source_cache_does_not_keep_bytes_of_another_version() -> None:
    cache = SourceCache(10 * 1024 * 1024)
    reads = 0

    async def read_changed() -> tuple[bytes, str]:
        nonlocal reads
        reads += 1
        return b"new bytes", "new-hash"

    assert await cache.get_or_read(("b", "k", "old-hash"), read_changed) == b"new bytes"
    await cache.get_or_read(("b", "k", "old-hash"), read_changed)
    assert reads == 2  # not kept: the hash it was read under did not match

    async def read_same() -> tuple[bytes, str]:
        nonlocal reads
        reads += 1
        return b"bytes", "h"

    await cache.get_or_read(("b", "k", "h"), read_same)
    await cache.get_or_read(("b", "k", "h"), read_same)
    assert reads == 3
    await cache.close()
