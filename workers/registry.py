"""ConsulRegistry: the one :class:`dora.registry.Registry` client, over ``consul.aio``.

It talks to a real Consul agent and to Dora's embedded registry alike: both
answer the same HTTP API. Everything the network or Consul can throw
(``consul.ConsulException``, aiohttp and OS errors, timeouts, malformed
answers) leaves this module as :class:`dora.errors.ServiceUnavailable`; a
TTL pass for a check the agent does not know is :class:`dora.errors.NotFound`
(register again).

Every call is bounded: ``request_timeout`` for plain calls, and a blocking
watch gets its ``wait`` plus Consul's jitter (wait/16) on top of that.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
import consul
import consul.aio

from dora.errors import DoraError, NotFound, ServiceUnavailable
from dora.registry import (
    Instance,
    check_id_for,
    format_load,
    go_duration,
    parse_load,
)

__all__ = ["ConsulRegistry"]

T = TypeVar("T")

_MAX_WAIT = 600.0  # Consul's cap on a blocking query
_JITTER = 1 + 1 / 16


class ConsulRegistry:
    """A :class:`dora.registry.Registry` over a Consul agent's HTTP API.

    ``datacenter`` is the data centre queried by default (and the "local"
    one of :meth:`healthy_any_dc`); ``None`` means the agent's own.
    Registration always goes to the agent, hence to its data centre.
    The aiohttp session is created on first use, inside the running loop.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        datacenter: str | None = None,
        scheme: str = "http",
        *,
        token: str | None = None,
        request_timeout: float = 10.0,
        connections_limit: int = 100,
    ) -> None:
        self.host, self.port, self.scheme = host, port, scheme
        self.datacenter = datacenter
        self.request_timeout = request_timeout
        self._token = token
        self._connections_limit = connections_limit
        self._api: Any = None  # consul.aio.Consul, built lazily: it needs a running loop
        self._local_dc: str | None = datacenter
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    def _client(self) -> Any:
        if self._closed:
            raise ServiceUnavailable("registry client is closed")
        if self._api is None:
            with warnings.catch_warnings():
                # py-consul passes aiohttp's deprecated verify_ssl/ssl_context.
                warnings.simplefilter("ignore", DeprecationWarning)
                self._api = consul.aio.Consul(
                    host=self.host,
                    port=self.port,
                    scheme=self.scheme,
                    token=self._token,
                    connections_limit=self._connections_limit,
                    # A session-wide ceiling above the longest blocking query;
                    # each call gets its own, tighter bound in _call().
                    connections_timeout=_MAX_WAIT * _JITTER + self.request_timeout,
                )
        return self._api

    async def close(self) -> None:
        """Close the HTTP session. Closing twice is harmless."""
        self._closed = True
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    async def __aenter__(self) -> Self:
        self._client()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, what: str, call: Awaitable[T], limit: float | None = None) -> T:
        try:
            async with asyncio.timeout(limit or self.request_timeout):
                return await call
        except (consul.ConsulException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            raise ServiceUnavailable(f"registry {what}: {detail}", retry_after=1.0) from exc

    # -- writes ------------------------------------------------------------

    async def register(self, inst: Instance, ttl: float, deregister_after: float = 60.0) -> None:
        """Register ``inst`` with a TTL check ``service:<id>`` that starts passing."""
        check = consul.Check.ttl(go_duration(ttl))
        check.update(
            CheckID=check_id_for(inst.id),
            Name=f"Service '{inst.service}' check",
            Status="passing",  # registered once ready to serve
            DeregisterCriticalServiceAfter=go_duration(deregister_after),
        )
        api = self._client()
        await self._call(
            "register",
            api.agent.service.register(
                inst.service,
                service_id=inst.id,
                address=inst.address,
                port=inst.port,
                tags=list(inst.tags),
                meta=dict(inst.meta),
                check=check,
            ),
        )
        if inst.load is not None:
            await self.pass_ttl(inst.id, inst.load)

    async def pass_ttl(self, instance_id: str, load: float | None = None) -> None:
        """Pass the TTL check, reporting ``load=<n>`` as its output."""
        note = format_load(load) if load is not None else None
        await self._ttl("pass", instance_id, note)

    async def fail_ttl(self, instance_id: str, note: str = "") -> None:
        """Mark the TTL check critical, with ``note`` as its output."""
        await self._ttl("fail", instance_id, note or None)

    async def _ttl(self, verb: str, instance_id: str, note: str | None) -> None:
        api = self._client()
        cid = check_id_for(instance_id)
        call = api.agent.check.ttl_pass if verb == "pass" else api.agent.check.ttl_fail
        known = await self._call(f"ttl {verb}", call(cid, notes=note))
        if not known:  # py-consul answers a 404 with False
            raise NotFound(f"registry: unknown check {cid!r}")

    async def deregister(self, instance_id: str) -> None:
        """Remove the instance and its check; an unknown id is not an error."""
        api = self._client()
        await self._call("deregister", api.agent.service.deregister(instance_id))

    # -- reads -------------------------------------------------------------

    async def healthy(self, service: str, datacenter: str | None = None) -> list[Instance]:
        """Instances of ``service`` whose checks all pass."""
        dc = datacenter or self.datacenter
        api = self._client()
        _, entries = await self._call("health", api.health.service(service, passing=True, dc=dc))
        return _instances(entries)

    async def watch(
        self, service: str, index: int, wait: float, datacenter: str | None = None
    ) -> tuple[int, list[Instance]]:
        """Blocking query on the passing instances of ``service``.

        Returns when the index moves past ``index`` or after about ``wait``
        seconds (at most 10 min); ``index=0`` answers at once.
        """
        dc = datacenter or self.datacenter
        wait = min(max(wait, 0.001), _MAX_WAIT)
        api = self._client()
        call = api.health.service(
            service, passing=True, index=index or None, wait=go_duration(wait), dc=dc
        )
        raw_index, entries = await self._call("watch", call, wait * _JITTER + self.request_timeout)
        try:
            new_index = int(raw_index)
        except (TypeError, ValueError) as exc:
            raise ServiceUnavailable(f"registry watch: bad X-Consul-Index {raw_index!r}") from exc
        return new_index, _instances(entries)

    async def datacenters(self) -> list[str]:
        """Data centres as the agent lists them (Consul: by round-trip time)."""
        api = self._client()
        found = await self._call("datacenters", api.catalog.datacenters())
        if not isinstance(found, list) or not all(isinstance(dc, str) for dc in found):
            raise ServiceUnavailable(f"registry datacenters: unexpected answer {found!r}")
        return found

    async def local_datacenter(self) -> str:
        """The configured data centre, else the agent's own (asked once)."""
        if self._local_dc is None:
            api = self._client()
            info = await self._call("agent self", api.agent.self())
            try:
                self._local_dc = str(info["Config"]["Datacenter"])
            except (KeyError, TypeError) as exc:
                raise ServiceUnavailable("registry agent self: no Config.Datacenter") from exc
        return self._local_dc

    async def healthy_any_dc(self, service: str) -> list[Instance]:
        """Local instances first; else those of the first other data centre
        (in listing order) that has some. An unreachable remote data centre
        is skipped, an unreachable local agent is an error."""
        local = await self.local_datacenter()
        found = await self.healthy(service, local)
        if found:
            return found
        remote = [dc for dc in await self.datacenters() if dc != local]
        results = await asyncio.gather(
            *(self.healthy(service, dc) for dc in remote), return_exceptions=True
        )
        for result in results:
            if isinstance(result, DoraError):
                continue
            if isinstance(result, BaseException):
                raise result
            if result:
                return result
        return []


def _instances(entries: Any) -> list[Instance]:
    try:
        return [_instance(entry) for entry in entries or ()]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServiceUnavailable(f"registry: malformed health entry: {exc}") from exc


def _instance(entry: Mapping[str, Any]) -> Instance:
    node = entry.get("Node") or {}
    svc = entry["Service"]
    sid = str(svc["ID"])
    cid = check_id_for(sid).lower()
    load = None
    for check in entry.get("Checks") or ():
        if str(check.get("CheckID", "")).lower() == cid:
            load = parse_load(str(check.get("Output") or ""))
    return Instance(
        id=sid,
        service=str(svc["Service"]),
        # Consul leaves a service's Address empty to mean "the node's".
        address=str(svc.get("Address") or node.get("Address") or ""),
        port=int(svc.get("Port") or 0),
        datacenter=str(node.get("Datacenter") or ""),
        tags=tuple(str(t) for t in svc.get("Tags") or ()),
        meta={str(k): str(v) for k, v in (svc.get("Meta") or {}).items()},
        load=load,
    )
