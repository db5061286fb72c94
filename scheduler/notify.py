"""Delivering notify callbacks: the status JSON POSTed to ``notifyURL``, from the outbox.

A finished job with a ``notifyURL`` waits in the job store's outbox. The
:class:`Notifier` claims pending notifies (``pending_notifies`` with its
owner name, renewed by every poll while it works on them), POSTs each job's
status JSON — exactly what ``/status/get/prefop`` answers, as
``application/json``, as Qiniu does — and records the outcome with
``mark_notified`` *before* it forgets the notify. A restart finds the notifies
that were not recorded and delivers them then: each is recorded exactly once
(delivery itself is at least once, since a crash may fall between a
receiver's 200 and the record).

Each delivery is bounded: at most ``attempts`` POSTs, each within
``timeout`` seconds (a receiver that hangs costs that much, no more), with
exponential backoff between them (2, 4, 8, 16 s by default: five attempts
over about half a minute to a minute and a half). Any 2xx answer is success;
redirects are not followed. When the attempts run out the job reports code
4 ("Callback failed").

Every target passes the SSRF guard (:mod:`dora.ssrf`) before the first POST,
and again in the HTTP client's resolver for every connection, so a name
that re-resolves to a private address between the check and the connection
is refused as well. A refused or malformed URL fails at once, without
attempts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import socket
import types
from collections.abc import Sequence
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from dora import ssrf
from dora.errors import BadRequest, DoraError, Forbidden
from dora.jobs import Job
from dora.jobstore import JobStore
from dora.scheduler.metrics import notify_attempt, notify_settled

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer body, read and dropped
USER_AGENT = "dora-notify/1"


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyPolicy:
    """How hard to try one notify, and how many at once (seconds unless said)."""

    attempts: int = 5
    first_delay: float = 2.0  # before the second attempt; doubles after each failure
    max_delay: float = 30.0
    timeout: float = 10.0  # one attempt, connect to answer
    concurrency: int = 16  # deliveries in flight
    poll_interval: float = 2.0  # between looks at the outbox
    claim_seconds: float = 60.0  # a claim lapses this long after the last poll

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.concurrency < 1:
            raise ValueError("attempts and concurrency must be at least 1")
        if self.claim_seconds <= self.poll_interval:
            raise ValueError("claims must outlast the poll interval that renews them")

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` failed attempts."""
        return float(min(self.first_delay * 2 ** max(0, failures - 1), self.max_delay))


class RefusedAddress(OSError):
    """The resolver found an address the SSRF guard refuses."""


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing names that resolve to refused addresses.

    Every connection resolves through it, so the addresses connected to are
    the ones checked (no DNS-rebinding window). aiohttp does not resolve IP
    literals; :func:`dora.ssrf.resolve_checked` checks those before a POST.
    """

    def __init__(self, allow: Sequence[ssrf.IPNetwork]) -> None:
        self._allow = tuple(allow)
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            problem = ssrf.address_problem(result["host"], self._allow)
            if problem is not None:
                raise RefusedAddress(f"{host} resolves to {result['host']}, {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class Notifier:
    """Delivers the outbox's notifies; ``async with`` it, then :meth:`run` in a task."""

    def __init__(
        self,
        store: JobStore,
        *,
        owner: str,
        allow: Sequence[ssrf.IPNetwork] = (),
        policy: NotifyPolicy | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.allow = tuple(allow)
        self.policy = policy or NotifyPolicy()
        self.delivered = 0  # notifies recorded as sent, since start
        self.failed = 0  # notifies recorded as failed (code 4)
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed or self._session is not None:
            raise RuntimeError("a Notifier is entered once")
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.allow),
            use_dns_cache=False,
            limit=self.policy.concurrency,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT}
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel deliveries in flight (their claims lapse) and close; harmless twice."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._session is not None:
            await self._session.close()

    def wake(self) -> None:
        """Look at the outbox now (a job just finished)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll the outbox and deliver, until cancelled."""
        policy = self.policy
        while True:
            self._wake.clear()
            try:
                await self._poll()
            except DoraError as exc:  # the store is busy or closing: look again later
                log.warning("notify outbox: %s", exc.message)
            try:
                async with asyncio.timeout(policy.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _poll(self) -> None:
        # The claim covers the notifies in flight too: polling renews them.
        jobs = await self.store.pending_notifies(
            self.policy.concurrency, owner=self.owner, lease_seconds=self.policy.claim_seconds
        )
        for job in jobs:
            if job.id in self._inflight or len(self._inflight) >= self.policy.concurrency:
                continue
            task = asyncio.create_task(self._settle(job), name=f"notify-{job.id}")
            self._inflight[job.id] = task
            task.add_done_callback(functools.partial(self._forget, job.id))

    def _forget(self, job_id: str, _: asyncio.Task[None]) -> None:
        self._inflight.pop(job_id, None)

    async def _settle(self, job: Job) -> None:
        ok, attempts = await self.deliver(job)
        try:
            recorded = await self.store.mark_notified(job.id, ok, attempts)
        except DoraError as exc:  # not recorded: the claim lapses and it is delivered again
            log.warning("notify of job %s: cannot record the outcome: %s", job.id, exc.message)
            return
        if recorded:
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
            notify_settled("delivered" if ok else "refused" if attempts == 0 else "failed")

    async def deliver(self, job: Job) -> tuple[bool, int]:
        """POST the job's status to its notifyURL: ``(delivered, attempts made)``."""
        url = job.notify_url
        try:
            await ssrf.resolve_checked(url, self.allow)
        except (BadRequest, Forbidden) as exc:
            log.warning("notify of job %s refused: %s", job.id, exc.message)
            return False, 0
        body = json.dumps(job.status_json(), ensure_ascii=False).encode()
        policy = self.policy
        for attempt in range(1, policy.attempts + 1):
            outcome = await self._post(url, body)
            notify_attempt(outcome)
            if outcome is None:
                log.info("notify of job %s delivered (attempt %d)", job.id, attempt)
                return True, attempt
            log.info("notify of job %s, attempt %d of %d: %s", job.id, attempt,
                     policy.attempts, outcome)  # fmt: skip
            if attempt < policy.attempts:
                await asyncio.sleep(policy.delay(attempt))
        log.warning("notify of job %s failed after %d attempts", job.id, policy.attempts)
        return False, policy.attempts

    async def _post(self, url: str, body: bytes) -> str | None:
        """One attempt: ``None`` on a 2xx answer, else what went wrong."""
        assert self._session is not None, "enter the Notifier first"
        try:
            async with (
                asyncio.timeout(self.policy.timeout),
                self._session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,
                ) as resp,
            ):
                await resp.content.read(MAX_ANSWER_BYTES)
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except TimeoutError:
            return f"no answer within {self.policy.timeout:g}s"
        except aiohttp.ClientConnectorError as exc:  # its text hides the reason
            return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"
        except OSError as exc:
            return f"connection failed: {exc}"
