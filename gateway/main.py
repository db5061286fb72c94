"""Run one gateway process: ``python -P -m dora.gateway.main``.

``run_gateway`` opens, in order, the object store, the registry client, the
worker pool, the job store and the HTTP listener, and closes them in reverse. Shutdown is
the aiohttp/aiojobs order: when ``stop`` is set the listener stops
accepting, requests in flight get up to ``settings.shutdown_grace`` seconds
to finish, stragglers are cancelled, then the job store, the pool, the
registry client and the store close. Several gateway processes may share one port
(``reuse_port``); the kernel spreads connections among them.

Command line::

    python -P -m dora.gateway.main --data-dir D --host H --port N --registry H:P [--reuse-port]

prints ``READY <port>`` once listening (port 0 picks a free one) and stops
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import uvloop

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.config import Settings, load_settings
from dora.errors import DoraError
from dora.gateway.app import build_app, serve_app
from dora.gateway.context import GatewayContext
from dora.gateway.jobs_wiring import with_jobs
from dora.jobstore import SqliteJobStore
from dora.keys import keyring_for
from dora.layout import buckets_root, job_store_path
from dora.logs import setup_logging
from dora.storage.local import LocalStore
from dora.workers.pool import WorkerPool
from dora.workers.registry import ConsulRegistry

log = logging.getLogger("dora.gateway")


async def run_gateway(
    settings: Settings,
    *,
    registry_host: str,
    registry_port: int,
    stop: asyncio.Event,
    reuse_port: bool = False,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run one gateway until ``stop`` is set (see the module docstring)."""
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(LocalStore(buckets_root(settings), settings.limits))
        registry = await stack.enter_async_context(
            ConsulRegistry(registry_host, registry_port, settings.datacenter)
        )
        pool = await stack.enter_async_context(
            WorkerPool(registry, limits=settings.limits, datacenter=settings.datacenter)
        )
        jobs = await stack.enter_async_context(SqliteJobStore(job_store_path(settings)))
        ctx = GatewayContext(
            settings=settings,
            store=store,
            keyring=keyring_for(settings.data_dir),
            processor=pool,
            catalog=BUILTIN_CATALOG,
        )
        ctx = with_jobs(ctx, jobs)
        await serve_app(build_app(ctx), settings, stop=stop, reuse_port=reuse_port, ready=ready)


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -P -m dora.gateway.main", description=__doc__)
    p.add_argument("--data-dir", type=Path, help="data directory (buckets, keys)")
    p.add_argument("--config", type=Path, help="a dora.toml (default: <data-dir>/dora.toml)")
    p.add_argument("--host", help="address to listen on (default: from settings)")
    p.add_argument("--port", type=int, help="port to listen on (0: pick a free one)")
    p.add_argument("--registry", type=_parse_hostport, required=True, help="registry HOST:PORT")
    p.add_argument("--reuse-port", action="store_true", help="share the port with other gateways")
    return p


async def _main(args: argparse.Namespace, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry_host, registry_port = args.registry
    await run_gateway(
        settings,
        registry_host=registry_host,
        registry_port=registry_port,
        stop=stop,
        reuse_port=args.reuse_port,
        ready=lambda port: print(f"READY {port}", flush=True),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -P -m dora.gateway.main``."""
    args = _arg_parser().parse_args(argv)
    setup_logging("gateway")  # DORA_LOG_LEVEL, DORA_LOG_FORMAT=text|json
    try:
        settings = load_settings(
            args.config, data_dir=args.data_dir, host=args.host, port=args.port
        )
        uvloop.run(_main(args, settings))
    except DoraError as exc:
        log.error("gateway failed: %s", exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
