"""Keeping one worker instance registered, healthy and honest about its load.

An :class:`Announcer` registers the instance with a TTL check, passes the
check every ``interval`` seconds reporting the worker's calls in flight as its
load, registers again if the registry forgot it (reaped, or restarted), and on
exit deregisters. :meth:`Announcer.draining` fails the check first, so clients
stop choosing the worker while it finishes the calls it already has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from dora.errors import DoraError, NotFound, ServiceUnavailable
from dora.registry import Instance, Registry

log = logging.getLogger(__name__)

DEFAULT_TTL = 3.0
DEFAULT_INTERVAL = 1.0
REGISTRY_CALL_TIMEOUT = 2.0  # per registry call, so a hung registry never stalls shutdown


class Announcer:
    """Registers an instance for as long as the ``async with`` block runs."""

    def __init__(
        self,
        registry: Registry,
        instance: Instance,
        load: Callable[[], float],
        *,
        ttl: float = DEFAULT_TTL,
        interval: float = DEFAULT_INTERVAL,
        register_within: float = 10.0,
    ) -> None:
        self.registry = registry
        self.instance = instance
        self._load = load
        self._ttl = ttl
        self._interval = interval
        self._register_within = register_within
        self._beat: asyncio.Task[None] | None = None
        self._draining = False

    async def __aenter__(self) -> Self:
        await self._register_with_retries()
        self._beat = asyncio.create_task(self._heartbeat(), name=f"ttl-{self.instance.id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_beat()
        await self._quietly("deregister", self.registry.deregister(self.instance.id))

    async def draining(self, note: str = "draining") -> None:
        """Stop the heartbeat and fail the check: the instance leaves healthy lists."""
        self._draining = True
        await self._stop_beat()
        await self._quietly("fail_ttl", self.registry.fail_ttl(self.instance.id, note))

    async def _register_with_retries(self) -> None:
        # The registry may come up a moment after us (``dora serve`` starts both).
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._register_within
        delay = 0.1
        while True:
            try:
                async with asyncio.timeout(REGISTRY_CALL_TIMEOUT):
                    await self.registry.register(self.instance, self._ttl)
                return
            except (DoraError, TimeoutError, OSError) as exc:
                if loop.time() + delay > give_up:
                    raise ServiceUnavailable(f"cannot register {self.instance.id}: {exc}") from exc
                log.warning("register %s failed (%s); retrying", self.instance.id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _heartbeat(self) -> None:
        while not self._draining:
            try:
                async with asyncio.timeout(REGISTRY_CALL_TIMEOUT):
                    await self.registry.pass_ttl(self.instance.id, load=self._load())
            except NotFound:
                log.warning("registry forgot %s; registering again", self.instance.id)
                await self._quietly("register", self.registry.register(self.instance, self._ttl))
            except (DoraError, TimeoutError, OSError) as exc:
                # Keep beating: the registry may come back before the TTL runs out.
                log.warning("TTL pass for %s failed: %s", self.instance.id, exc)
            await asyncio.sleep(self._interval)

    async def _stop_beat(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.wait([self._beat])  # unlike awaiting it, keeps our own cancellation
            self._beat = None

    async def _quietly(self, what: str, call: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(REGISTRY_CALL_TIMEOUT):
                await call
        except (DoraError, TimeoutError, OSError) as exc:
            log.warning("%s for %s failed: %s", what, self.instance.id, exc)
