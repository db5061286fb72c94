"""The embedded registry: the subset of Consul's HTTP API that Dora uses.

``dora serve`` runs one instead of a Consul agent, and tests link several
(one per data centre) as a stand-in for a federated Consul. It speaks
Consul's wire format (field names and casing, ``X-Consul-*`` headers,
blocking queries with ``index``/``wait``, errors as plain-text bodies), so
one client, :class:`dora.workers.registry.ConsulRegistry`, serves both::

    PUT /v1/agent/service/register            (Check / Checks: TTL checks only)
    PUT /v1/agent/service/deregister/<id>
    PUT /v1/agent/check/{pass,warn,fail}/<check id>?note=
    PUT /v1/agent/check/update/<check id>     {"Status": ..., "Output": ...}
    GET /v1/agent/services | /v1/agent/checks | /v1/agent/self
    GET /v1/health/service/<name>?passing&tag=&index=&wait=&dc=   (blocking)
    GET /v1/catalog/service/<name>?tag=&index=&wait=&dc=          (blocking)
    GET /v1/catalog/services?index=&wait=&dc=                     (blocking)
    GET /v1/catalog/datacenters | /v1/status/leader | /v1/status/peers

One node per data centre (the server is agent and catalog at once); state
lives in memory (:mod:`dora.scheduler.registry_state`). Service names,
service IDs and check IDs are matched case-insensitively, as Consul's state
store does, and echoed as registered.
Every change bumps a raft-like index, global and per service name; a blocking
query returns when its index moves past ``index`` or after ``wait`` (default
5 min, at most 10 min, plus up to wait/16 of jitter, as Consul).
TTL expiry and DeregisterCriticalServiceAfter run on a timer heap served by a
background task that lives as long as the serving app. Bounds: registered
services, checks per service, body size and concurrent blocking queries
(503 with Retry-After beyond them).

Differences from Consul worth knowing: DeregisterCriticalServiceAfter is
honoured exactly (Consul enforces at least 1 min and reaps every 30 s);
check output reaches readers at once (Consul defers output-only changes by
``check_update_interval``, 5 min by default); ``filter`` and ``node-meta``
are refused rather than ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from dora.registry import go_duration, parse_go_duration
from dora.scheduler.registry_state import (
    Check,
    ConsulError,
    RegistryState,
    Service,
    decode_object,
)

__all__ = ["EmbeddedRegistry"]

_MAX_WAIT = 600.0  # Consul caps a blocking query's wait at 10 minutes
_DEFAULT_WAIT = 300.0
_JITTER_FRACTION = 16
_MAX_BODY = 256 * 1024
_STATUS = {"pass": "passing", "warn": "warning", "fail": "critical"}
_TRUE = ("", "1", "t", "true")
_FALSE = ("0", "f", "false")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bool_param(request: web.Request, name: str) -> bool:
    if name not in request.query:
        return False
    value = request.query[name].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConsulError(400, f"Invalid value for ?{name}")


class EmbeddedRegistry:
    """A Consul-compatible registry for one data centre, served by aiohttp.

    Use ``async with EmbeddedRegistry() as reg`` (or :meth:`start` /
    :meth:`stop`) to serve it on its own port, or :meth:`setup` to mount
    its routes into another app. :meth:`link` federates registries of
    different data centres, so ``?dc=`` reaches any of them.
    """

    def __init__(
        self,
        datacenter: str = "dc1",
        node: str = "dora",
        *,
        address: str = "127.0.0.1",
        max_services: int = 4096,
        max_blocking_queries: int = 1024,
    ) -> None:
        self.datacenter = datacenter
        self.node = node
        self.address = address
        self.max_services = max_services
        self.max_blocking_queries = max_blocking_queries
        self.port: int | None = None
        self._node_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}.{datacenter}.dora"))
        self._federation: dict[str, EmbeddedRegistry] = {datacenter: self}
        self._state = RegistryState()
        self._reaper: asyncio.Task[None] | None = None
        self._blocking = 0
        self._mounted = False
        self._running = False
        self._stopping = False
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------

    def setup(self, app: web.Application) -> None:
        """Mount the ``/v1/...`` routes into ``app``; the TTL reaper runs with its lifecycle."""
        if self._mounted:
            raise RuntimeError("an EmbeddedRegistry can be mounted once")
        self._mounted = True
        app.router.add_routes(self._routes())
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._on_shutdown)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host:port`` (0 picks a free port); returns the bound port."""
        if self._stopping or self._runner is not None:
            raise RuntimeError("EmbeddedRegistry: already serving, or stopped for good")
        app = web.Application(client_max_size=_MAX_BODY)
        self.setup(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop serving: wake blocking queries, stop the reaper. Twice is harmless."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the standalone server."""
        if self.port is None:
            raise RuntimeError("EmbeddedRegistry is not serving")
        return f"http://{self.address}:{self.port}"

    def link(self, other: EmbeddedRegistry) -> None:
        """Federate with ``other`` (and everything it is linked with), like a WAN join.

        Every member then answers ``?dc=`` for every other (in process) and
        lists all of them in ``/v1/catalog/datacenters``: its own first, then
        by name (Consul orders by round-trip time, ties by name). A member
        that is not serving answers as an unreachable one: "No path to
        datacenter".
        """
        merged = dict(self._federation)
        for dc, reg in other._federation.items():
            if merged.get(dc, reg) is not reg:
                raise ValueError(f"two registries claim data centre {dc!r}")
            merged[dc] = reg
        for reg in merged.values():
            reg._federation = merged

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        if self._stopping:
            raise RuntimeError("a stopped EmbeddedRegistry cannot be restarted")
        self._running = True
        self._reaper = asyncio.create_task(
            self._state.run_timers(), name=f"registry-reaper-{self.datacenter}"
        )
        try:
            yield
        finally:
            self._running = False
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    async def _on_shutdown(self, app: web.Application) -> None:
        # Runs before aiohttp waits for in-flight handlers: release blocking
        # queries now instead of holding shutdown for their whole wait.
        self._stopping = True
        for reg in self._federation.values():
            reg._state.wake_all()

    def _node_json(self) -> dict[str, Any]:
        return {
            "ID": self._node_id,
            "Node": self.node,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": self._tagged(),
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    def _tagged(self) -> dict[str, str]:
        return {k: self.address for k in ("lan", "lan_ipv4", "wan", "wan_ipv4")}

    def _service_json(self, svc: Service) -> dict[str, Any]:
        return {
            "ID": svc.id,
            "Service": svc.name,
            "Tags": list(svc.tags),
            "Address": svc.address,
            "Meta": dict(svc.meta),
            "Port": svc.port,
            "Weights": dict(svc.weights),
            "EnableTagOverride": svc.enable_tag_override,
            "CreateIndex": svc.create_index,
            "ModifyIndex": svc.modify_index,
        }

    def _check_json(self, check: Check | None, svc: Service | None) -> dict[str, Any]:
        if check is None or svc is None:  # the node's own check, always passing here
            return {
                **dict.fromkeys(
                    ("Notes", "ServiceID", "ServiceName", "Type", "Interval", "Timeout"), ""
                ),
                "Node": self.node,
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "Output": "Agent alive and reachable",
                "ServiceTags": [],
                "ExposedPort": 0,
                "Definition": {},
                "CreateIndex": 1,
                "ModifyIndex": 1,
            }
        return {
            "Node": self.node,
            "CheckID": check.id,
            "Name": check.name,
            "Status": check.status,
            "Notes": check.notes,
            "Output": check.output,
            "ServiceID": svc.id,
            "ServiceName": svc.name,
            "ServiceTags": list(svc.tags),
            "Type": "ttl",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {
                "Interval": "0s",
                "Timeout": "0s",
                "DeregisterCriticalServiceAfter": go_duration(check.deregister_after or 0.0),
            },
            "CreateIndex": check.create_index,
            "ModifyIndex": check.modify_index,
        }

    def _health_entries(self, key: str, passing: bool, tags: list[str]) -> list[dict[str, Any]]:
        node, serf = self._node_json(), self._check_json(None, None)
        return [
            {
                "Node": node,
                "Service": self._service_json(svc),
                "Checks": [serf] + [self._check_json(c, svc) for c in svc.checks.values()],
            }
            for svc in self._state.instances(key, tags)
            if not passing or all(c.status == "passing" for c in svc.checks.values())
        ]

    def _catalog_entries(self, key: str, tags: list[str]) -> list[dict[str, Any]]:
        node = self._node_json()
        base = {k: node[k] for k in ("ID", "Node", "Address", "Datacenter", "TaggedAddresses")}
        base["NodeMeta"] = node["Meta"]
        return [
            {
                **base,
                "ServiceKind": "",
                "ServiceID": svc.id,
                "ServiceName": svc.name,
                "ServiceTags": list(svc.tags),
                "ServiceAddress": svc.address,
                "ServiceWeights": dict(svc.weights),
                "ServiceMeta": dict(svc.meta),
                "ServicePort": svc.port,
                "ServiceEnableTagOverride": svc.enable_tag_override,
                "CreateIndex": svc.create_index,
                "ModifyIndex": svc.modify_index,
            }
            for svc in self._state.instances(key, tags)
        ]

    # -- HTTP --------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        w = self._consul_errors
        return [
            web.put("/v1/agent/service/register", w(self._h_register)),
            web.put("/v1/agent/service/deregister/{service_id:.+}", w(self._h_deregister)),
            web.put("/v1/agent/check/{verb:pass|warn|fail}/{check_id:.+}", w(self._h_ttl)),
            web.put("/v1/agent/check/update/{check_id:.+}", w(self._h_check_update)),
            web.get("/v1/agent/services", w(self._h_agent_services)),
            web.get("/v1/agent/checks", w(self._h_agent_checks)),
            web.get("/v1/agent/self", w(self._h_agent_self)),
            web.get("/v1/health/service/{service}", w(self._h_health_service)),
            web.get("/v1/catalog/service/{service}", w(self._h_catalog_service)),
            web.get("/v1/catalog/services", w(self._h_catalog_services)),
            web.get("/v1/catalog/datacenters", w(self._h_datacenters)),
            web.get("/v1/status/leader", w(self._h_leader)),
            web.get("/v1/status/peers", w(self._h_peers)),
        ]

    @staticmethod
    def _consul_errors(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ConsulError as exc:
                headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
                return web.Response(status=exc.status, text=exc.text, headers=headers)

        return wrapped

    @staticmethod
    def _json(data: Any, index: int | None = None) -> web.Response:
        headers = {}
        if index is not None:
            headers = {
                "X-Consul-Index": str(index),
                "X-Consul-KnownLeader": "true",
                "X-Consul-LastContact": "0",
                "X-Consul-Effective-Consistency": "leader",
            }
        return web.json_response(data, headers=headers)

    def _target(self, request: web.Request) -> EmbeddedRegistry:
        for unsupported in ("filter", "node-meta"):
            if unsupported in request.query:
                raise ConsulError(400, f"?{unsupported} is not supported by the embedded registry")
        dc = request.query.get("dc") or self.datacenter
        target = self._federation.get(dc)
        if target is None or not target._running or target._stopping:
            raise ConsulError(500, "No path to datacenter")
        return target

    async def _maybe_block(
        self, request: web.Request, target: EmbeddedRegistry, key: str | None
    ) -> None:
        try:
            min_index = int(request.query.get("index") or 0)
        except ValueError as exc:
            raise ConsulError(400, "Invalid index") from exc
        wait = _DEFAULT_WAIT
        if request.query.get("wait"):
            try:
                wait = parse_go_duration(request.query["wait"])
            except ValueError as exc:
                raise ConsulError(400, "Invalid wait time") from exc
        if min_index <= 0:
            return
        if self._blocking >= self.max_blocking_queries:
            raise ConsulError(503, "too many blocking queries", retry_after=1)
        wait = min(max(wait, 0.0), _MAX_WAIT)
        wait += random.uniform(0.0, wait / _JITTER_FRACTION)  # spread simultaneous wake-ups
        self._blocking += 1
        try:
            await target._state.wait_for_change(
                key, min_index, wait, lambda: target._stopping or self._stopping
            )
        finally:
            self._blocking -= 1

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if (request.content_length or 0) > _MAX_BODY:
            raise ConsulError(413, "Request body too large")
        try:
            raw = json.loads(await request.read() or b"{}")
        except web.HTTPRequestEntityTooLarge as exc:
            raise ConsulError(413, "Request body too large") from exc
        except ValueError as exc:
            raise ConsulError(400, f"Request decode failed: {exc}") from exc
        return decode_object(raw, "body")

    async def _h_register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        replace = _bool_param(request, "replace-existing-checks")
        self._state.register(body, replace, max_services=self.max_services)
        return web.Response()

    async def _h_deregister(self, request: web.Request) -> web.Response:
        sid = request.match_info["service_id"]
        if not self._state.deregister(sid.lower()):
            raise ConsulError(
                404,
                f'Unknown service ID "{sid}". Ensure that the service ID is passed, '
                "not the service name.",
            )
        return web.Response()

    async def _h_ttl(self, request: web.Request) -> web.Response:
        status = _STATUS[request.match_info["verb"]]
        self._state.update_check(
            request.match_info["check_id"], status, request.query.get("note", "")
        )
        return web.Response()

    async def _h_check_update(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        status = body.get("status")
        if status not in ("passing", "warning", "critical"):
            raise ConsulError(400, f"Invalid check status: {status!r}")
        self._state.update_check(
            request.match_info["check_id"], status, str(body.get("output") or "")
        )
        return web.Response()

    async def _h_agent_services(self, request: web.Request) -> web.Response:
        return self._json(
            {
                svc.id: {
                    **{k: v for k, v in self._service_json(svc).items() if not k.endswith("Index")},
                    "Datacenter": self.datacenter,
                }
                for svc in self._state.services.values()
            }
        )

    async def _h_agent_checks(self, request: web.Request) -> web.Response:
        return self._json(
            {
                c.id: self._check_json(c, self._state.services[c.service_key])
                for c in self._state.checks.values()
            }
        )

    async def _h_agent_self(self, request: web.Request) -> web.Response:
        config = {"Datacenter": self.datacenter, "NodeName": self.node, "NodeID": self._node_id}
        member = {"Name": self.node, "Addr": self.address, "Port": 8301, "Status": 1}
        member["Tags"] = {"dc": self.datacenter, "role": "consul"}
        return self._json(
            {"Config": {**config, "Server": True, "Revision": "dora"}, "Member": member}
        )

    async def _h_health_service(self, request: web.Request) -> web.Response:
        target, key = self._target(request), request.match_info["service"].lower()
        passing = _bool_param(request, "passing")
        await self._maybe_block(request, target, key)
        entries = target._health_entries(key, passing, request.query.getall("tag", []))
        return self._json(entries, target._state.index_for(key))

    async def _h_catalog_service(self, request: web.Request) -> web.Response:
        target, key = self._target(request), request.match_info["service"].lower()
        await self._maybe_block(request, target, key)
        entries = target._catalog_entries(key, request.query.getall("tag", []))
        return self._json(entries, target._state.index_for(key))

    async def _h_catalog_services(self, request: web.Request) -> web.Response:
        target = self._target(request)
        await self._maybe_block(request, target, None)
        out: dict[str, set[str]] = {}
        names: dict[str, str] = {}
        for svc in target._state.services.values():
            shown = names.setdefault(svc.name.lower(), svc.name)  # first registered casing
            out.setdefault(shown, set()).update(svc.tags)
        return self._json({k: sorted(v) for k, v in out.items()}, target._state.index)

    async def _h_datacenters(self, request: web.Request) -> web.Response:
        # Consul sorts by estimated round-trip time, ties by name; here every
        # remote data centre is equally near, so: local first, then by name.
        others = sorted(dc for dc in self._federation if dc != self.datacenter)
        return self._json([self.datacenter, *others])

    async def _h_leader(self, request: web.Request) -> web.Response:
        return self._json(f"{self.address}:8300")

    async def _h_peers(self, request: web.Request) -> web.Response:
        return self._json([f"{self.address}:8300"])
