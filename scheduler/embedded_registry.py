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
lives in memory. Service names, service IDs and check IDs are matched
case-insensitively, as Consul's state store does, and echoed as registered.
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
import heapq
import itertools
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from dora.registry import go_duration, parse_go_duration

__all__ = ["EmbeddedRegistry"]

log = logging.getLogger(__name__)

_MAX_WAIT = 600.0  # Consul caps a blocking query's wait at 10 minutes
_DEFAULT_WAIT = 300.0
_JITTER_FRACTION = 16
_OUTPUT_MAX = 4096  # Consul's default check output_max_size
_MAX_BODY = 256 * 1024
_MAX_CHECKS_PER_SERVICE = 16
_STATUS = {"pass": "passing", "warn": "warning", "fail": "critical"}
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_OTHER_CHECK_KINDS = ("http", "tcp", "args", "script", "grpc", "dockercontainerid", "h2ping", "udp")
_TRUE = ("", "1", "t", "true")
_FALSE = ("0", "f", "false")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ConsulError(Exception):
    """An answer in Consul's error form: a status and a plain-text body."""

    def __init__(self, status: int, text: str, retry_after: int | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.retry_after = status, text, retry_after


@dataclass(slots=True, eq=False)
class _Check:
    id: str
    name: str
    service_key: str
    status: str
    output: str
    notes: str
    ttl: float
    deregister_after: float | None
    create_index: int = 0
    modify_index: int = 0
    deadline: float | None = None  # monotonic time of TTL expiry
    reap_at: float | None = None  # monotonic time of deregistration while critical


@dataclass(slots=True, eq=False)
class _Service:
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    enable_tag_override: bool
    create_index: int = 0
    modify_index: int = 0
    checks: dict[str, _Check] = field(default_factory=dict)  # lower check id -> check


def _norm(raw: Any, what: str) -> dict[str, Any]:
    # Consul decodes bodies case-insensitively and translates snake_case keys.
    if not isinstance(raw, dict):
        raise _ConsulError(400, f"Request decode failed: {what} must be an object")
    return {str(k).replace("_", "").lower(): v for k, v in raw.items()}


def _duration(raw: Any, what: str) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise _ConsulError(400, f"Request decode failed: invalid {what}")
    if isinstance(raw, int | float):
        return float(raw) / 1e9  # a JSON number is a Go time.Duration in nanoseconds
    try:
        return parse_go_duration(str(raw))
    except ValueError as exc:
        raise _ConsulError(400, f"Request decode failed: invalid {what}: {raw!r}") from exc


def _truncate(output: str) -> str:
    data = output.encode()
    if len(data) <= _OUTPUT_MAX:
        return output
    kept = data[:_OUTPUT_MAX].decode(errors="ignore")
    return f"{kept} ...\n(Captured {_OUTPUT_MAX} of {len(data)} bytes)"


def _bool_param(request: web.Request, name: str) -> bool:
    if name not in request.query:
        return False
    value = request.query[name].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _ConsulError(400, f"Invalid value for ?{name}")


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
        self._services: dict[str, _Service] = {}  # lower service id -> service
        self._checks: dict[str, _Check] = {}  # lower check id -> check
        self._by_name: dict[str, dict[str, None]] = {}  # lower name -> ordered lower ids
        self._index = 1
        self._name_index: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}  # lower name -> woken on its next change
        self._any_change = asyncio.Event()
        self._timers: list[tuple[float, int, str, _Check]] = []
        self._seq = itertools.count()
        self._reaper_wake = asyncio.Event()
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
            self._reap_forever(), name=f"registry-reaper-{self.datacenter}"
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
            reg._wake_all()

    def _wake_all(self) -> None:
        for event in self._events.values():
            event.set()
        self._events.clear()
        self._any_change.set()
        self._any_change = asyncio.Event()

    # -- state changes (synchronous: one event loop, no awaits inside) -----

    def _bump(self, *names: str) -> int:
        self._index += 1
        for key in names:
            if key in self._by_name:
                self._name_index[key] = self._index
            else:
                self._name_index.pop(key, None)
            event = self._events.pop(key, None)
            if event is not None:
                event.set()
        self._any_change.set()
        self._any_change = asyncio.Event()
        return self._index

    def _register(self, body: dict[str, Any], replace_checks: bool) -> None:
        name, sid = body.get("name"), body.get("id") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _ConsulError(400, "Missing service name")
        if not isinstance(sid, str):
            raise _ConsulError(400, "Request decode failed: ID must be a string")
        key = sid.lower()
        old = self._services.get(key)
        if old is None and len(self._services) >= self.max_services:
            raise _ConsulError(503, "too many services registered", retry_after=5)
        svc = _Service(
            id=sid,
            name=name,
            tags=self._tags(body.get("tags")),
            address=self._str(body.get("address"), "Address"),
            port=self._port(body.get("port")),
            meta=self._meta(body.get("meta")),
            weights=self._weights(body.get("weights")),
            enable_tag_override=body.get("enabletagoverride") is True,
        )
        listed = body.get("checks") or []
        if not isinstance(listed, list):
            raise _ConsulError(400, "Request decode failed: Checks must be a list")
        raw_checks = ([body["check"]] if body.get("check") else []) + listed
        if len(raw_checks) > _MAX_CHECKS_PER_SERVICE:
            raise _ConsulError(400, f"at most {_MAX_CHECKS_PER_SERVICE} checks per service")
        specs = [self._check_spec(raw, svc, i, len(raw_checks)) for i, raw in enumerate(raw_checks)]
        # Validated: from here on nothing raises.
        now = time.monotonic()
        touched = {name.lower()}
        if old is not None:
            touched.add(old.name.lower())
            self._by_name[old.name.lower()].pop(key, None)
            if not self._by_name[old.name.lower()]:
                del self._by_name[old.name.lower()]
            if not replace_checks:  # unlisted checks stay, unless asked to replace them
                svc.checks = dict(old.checks)
        self._services[key] = svc
        self._by_name.setdefault(name.lower(), {})[key] = None
        for spec in specs:
            self._adopt_check(spec, key, svc, now)
        if old is not None:
            for check_key in old.checks.keys() - svc.checks.keys():
                self._checks.pop(check_key, None)
        index = self._bump(*touched)
        svc.create_index = old.create_index if old is not None else index
        svc.modify_index = index
        for check in svc.checks.values():
            check.service_key = key
            check.create_index = check.create_index or index
            check.modify_index = index

    def _check_spec(self, raw: Any, svc: _Service, i: int, count: int) -> _Check:
        spec = _norm(raw, "Check")
        if any(spec.get(kind) for kind in _OTHER_CHECK_KINDS):
            raise _ConsulError(
                400, "Check is not valid: the embedded registry runs TTL checks only"
            )
        ttl = _duration(spec.get("ttl"), "TTL")
        if ttl is None or ttl <= 0:
            raise _ConsulError(400, "Check is not valid: TTL must be > 0 for TTL checks")
        status = spec.get("status") or ""
        if status not in ("", "passing", "warning", "critical"):
            raise _ConsulError(400, f"Invalid check status: {status!r}")
        suffix = f":{i + 1}" if count > 1 else ""
        cid = spec.get("checkid") or spec.get("id") or f"service:{svc.id}{suffix}"
        return _Check(
            id=self._str(cid, "CheckID"),
            name=self._str(spec.get("name") or f"Service '{svc.name}' check", "Name"),
            service_key="",
            status=status,
            output="",
            notes=self._str(spec.get("notes"), "Notes"),
            ttl=ttl,
            deregister_after=_duration(
                spec.get("deregistercriticalserviceafter"), "DeregisterCriticalServiceAfter"
            ),
        )

    def _adopt_check(self, check: _Check, service_key: str, svc: _Service, now: float) -> None:
        key = check.id.lower()
        existing = self._checks.get(key)
        if existing is not None:
            owner = self._services.get(existing.service_key)
            if owner is not None and owner is not svc:
                owner.checks.pop(key, None)
            check.create_index = existing.create_index
            if not check.status:  # re-registration keeps the check's state
                check.status, check.output = existing.status, existing.output
        check.status = check.status or "critical"
        check.service_key = service_key
        self._checks[key] = check
        svc.checks[key] = check
        check.deadline = now + check.ttl
        self._push(check.deadline, "ttl", check)
        if check.status == "critical":
            self._schedule_reap(check, now)

    def _deregister(self, key: str) -> bool:
        svc = self._services.pop(key, None)
        if svc is None:
            return False
        for check_key in svc.checks:
            self._checks.pop(check_key, None)
        names = self._by_name[svc.name.lower()]
        names.pop(key, None)
        if not names:
            del self._by_name[svc.name.lower()]
        self._bump(svc.name.lower())
        return True

    def _update_check(self, check_id: str, status: str, output: str) -> None:
        check = self._checks.get(check_id.lower())
        if check is None:
            raise _ConsulError(
                404,
                f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                "not the check name.",
            )
        now = time.monotonic()
        check.deadline = now + check.ttl  # any update resets the TTL clock
        self._push(check.deadline, "ttl", check)
        self._set_status(check, status, output, now)

    def _set_status(self, check: _Check, status: str, output: str, now: float) -> None:
        output = _truncate(output)
        if status == check.status and output == check.output:
            return  # nothing a reader could see changed: no index bump, no wake-ups
        was_critical = check.status == "critical"
        check.status, check.output = status, output
        if status != "critical":
            check.reap_at = None
        elif not was_critical:
            self._schedule_reap(check, now)
        svc = self._services[check.service_key]
        svc.modify_index = check.modify_index = self._bump(svc.name.lower())

    def _schedule_reap(self, check: _Check, now: float) -> None:
        if check.deregister_after is not None:
            check.reap_at = now + check.deregister_after
            self._push(check.reap_at, "reap", check)

    # -- timers ------------------------------------------------------------

    def _push(self, when: float, kind: str, check: _Check) -> None:
        # Stale entries (superseded deadlines) are skipped when popped; rebuild
        # the heap when they outnumber live ones, so it stays O(checks).
        if len(self._timers) > 4 * len(self._checks) + 64:
            live = [e for e in self._timers if self._live(e)]
            heapq.heapify(live)
            self._timers = live
        entry = (when, next(self._seq), kind, check)
        heapq.heappush(self._timers, entry)
        if self._timers[0] is entry:
            self._reaper_wake.set()

    def _live(self, entry: tuple[float, int, str, _Check]) -> bool:
        when, _, kind, check = entry
        if self._checks.get(check.id.lower()) is not check:
            return False
        return (check.deadline if kind == "ttl" else check.reap_at) == when

    def _expire_due(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if not self._live(entry):
                continue
            check = entry[3]
            if entry[2] == "ttl":
                check.deadline = None
                expired = "TTL expired"
                if check.output:
                    expired += f" (last output before timeout follows): {check.output}"
                self._set_status(check, "critical", expired, now)
            elif self._deregister(check.service_key):
                log.info(
                    "deregistered %s: critical for %.1fs", check.service_key, check.deregister_after
                )

    async def _reap_forever(self) -> None:
        while True:
            self._expire_due(time.monotonic())
            self._reaper_wake.clear()
            delay = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._reaper_wake.wait()

    # -- reads -------------------------------------------------------------

    def _index_for(self, key: str | None) -> int:
        # A missing service answers the catalog's index, as Consul does.
        return self._index if key is None else self._name_index.get(key, self._index)

    async def _block(
        self, key: str | None, min_index: int, wait: float, via: EmbeddedRegistry
    ) -> None:
        deadline = time.monotonic() + wait
        while self._index_for(key) <= min_index and not (self._stopping or via._stopping):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if key is None or key not in self._by_name:
                event = self._any_change
            else:
                event = self._events.setdefault(key, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()

    def _instances(self, key: str, tags: list[str]) -> Iterator[_Service]:
        wanted = {t.lower() for t in tags}
        for sid in sorted(self._by_name.get(key, ())):
            svc = self._services[sid]
            if wanted <= {t.lower() for t in svc.tags}:
                yield svc

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

    def _service_json(self, svc: _Service) -> dict[str, Any]:
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

    def _check_json(self, check: _Check | None, svc: _Service | None) -> dict[str, Any]:
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
            for svc in self._instances(key, tags)
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
            for svc in self._instances(key, tags)
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
            except _ConsulError as exc:
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
                raise _ConsulError(400, f"?{unsupported} is not supported by the embedded registry")
        dc = request.query.get("dc") or self.datacenter
        target = self._federation.get(dc)
        if target is None or not target._running or target._stopping:
            raise _ConsulError(500, "No path to datacenter")
        return target

    async def _maybe_block(
        self, request: web.Request, target: EmbeddedRegistry, key: str | None
    ) -> None:
        try:
            min_index = int(request.query.get("index") or 0)
        except ValueError as exc:
            raise _ConsulError(400, "Invalid index") from exc
        wait = _DEFAULT_WAIT
        if request.query.get("wait"):
            try:
                wait = parse_go_duration(request.query["wait"])
            except ValueError as exc:
                raise _ConsulError(400, "Invalid wait time") from exc
        if min_index <= 0:
            return
        if self._blocking >= self.max_blocking_queries:
            raise _ConsulError(503, "too many blocking queries", retry_after=1)
        wait = min(max(wait, 0.0), _MAX_WAIT)
        wait += random.uniform(0.0, wait / _JITTER_FRACTION)  # spread simultaneous wake-ups
        self._blocking += 1
        try:
            await target._block(key, min_index, wait, via=self)
        finally:
            self._blocking -= 1

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if (request.content_length or 0) > _MAX_BODY:
            raise _ConsulError(413, "Request body too large")
        try:
            raw = json.loads(await request.read() or b"{}")
        except web.HTTPRequestEntityTooLarge as exc:
            raise _ConsulError(413, "Request body too large") from exc
        except ValueError as exc:
            raise _ConsulError(400, f"Request decode failed: {exc}") from exc
        return _norm(raw, "body")

    async def _h_register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self._register(body, _bool_param(request, "replace-existing-checks"))
        return web.Response()

    async def _h_deregister(self, request: web.Request) -> web.Response:
        sid = request.match_info["service_id"]
        if not self._deregister(sid.lower()):
            raise _ConsulError(
                404,
                f'Unknown service ID "{sid}". Ensure that the service ID is passed, '
                "not the service name.",
            )
        return web.Response()

    async def _h_ttl(self, request: web.Request) -> web.Response:
        status = _STATUS[request.match_info["verb"]]
        self._update_check(request.match_info["check_id"], status, request.query.get("note", ""))
        return web.Response()

    async def _h_check_update(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        status = body.get("status")
        if status not in ("passing", "warning", "critical"):
            raise _ConsulError(400, f"Invalid check status: {status!r}")
        self._update_check(request.match_info["check_id"], status, str(body.get("output") or ""))
        return web.Response()

    async def _h_agent_services(self, request: web.Request) -> web.Response:
        return self._json(
            {
                svc.id: {
                    **{k: v for k, v in self._service_json(svc).items() if not k.endswith("Index")},
                    "Datacenter": self.datacenter,
                }
                for svc in self._services.values()
            }
        )

    async def _h_agent_checks(self, request: web.Request) -> web.Response:
        return self._json(
            {
                c.id: self._check_json(c, self._services[c.service_key])
                for c in self._checks.values()
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
        return self._json(entries, target._index_for(key))

    async def _h_catalog_service(self, request: web.Request) -> web.Response:
        target, key = self._target(request), request.match_info["service"].lower()
        await self._maybe_block(request, target, key)
        entries = target._catalog_entries(key, request.query.getall("tag", []))
        return self._json(entries, target._index_for(key))

    async def _h_catalog_services(self, request: web.Request) -> web.Response:
        target = self._target(request)
        await self._maybe_block(request, target, None)
        out: dict[str, set[str]] = {}
        names: dict[str, str] = {}
        for svc in target._services.values():
            shown = names.setdefault(svc.name.lower(), svc.name)  # first registered casing
            out.setdefault(shown, set()).update(svc.tags)
        return self._json({k: sorted(v) for k, v in out.items()}, target._index)

    async def _h_datacenters(self, request: web.Request) -> web.Response:
        # Consul sorts by estimated round-trip time, ties by name; here every
        # remote data centre is equally near, so: local first, then by name.
        others = sorted(dc for dc in self._federation if dc != self.datacenter)
        return self._json([self.datacenter, *others])

    async def _h_leader(self, request: web.Request) -> web.Response:
        return self._json(f"{self.address}:8300")

    async def _h_peers(self, request: web.Request) -> web.Response:
        return self._json([f"{self.address}:8300"])

    # -- field validation --------------------------------------------------

    @staticmethod
    def _str(raw: Any, what: str) -> str:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise _ConsulError(400, f"Request decode failed: {what} must be a string")
        return raw

    @staticmethod
    def _tags(raw: Any) -> list[str]:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise _ConsulError(400, "Request decode failed: Tags must be a list of strings")
        return list(raw)

    @staticmethod
    def _port(raw: Any) -> int:
        if raw is None:
            return 0
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
            raise _ConsulError(400, "Request decode failed: Port must be an integer in 0-65535")
        return raw

    @staticmethod
    def _meta(raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise _ConsulError(400, "Invalid Service Meta: must be an object")
        if len(raw) > 64:
            raise _ConsulError(400, "Invalid Service Meta: more than 64 key/value pairs")
        for k, v in raw.items():
            if not _META_KEY.match(k) or len(k) > 128 or k.startswith("consul-"):
                raise _ConsulError(400, f"Invalid Service Meta: invalid key {k!r}")
            if not isinstance(v, str) or len(v) > 512:
                raise _ConsulError(400, f"Invalid Service Meta: invalid value for {k!r}")
        return dict(raw)

    @staticmethod
    def _weights(raw: Any) -> dict[str, int]:
        if raw is None:
            return {"Passing": 1, "Warning": 1}
        spec = _norm(raw, "Weights")
        passing, warning = spec.get("passing", 1), spec.get("warning", 1)
        if (
            not isinstance(passing, int)
            or not isinstance(warning, int)
            or passing < 1
            or warning < 0
        ):
            raise _ConsulError(400, "Passing must be greater than 0 and Warning must be at least 0")
        return {"Passing": passing, "Warning": warning}
