"""The embedded registry's state: services, TTL checks and change indexes.

One :class:`RegistryState` holds one data centre's catalogue in memory, for
:class:`~dora.scheduler.embedded_registry.EmbeddedRegistry` to serve over
HTTP. Service names, service IDs and check IDs are matched
case-insensitively, as Consul's state store does, and echoed as registered.

Every change bumps a raft-like index, global and per service name, and wakes
the readers blocked on it. TTL expiry and DeregisterCriticalServiceAfter run
on a timer heap that :meth:`RegistryState.run_timers` serves. Changes are
synchronous (one event loop, no awaits inside), so none is seen half done.
Registration bodies are checked here, in Consul's words: a bad one raises
:class:`ConsulError` before anything changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dora.registry import parse_go_duration

__all__ = ["Check", "ConsulError", "RegistryState", "Service", "decode_object"]

log = logging.getLogger(__name__)

_OUTPUT_MAX = 4096  # Consul's default check output_max_size
_MAX_CHECKS_PER_SERVICE = 16
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_OTHER_CHECK_KINDS = ("http", "tcp", "args", "script", "grpc", "dockercontainerid", "h2ping", "udp")


class ConsulError(Exception):
    """An answer in Consul's error form: a status and a plain-text body."""

    def __init__(self, status: int, text: str, retry_after: int | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.retry_after = status, text, retry_after


@dataclass(slots=True, eq=False)
class Check:
    """A TTL check of one service."""

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
class Service:
    """A registered service instance and its checks."""

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
    checks: dict[str, Check] = field(default_factory=dict)  # lower check id -> check


Timer = tuple[float, int, str, Check]  # (when, sequence, "ttl" or "reap", check)


def decode_object(raw: Any, what: str) -> dict[str, Any]:
    """A JSON object with its keys as Consul matches them (lower case, no '_')."""
    # Consul decodes bodies case-insensitively and translates snake_case keys.
    if not isinstance(raw, dict):
        raise ConsulError(400, f"Request decode failed: {what} must be an object")
    return {str(k).replace("_", "").lower(): v for k, v in raw.items()}


class RegistryState:
    """One data centre's services, checks, change indexes and TTL timers.

    :attr:`services`, :attr:`checks` and :attr:`index` are for reading; every
    change goes through the methods, which keep the indexes and wake readers.
    """

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}  # lower service id -> service
        self.checks: dict[str, Check] = {}  # lower check id -> check
        self.index = 1
        self._by_name: dict[str, dict[str, None]] = {}  # lower name -> ordered lower ids
        self._name_index: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}  # lower name -> woken on its next change
        self._any_change = asyncio.Event()
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._timer_wake = asyncio.Event()

    # -- changes -----------------------------------------------------------

    def wake_all(self) -> None:
        """Wake every blocked reader (on shutdown)."""
        for event in self._events.values():
            event.set()
        self._events.clear()
        self._any_change.set()
        self._any_change = asyncio.Event()

    def _bump(self, *names: str) -> int:
        self.index += 1
        for key in names:
            if key in self._by_name:
                self._name_index[key] = self.index
            else:
                self._name_index.pop(key, None)
            event = self._events.pop(key, None)
            if event is not None:
                event.set()
        self._any_change.set()
        self._any_change = asyncio.Event()
        return self.index

    def register(self, body: dict[str, Any], replace_checks: bool, *, max_services: int) -> None:
        """Register (or re-register) a service from a decoded request body.

        A new service beyond ``max_services`` is refused (503, Retry-After).
        """
        name, sid = body.get("name"), body.get("id") or body.get("name")
        if not isinstance(name, str) or not name:
            raise ConsulError(400, "Missing service name")
        if not isinstance(sid, str):
            raise ConsulError(400, "Request decode failed: ID must be a string")
        key = sid.lower()
        old = self.services.get(key)
        if old is None and len(self.services) >= max_services:
            raise ConsulError(503, "too many services registered", retry_after=5)
        svc = Service(
            id=sid,
            name=name,
            tags=_tags(body.get("tags")),
            address=_str(body.get("address"), "Address"),
            port=_port(body.get("port")),
            meta=_meta(body.get("meta")),
            weights=_weights(body.get("weights")),
            enable_tag_override=body.get("enabletagoverride") is True,
        )
        listed = body.get("checks") or []
        if not isinstance(listed, list):
            raise ConsulError(400, "Request decode failed: Checks must be a list")
        raw_checks = ([body["check"]] if body.get("check") else []) + listed
        if len(raw_checks) > _MAX_CHECKS_PER_SERVICE:
            raise ConsulError(400, f"at most {_MAX_CHECKS_PER_SERVICE} checks per service")
        specs = [_check_spec(raw, svc, i, len(raw_checks)) for i, raw in enumerate(raw_checks)]
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
        self.services[key] = svc
        self._by_name.setdefault(name.lower(), {})[key] = None
        for spec in specs:
            self._adopt_check(spec, key, svc, now)
        if old is not None:
            for check_key in old.checks.keys() - svc.checks.keys():
                self.checks.pop(check_key, None)
        index = self._bump(*touched)
        svc.create_index = old.create_index if old is not None else index
        svc.modify_index = index
        for check in svc.checks.values():
            check.service_key = key
            check.create_index = check.create_index or index
            check.modify_index = index

    def _adopt_check(self, check: Check, service_key: str, svc: Service, now: float) -> None:
        key = check.id.lower()
        existing = self.checks.get(key)
        if existing is not None:
            owner = self.services.get(existing.service_key)
            if owner is not None and owner is not svc:
                owner.checks.pop(key, None)
            check.create_index = existing.create_index
            if not check.status:  # re-registration keeps the check's state
                check.status, check.output = existing.status, existing.output
        check.status = check.status or "critical"
        check.service_key = service_key
        self.checks[key] = check
        svc.checks[key] = check
        check.deadline = now + check.ttl
        self._push(check.deadline, "ttl", check)
        if check.status == "critical":
            self._schedule_reap(check, now)

    def deregister(self, key: str) -> bool:
        """Remove the service with lower-case ID ``key``; False if there is none."""
        svc = self.services.pop(key, None)
        if svc is None:
            return False
        for check_key in svc.checks:
            self.checks.pop(check_key, None)
        names = self._by_name[svc.name.lower()]
        names.pop(key, None)
        if not names:
            del self._by_name[svc.name.lower()]
        self._bump(svc.name.lower())
        return True

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """Set a TTL check's status and output, which also resets its TTL."""
        check = self.checks.get(check_id.lower())
        if check is None:
            raise ConsulError(
                404,
                f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                "not the check name.",
            )
        now = time.monotonic()
        check.deadline = now + check.ttl  # any update resets the TTL clock
        self._push(check.deadline, "ttl", check)
        self._set_status(check, status, output, now)

    def _set_status(self, check: Check, status: str, output: str, now: float) -> None:
        output = _truncate(output)
        if status == check.status and output == check.output:
            return  # nothing a reader could see changed: no index bump, no wake-ups
        was_critical = check.status == "critical"
        check.status, check.output = status, output
        if status != "critical":
            check.reap_at = None
        elif not was_critical:
            self._schedule_reap(check, now)
        svc = self.services[check.service_key]
        svc.modify_index = check.modify_index = self._bump(svc.name.lower())

    def _schedule_reap(self, check: Check, now: float) -> None:
        if check.deregister_after is not None:
            check.reap_at = now + check.deregister_after
            self._push(check.reap_at, "reap", check)

    # -- timers ------------------------------------------------------------

    def _push(self, when: float, kind: str, check: Check) -> None:
        # Stale entries (superseded deadlines) are skipped when popped; rebuild
        # the heap when they outnumber live ones, so it stays O(checks).
        if len(self._timers) > 4 * len(self.checks) + 64:
            live = [e for e in self._timers if self._live(e)]
            heapq.heapify(live)
            self._timers = live
        entry = (when, next(self._seq), kind, check)
        heapq.heappush(self._timers, entry)
        if self._timers[0] is entry:
            self._timer_wake.set()

    def _live(self, entry: Timer) -> bool:
        when, _, kind, check = entry
        if self.checks.get(check.id.lower()) is not check:
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
            elif self.deregister(check.service_key):
                log.info(
                    "deregistered %s: critical for %.1fs", check.service_key, check.deregister_after
                )

    async def run_timers(self) -> None:
        """Expire TTLs and reap critical services when due, until cancelled."""
        while True:
            self._expire_due(time.monotonic())
            self._timer_wake.clear()
            delay = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wake.wait()

    # -- reads -------------------------------------------------------------

    def index_for(self, key: str | None) -> int:
        """The index of service name ``key`` (lower case), or of the catalogue for None."""
        # A missing service answers the catalog's index, as Consul does.
        return self.index if key is None else self._name_index.get(key, self.index)

    async def wait_for_change(
        self, key: str | None, min_index: int, wait: float, stopping: Callable[[], bool]
    ) -> None:
        """Return once :meth:`index_for` ``key`` passes ``min_index``, ``wait``
        seconds have gone by, or ``stopping()`` holds after a wake-up."""
        deadline = time.monotonic() + wait
        while self.index_for(key) <= min_index and not stopping():
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

    def instances(self, key: str, tags: list[str]) -> Iterator[Service]:
        """Services named ``key`` (lower case) that carry all ``tags``, by ID."""
        wanted = {t.lower() for t in tags}
        for sid in sorted(self._by_name.get(key, ())):
            svc = self.services[sid]
            if wanted <= {t.lower() for t in svc.tags}:
                yield svc


# -- field validation ------------------------------------------------------


def _duration(raw: Any, what: str) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ConsulError(400, f"Request decode failed: invalid {what}")
    if isinstance(raw, int | float):
        return float(raw) / 1e9  # a JSON number is a Go time.Duration in nanoseconds
    try:
        return parse_go_duration(str(raw))
    except ValueError as exc:
        raise ConsulError(400, f"Request decode failed: invalid {what}: {raw!r}") from exc


def _truncate(output: str) -> str:
    data = output.encode()
    if len(data) <= _OUTPUT_MAX:
        return output
    kept = data[:_OUTPUT_MAX].decode(errors="ignore")
    return f"{kept} ...\n(Captured {_OUTPUT_MAX} of {len(data)} bytes)"


def _check_spec(raw: Any, svc: Service, i: int, count: int) -> Check:
    spec = decode_object(raw, "Check")
    if any(spec.get(kind) for kind in _OTHER_CHECK_KINDS):
        raise ConsulError(400, "Check is not valid: the embedded registry runs TTL checks only")
    ttl = _duration(spec.get("ttl"), "TTL")
    if ttl is None or ttl <= 0:
        raise ConsulError(400, "Check is not valid: TTL must be > 0 for TTL checks")
    status = spec.get("status") or ""
    if status not in ("", "passing", "warning", "critical"):
        raise ConsulError(400, f"Invalid check status: {status!r}")
    suffix = f":{i + 1}" if count > 1 else ""
    cid = spec.get("checkid") or spec.get("id") or f"service:{svc.id}{suffix}"
    return Check(
        id=_str(cid, "CheckID"),
        name=_str(spec.get("name") or f"Service '{svc.name}' check", "Name"),
        service_key="",
        status=status,
        output="",
        notes=_str(spec.get("notes"), "Notes"),
        ttl=ttl,
        deregister_after=_duration(
            spec.get("deregistercriticalserviceafter"), "DeregisterCriticalServiceAfter"
        ),
    )


def _str(raw: Any, what: str) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise ConsulError(400, f"Request decode failed: {what} must be a string")
    return raw


def _tags(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise ConsulError(400, "Request decode failed: Tags must be a list of strings")
    return list(raw)


def _port(raw: Any) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
        raise ConsulError(400, "Request decode failed: Port must be an integer in 0-65535")
    return raw


def _meta(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConsulError(400, "Invalid Service Meta: must be an object")
    if len(raw) > 64:
        raise ConsulError(400, "Invalid Service Meta: more than 64 key/value pairs")
    for k, v in raw.items():
        if not _META_KEY.match(k) or len(k) > 128 or k.startswith("consul-"):
            raise ConsulError(400, f"Invalid Service Meta: invalid key {k!r}")
        if not isinstance(v, str) or len(v) > 512:
            raise ConsulError(400, f"Invalid Service Meta: invalid value for {k!r}")
    return dict(raw)


def _weights(raw: Any) -> dict[str, int]:
    if raw is None:
        return {"Passing": 1, "Warning": 1}
    spec = decode_object(raw, "Weights")
    passing, warning = spec.get("passing", 1), spec.get("warning", 1)
    if not isinstance(passing, int) or not isinstance(warning, int) or passing < 1 or warning < 0:
        raise ConsulError(400, "Passing must be greater than 0 and Warning must be at least 0")
    return {"Passing": passing, "Warning": warning}
