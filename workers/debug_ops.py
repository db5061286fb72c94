"""Debug ops for tests: a slow op and a broken op, never in the production catalog.

A worker started with ``DORA_WORKER_DEBUG_OPS=1`` in its environment accepts
these as leading stages of a call, before any builtin stages::

    ["debug-sleep", "<seconds>"]   sleep in the op thread (at most 30 s)
    ["debug-raise", "<message>"]   raise a non-Dora exception (a broken op)

The remaining stages run as usual; with none left, the source comes back
unchanged as ``application/octet-stream``. They exist so tests can hold calls
in flight (busy, draining, a worker killed mid-call) and break an op on
purpose without touching the builtin catalog.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

from dora.config import Limits
from dora.errors import BadRequest
from dora.ops import Output
from dora.workers.calls import ChainFn

DEBUG_OPS_ENV = "DORA_WORKER_DEBUG_OPS"
MAX_DEBUG_SLEEP = 30.0


class DebugOpFailure(RuntimeError):
    """What ``debug-raise`` raises: deliberately not a DoraError."""


def _sleep(arg: str) -> None:
    try:
        seconds = float(arg)
    except ValueError as exc:
        raise BadRequest(f"debug-sleep: bad seconds {arg!r}") from exc
    time.sleep(min(max(seconds, 0.0), MAX_DEBUG_SLEEP))


def _raise(arg: str) -> None:
    raise DebugOpFailure(arg or "debug-raise")


_DEBUG_OPS: Mapping[str, Callable[[str], None]] = {
    "debug-sleep": _sleep,
    "debug-raise": _raise,
}


def debug_ops_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for the debug ops."""
    return (os.environ if env is None else env).get(DEBUG_OPS_ENV) == "1"


def with_debug_ops(chain: ChainFn) -> ChainFn:
    """Wrap a chain so leading debug stages run first (in the same thread)."""

    def run(wire: Sequence[Sequence[str]], src: bytes, limits: Limits) -> Output:
        index = 0
        while index < len(wire) and wire[index][0] in _DEBUG_OPS:
            op, arg = wire[index]
            _DEBUG_OPS[op](arg)
            index += 1
        rest = wire[index:]
        if rest:
            return chain(rest, src, limits)
        return Output(mime="application/octet-stream", body=src)

    return run
