"""The Registry seam: where handler instances are found, in which data centre.

Two backends speak one wire protocol, the subset of Consul's HTTP API that
Dora uses: a real Consul agent, and the embedded registry that ``dora serve``
runs (:mod:`dora.scheduler.embedded_registry`). One client,
:class:`dora.workers.registry.ConsulRegistry`, implements :class:`Registry`
over both.

Conventions shared by both ends (kept here, stdlib only, so neither end has
to import the other):

- every instance has exactly one TTL check, whose CheckID is
  ``service:<instance id>`` (:func:`check_id_for`), what Consul itself
  names the single check of a service;
- an instance reports its load as the output (the ``note``) of its TTL
  pass: ``load=<n>`` (:func:`format_load`, :func:`parse_load`);
- durations on the wire are Go duration strings (``10s``, ``1m30s``,
  ``250ms``): :func:`go_duration`, :func:`parse_go_duration`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Protocol, Self, runtime_checkable

__all__ = [
    "Instance",
    "Registry",
    "check_id_for",
    "format_load",
    "go_duration",
    "parse_go_duration",
    "parse_load",
]


def _empty_meta() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance of a service, as the registry lists it.

    ``tags`` and ``meta`` are stored immutably (a tuple and a read-only
    mapping), so an ``Instance`` can be shared freely between tasks.
    ``load`` is what the instance last reported with its TTL pass, or
    ``None`` when it reported none.
    """

    id: str
    service: str
    address: str
    port: int
    datacenter: str
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=_empty_meta, hash=False)
    load: float | None = None

    def __post_init__(self) -> None:
        # Copy, so a caller mutating its own list or dict cannot change us.
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@runtime_checkable
class Registry(Protocol):
    """Register instances with a TTL health check and find the healthy ones.

    Errors: an unreachable or failing registry is
    :class:`dora.errors.ServiceUnavailable`; passing the check of an
    instance the registry no longer knows (it was reaped, or the agent
    restarted) is :class:`dora.errors.NotFound`, the cue to register again.
    """

    async def register(self, inst: Instance, ttl: float, deregister_after: float = 60.0) -> None:
        """Register ``inst`` (passing) with a TTL check ``service:<id>``.

        The check turns critical unless passed every ``ttl`` seconds; the
        instance is removed once critical for ``deregister_after`` seconds
        (Consul enforces at least a minute and reaps every 30 s).
        """
        ...

    async def pass_ttl(self, instance_id: str, load: float | None = None) -> None:
        """Mark the instance's check passing, reporting ``load`` as ``load=<n>``."""
        ...

    async def fail_ttl(self, instance_id: str, note: str = "") -> None:
        """Mark the instance's check critical (it leaves ``healthy()`` at once)."""
        ...

    async def deregister(self, instance_id: str) -> None:
        """Remove the instance and its check; unknown ids are ignored."""
        ...

    async def healthy(self, service: str, datacenter: str | None = None) -> list[Instance]:
        """Instances of ``service`` whose checks all pass, in ``datacenter``
        (default: the client's)."""
        ...

    async def watch(
        self, service: str, index: int, wait: float, datacenter: str | None = None
    ) -> tuple[int, list[Instance]]:
        """Blocking query: return once the service's index moves past
        ``index``, or after about ``wait`` seconds with the same index.

        Pass the returned index to the next call; ``index=0`` answers at once.
        """
        ...

    async def datacenters(self) -> list[str]:
        """Known data centres, in the order the registry lists them."""
        ...

    async def healthy_any_dc(self, service: str) -> list[Instance]:
        """Healthy instances in the local data centre or, when there are none
        there, in the first other data centre (in listing order) that has some."""
        ...

    async def close(self) -> None:
        """Release connections; closing twice is harmless."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_id_for(instance_id: str) -> str:
    """The CheckID of an instance's TTL check, as Consul names a lone service check."""
    return f"service:{instance_id}"


_LOAD = re.compile(r"(?:^|\s)load=(\S+)")


def format_load(load: float) -> str:
    """The TTL note that reports ``load``."""
    return f"load={load:.6g}"


def parse_load(output: str) -> float | None:
    """The load in a check's output, or ``None`` when absent or not a finite number."""
    match = _LOAD.search(output)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000}
_NS.update({"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000})
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_MAX_DURATION_TEXT = 64


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``time.ParseDuration``): ``1m30s``, ``1.5h``.

    Raises ``ValueError`` for anything Go would reject (a bare number other
    than ``0``, an unknown unit, an empty string).
    """
    s = text.strip()
    if not s or len(s) > _MAX_DURATION_TEXT:
        raise ValueError(f"invalid duration {text!r}")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        part = _GO_PART.match(s, pos)
        if part is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(part.group(1)) * _NS[part.group(2)] / 1e9
        pos = part.end()
    return sign * total


def go_duration(seconds: float) -> str:
    """Format ``seconds`` as Go's ``Duration.String`` does: ``1m0s``, ``1.5s``, ``250ms``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    for unit, size in (("ns", 1), ("µs", 1_000), ("ms", 1_000_000)):
        if ns < size * 1000:
            return f"{sign}{_decimal(ns, size)}{unit}"
    hours, rest = divmod(ns, _NS["h"])
    minutes, rest = divmod(rest, _NS["m"])
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{sign}{text}{_decimal(rest, _NS['s'])}s"


def _decimal(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"
