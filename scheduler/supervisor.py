"""``dora serve``: the embedded, one-machine layout of the whole platform.

One supervisor process runs the embedded registry and the scheduler with a
``LocalProvider``; the scheduler launches one builtin worker per core and the
gateway process(es), which share the port. The job dispatcher runs in the
supervisor too (:mod:`dora.scheduler.jobserve`). Shutdown runs in reverse:
the dispatcher gives its running jobs back, the gateways drain, then the
workers, then the registry stops.

Every process writes its metrics into ``<data_dir>/tmp/metrics``, emptied at
start, which any gateway's ``/metrics`` merges; the supervisor copies the
scheduler's restarts into it and sweeps dead processes' files
(:mod:`dora.metrics`, :mod:`dora.scheduler.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from dora.config import Limits, Settings
from dora.keys import ensure_keys
from dora.layout import SERVE_STATE as STATE_FILE
from dora.metrics import metrics_dir, metrics_env, reset_metrics_dir
from dora.scheduler.core import Scheduler, ServiceSpec
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.scheduler.jobserve import running_dispatcher
from dora.scheduler.local import LocalProvider
from dora.scheduler.metrics import MetricsKeeper
from dora.scheduler.provider import Resources
from dora.workers.registry import ConsulRegistry

log = logging.getLogger("dora.serve")

WORKER_SERVICE = "dora-builtin"
GATEWAY_SERVICE = "dora-gateway"
STARTUP_TIMEOUT = 60.0


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``DORA_*`` variables, so child processes load the same."""
    env: dict[str, str] = {}
    for field in dataclasses.fields(Settings):
        if field.name == "limits":
            continue
        value = getattr(settings, field.name)
        env[f"DORA_{field.name.upper()}"] = str(int(value) if isinstance(value, bool) else value)
    for field in dataclasses.fields(Limits):
        env[f"DORA_{field.name.upper()}"] = str(getattr(settings.limits, field.name))
    env["DORA_DATA_DIR"] = str(settings.data_dir.resolve())
    return env


def _python_module(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-P", "-m", module, *args)


def build_services(settings: Settings, registry_port: int) -> list[ServiceSpec]:
    registry = f"{settings.registry_host}:{registry_port}"
    env = {**settings_env(settings), **metrics_env(settings.data_dir)}
    data_dir = str(settings.data_dir.resolve())

    def worker_command(task_id: str) -> tuple[str, ...]:
        return _python_module(
            "dora.workers.server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--registry",
            registry,
            "--datacenter",
            settings.datacenter,
            "--data-dir",
            data_dir,
            "--instance-id",
            task_id,
        )

    def gateway_command(task_id: str) -> tuple[str, ...]:
        args = [
            "--data-dir",
            data_dir,
            "--host",
            settings.host,
            "--port",
            str(settings.port),
            "--registry",
            registry,
        ]
        if settings.gateways > 1:
            args.append("--reuse-port")
        return _python_module("dora.gateway.main", *args)

    return [
        ServiceSpec(
            WORKER_SERVICE, worker_command, Resources(1.0, 512.0), settings.worker_count(), env=env
        ),
        ServiceSpec(
            GATEWAY_SERVICE,
            gateway_command,
            Resources(0.25, 256.0),
            max(1, settings.gateways),
            env=env,
            registered=False,
        ),
    ]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"dora serve: cannot listen on {host}:{port}: {exc.strerror}") from exc


@contextlib.asynccontextmanager
async def running_platform(settings: Settings) -> AsyncIterator[Scheduler]:
    """Start registry, scheduler, workers and gateways; stop them in reverse."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_keys(settings.data_dir)
    _check_port_free(settings.host, settings.port)
    reset_metrics_dir(metrics_dir(settings.data_dir))  # a previous run's files
    registry_server = EmbeddedRegistry(datacenter=settings.datacenter)
    registry_port = await registry_server.start(settings.registry_host, settings.registry_port)
    try:
        async with ConsulRegistry(
            settings.registry_host, registry_port, settings.datacenter
        ) as registry:
            services = build_services(settings, registry_port)
            need = sum(s.resources.cpus * s.instances for s in services)
            provider = LocalProvider(
                cpus=max(float(os.cpu_count() or 1), need),
                datacenter=settings.datacenter,
                kill_grace=settings.shutdown_grace + 5,
            )
            scheduler = Scheduler(provider, registry, services)
            loop_task = asyncio.create_task(scheduler.run(), name="scheduler")
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT):
                    await scheduler.wait_running(WORKER_SERVICE, 1)
                    await scheduler.wait_running(GATEWAY_SERVICE, 1)
                async with (
                    running_dispatcher(settings, registry) as dispatcher,
                    MetricsKeeper(scheduler, [dispatcher.ctx.processor]),
                ):
                    _write_state(settings, registry_port)
                    yield scheduler
            finally:
                await scheduler.shutdown([GATEWAY_SERVICE, WORKER_SERVICE])
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
                await provider.close()
                (settings.data_dir / STATE_FILE).unlink(missing_ok=True)
    finally:
        await registry_server.stop()


def _write_state(settings: Settings, registry_port: int) -> None:
    state = {
        "pid": os.getpid(),
        "url": f"http://{settings.host}:{settings.port}",
        "registry": f"{settings.registry_host}:{registry_port}",
    }
    tmp = settings.data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(settings.data_dir / STATE_FILE)


def read_state(data_dir: Path) -> dict[str, str] | None:
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


async def serve(settings: Settings, announce: Callable[[str], None] = print) -> None:
    """Run until SIGINT or SIGTERM, then shut down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_platform(settings) as scheduler:
        workers = scheduler.running(WORKER_SERVICE)
        announce(
            f"Dora serving on http://{settings.host}:{settings.port} "
            f"({workers} workers, data in {settings.data_dir})"
        )
        await stop.wait()
        announce("Dora shutting down")
