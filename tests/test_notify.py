"""Notify delivery from the job store's outbox to a real HTTP receiver on 127.0.0.1.

Jobs are finished in a real SQLite job store; the receiver is an aiohttp
server that fails, hangs or accepts on demand; the SSRF guard allow-lists
127.0.0.1/32 unless a test checks that it refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dora import ssrf
from dora.jobs import Job, JobCode, JobSpec, JobStoreOptions, NotifyState
from dora.jobstore import SqliteJobStore
from dora.scheduler.jobtesting import NotifyReceiver
from dora.scheduler.notify import GuardedResolver, Notifier, NotifyPolicy, RefusedAddress

LOOPBACK = ssrf.parse_allow("127.0.0.1/32")
QUICK = NotifyPolicy(
    attempts=5, first_delay=0.05, timeout=2.0, poll_interval=0.1, claim_seconds=1.0
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "jobs.db", JobStoreOptions(durable=False)) as jobs:
        yield jobs


async def finished_job(store: SqliteJobStore, url: str) -> Job:
    """A job that ran both its chains, with its notify in the outbox."""
    job = await store.enqueue(JobSpec("b", "k.jpg", "imageView2/2/w/10;imageInfo", notify_url=url))
    [leased] = await store.lease("runner", 30.0, 1)
    assert leased.id == job.id
    for item in leased.items:
        done = dataclasses.replace(item, code=JobCode.DONE, desc="", key=f"out{item.index}")
        await store.update_item(job.id, "runner", done)
    return await store.complete(job.id, "runner")


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[Notifier]:
    async with notifier:
        task = asyncio.create_task(notifier.run())
        try:
            yield notifier
        finally:
            task.cancel()
            await asyncio.wait([task])


async def settled(store: SqliteJobStore, job: Job, within: float = 10.0) -> Job:
    give_up = time.monotonic() + within
    while (job := await store.get(job.id)).notify_state is NotifyState.PENDING:
        assert time.monotonic() < give_up, "the notify was never recorded"
        await asyncio.sleep(0.02)
    return job


async def test_a_failing_endpoint_gets_retried_and_one_delivery_is_recorded(
    store: SqliteJobStore,
) -> None:
    async with NotifyReceiver(fail_first=3) as receiver:
        job = await finished_job(store, receiver.url)
        async with running(Notifier(store, owner="n", allow=LOOPBACK, policy=QUICK)) as notifier:
            job = await settled(store, job)
            await asyncio.sleep(0.5)  # nothing more arrives
        assert [r.answered for r in receiver.received] == [500, 500, 500, 200]
        assert (job.notify_state, job.notify_attempts, job.code) == (NotifyState.SENT, 4, 0)
        assert (notifier.delivered, notifier.failed) == (1, 0)
        # Every attempt carried the status JSON, as JSON.
        for post in receiver.received:
            assert post.content_type == "application/json"
            assert post.body == job.status_json()
        assert await store.pending_notifies(10) == []
        assert not await store.mark_notified(job.id, True, 9)  # recorded once only


async def test_when_attempts_run_out_the_job_reports_code_4(store: SqliteJobStore) -> None:
    policy = NotifyPolicy(attempts=3, first_delay=0.05, poll_interval=0.1)
    async with NotifyReceiver(fail_first=100, fail_status=503) as receiver:
        job = await finished_job(store, receiver.url)
        async with running(Notifier(store, owner="n", allow=LOOPBACK, policy=policy)) as notifier:
            job = await settled(store, job)
        assert len(receiver.received) == 3
        assert (job.notify_state, job.notify_attempts) == (NotifyState.FAILED, 3)
        assert job.code == JobCode.NOTIFY_FAILED
        assert job.status_json()["desc"] == "Callback failed"
        assert notifier.failed == 1


async def test_a_hanging_endpoint_costs_the_timeout_per_attempt(store: SqliteJobStore) -> None:
    policy = NotifyPolicy(attempts=2, first_delay=0.1, timeout=0.5, poll_interval=0.1)
    async with NotifyReceiver(hang=True) as receiver:
        job = await finished_job(store, receiver.url)
        started = time.monotonic()
        async with running(Notifier(store, owner="n", allow=LOOPBACK, policy=policy)):
            job = await settled(store, job, within=5.0)
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 2.5  # two bounded attempts and one pause
        assert len(receiver.received) == 2
        assert job.code == JobCode.NOTIFY_FAILED


async def test_loopback_targets_are_refused_unless_allow_listed(store: SqliteJobStore) -> None:
    async with NotifyReceiver() as receiver:
        by_address = await finished_job(store, receiver.url)
        by_name = await finished_job(store, receiver.url.replace("127.0.0.1", "localhost"))
        async with running(Notifier(store, owner="n", allow=(), policy=QUICK)):
            for submitted in (by_address, by_name):
                job = await settled(store, submitted)
                assert (job.notify_state, job.notify_attempts) == (NotifyState.FAILED, 0)
                assert job.code == JobCode.NOTIFY_FAILED
        assert receiver.received == []
        allowed = await finished_job(store, receiver.url.replace("127.0.0.1", "localhost"))
        async with running(Notifier(store, owner="n", allow=LOOPBACK, policy=QUICK)):
            assert (await settled(store, allowed)).notify_state is NotifyState.SENT
        assert len(receiver.accepted()) == 1


async def test_the_client_resolver_checks_every_connection() -> None:
    # A name that passed the first check but resolves to a refused address
    # when connecting (DNS rebinding) is refused by the client's own resolver.
    with pytest.raises(RefusedAddress, match=r"localhost resolves to 127\.0\.0\.1, loopback"):
        await GuardedResolver(()).resolve("localhost", 80)
    [result] = await GuardedResolver(LOOPBACK).resolve("localhost", 80)
    assert result["host"] == "127.0.0.1"
    async with NotifyReceiver() as receiver, Notifier(None, owner="n", allow=()) as notifier:  # type: ignore[arg-type]
        outcome = await notifier._post(receiver.url.replace("127.0.0.1", "localhost"), b"{}")
        assert outcome is not None
        assert "loopback" in outcome
        assert receiver.received == []


async def test_a_notifier_killed_mid_retry_is_replaced_and_delivers_once(
    store: SqliteJobStore,
) -> None:
    slow = NotifyPolicy(attempts=5, first_delay=5.0, poll_interval=0.1, claim_seconds=1.0)
    async with NotifyReceiver(fail_first=1) as receiver:
        job = await finished_job(store, receiver.url)
        async with running(Notifier(store, owner="first", allow=LOOPBACK, policy=slow)):
            await receiver.arrived.wait()  # one failed attempt, then a long pause: die now
        assert (await store.get(job.id)).notify_state is NotifyState.PENDING
        started = time.monotonic()
        async with running(Notifier(store, owner="second", allow=LOOPBACK, policy=QUICK)):
            job = await settled(store, job)
            await asyncio.sleep(0.3)
        assert time.monotonic() - started >= 0.5  # it waited for the first claim to lapse
        assert [r.answered for r in receiver.received] == [500, 200]
        assert (job.notify_state, job.notify_attempts) == (NotifyState.SENT, 1)
        async with running(Notifier(store, owner="third", allow=LOOPBACK, policy=QUICK)):
            await asyncio.sleep(0.3)
        assert len(receiver.received) == 2  # a settled notify is never sent again


def test_policy_backoff_doubles_and_is_capped() -> None:
    policy = NotifyPolicy(first_delay=2.0, max_delay=10.0)
    assert [policy.delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ValueError, match="claims must outlast"):
        NotifyPolicy(poll_interval=5.0, claim_seconds=5.0)
