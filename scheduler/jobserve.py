"""The job service of one installation: the dispatcher with its store, objects and workers.

:func:`running_dispatcher` opens, in order, the job store
(:func:`dora.layout.job_store_path`, the file the gateways
enqueue into; they wake the dispatcher through
:func:`dora.layout.dispatch_socket_path`), the object
store (the gateway's buckets), the worker pool over the registry, and the
:class:`~dora.scheduler.dispatcher.Dispatcher` running in a task; leaving
it stops the dispatcher (running jobs get the grace period, then are
released) and closes the rest in reverse. ``dora serve`` runs it inside its
supervisor process.

It also runs alone, which is how tests kill a dispatcher mid-job::

    python -P -m dora.scheduler.jobserve --data-dir D --registry H:P \\
        [--lease-seconds S] [--heartbeat S] [--poll S] [--max-jobs N]

prints ``READY`` once running and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop

from dora import ssrf
from dora.config import Settings, load_settings
from dora.errors import DoraError
from dora.jobstore import SqliteJobStore
from dora.layout import buckets_root, dispatch_socket_path, job_store_path, work_root
from dora.logs import setup_logging
from dora.registry import Registry
from dora.scheduler.dispatcher import Dispatcher, DispatchPolicy, NotifyPolicy
from dora.storage.local import LocalStore
from dora.wakeup import usable
from dora.workers.calls import job_timeout
from dora.workers.pool import WorkerPool
from dora.workers.registry import ConsulRegistry

log = logging.getLogger("dora.jobs")

# Between looks at empty queues when submitters wake the dispatcher (the wake-up
# socket's path fits): polling is then only the safety net, so it can be slow.
# Without wake-ups the DispatchPolicy default (a short one) is the pickup delay.
WOKEN_POLL_INTERVAL = 1.0


def ssrf_allow(settings: Settings) -> tuple[ssrf.IPNetwork, ...]:
    """Notify targets allowed despite being private: config, then ``DORA_SSRF_ALLOW``."""
    return ssrf.allow_list(settings.ssrf_allow)


def dispatch_policy(settings: Settings) -> DispatchPolicy:
    """The dispatcher's policy from the settings (``job_lease_seconds`` sets the
    lease; heartbeats come five times per lease; polling slows down when
    submitters can wake the dispatcher)."""
    lease = settings.job_lease_seconds
    policy = DispatchPolicy(
        lease_seconds=lease,
        heartbeat_interval=lease / 5,
        job_timeout=job_timeout(settings.limits),
        shutdown_grace=settings.shutdown_grace,
    )
    if usable(dispatch_socket_path(settings)):
        policy = dataclasses.replace(policy, poll_interval=WOKEN_POLL_INTERVAL)
    return policy


@contextlib.asynccontextmanager
async def running_dispatcher(
    settings: Settings,
    registry: Registry,
    *,
    policy: DispatchPolicy | None = None,
    notify_policy: NotifyPolicy | None = None,
) -> AsyncIterator[Dispatcher]:
    """Run the installation's dispatcher until the block ends (see the module doc)."""
    policy = policy or dispatch_policy(settings)
    async with contextlib.AsyncExitStack() as stack:
        jobs = await stack.enter_async_context(SqliteJobStore(job_store_path(settings)))
        objects = await stack.enter_async_context(
            LocalStore(buckets_root(settings), settings.limits)
        )
        pool = await stack.enter_async_context(
            WorkerPool(registry, limits=settings.limits, datacenter=settings.datacenter)
        )
        dispatcher = await stack.enter_async_context(
            Dispatcher(
                jobs,
                objects,
                pool,
                work_root=work_root(settings),
                policy=policy,
                notify_policy=notify_policy,
                allow=ssrf_allow(settings),
                max_source_bytes=settings.limits.max_source_bytes,
                max_item_keys=jobs.options.max_item_keys,
                wake_path=dispatch_socket_path(settings),
            )
        )
        task = asyncio.create_task(dispatcher.run(), name="dispatcher")
        try:
            yield dispatcher
        finally:
            dispatcher.stop()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("the dispatcher failed: %r", task.exception())


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dora.scheduler.jobserve", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True, help="the installation's data directory")
    p.add_argument("--registry", required=True, help="registry HOST:PORT")
    p.add_argument("--config", type=Path, help="a dora.toml (default: <data-dir>/dora.toml)")
    p.add_argument("--lease-seconds", type=float, help="job lease length")
    p.add_argument("--heartbeat", type=float, help="seconds between lease renewals")
    p.add_argument("--poll", type=float, help="seconds between looks at empty queues")
    p.add_argument("--max-jobs", type=int, help="jobs running at once")
    return p


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    overrides = {
        name: value
        for name, value in (
            ("lease_seconds", args.lease_seconds),
            ("heartbeat_interval", args.heartbeat),
            ("poll_interval", args.poll),
            ("max_jobs", args.max_jobs),
        )
        if value is not None
    }
    policy = dataclasses.replace(dispatch_policy(settings), **overrides)
    host, _, port = str(args.registry).rpartition(":")
    async with (
        ConsulRegistry(host, int(port), settings.datacenter) as registry,
        running_dispatcher(settings, registry, policy=policy),
    ):
        print("READY", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -P -m dora.scheduler.jobserve``."""
    args = _arg_parser().parse_args(argv)
    setup_logging("jobs")  # DORA_LOG_LEVEL, DORA_LOG_FORMAT=text|json
    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
        uvloop.run(_serve(args, settings))
    except DoraError as exc:
        log.error("job service failed: %s", exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
