"""The builtin worker process: an RPC server around the builtin op chain.

``python -P -m dora.workers.server --host 127.0.0.1 --port 0 --registry
127.0.0.1:8500 --datacenter dc1 --threads 2 --data-dir DIR`` listens on the
host network, registers as service ``dora-builtin`` with a TTL check, and
prints ``READY <port>`` on stdout once it is listening and registered.

Each TCP connection is persistent and carries many calls at once (see
:mod:`dora.rpc`); answers go back as calls finish, matched by id. A malformed
or oversized frame closes that connection (after an ``id: 0`` error answer
when it can), never the worker. A ``cancel`` frame, or the connection
closing, cancels its calls (an audio/video call's ffmpeg is killed); calls
that ask for it get ``progress`` frames while they run. SIGTERM or SIGINT drains: the check fails so
clients look elsewhere, new calls get 503, calls in flight finish (for at most
``shutdown_grace`` seconds), then the instance deregisters and the process
exits.

Every call is counted, timed and logged in one line with the ``reqid`` the
client sent (:mod:`dora.workers.metrics`); logs go to stderr as
``DORA_LOG_FORMAT`` says (:mod:`dora.logs`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import uvloop

from dora.builtin_ops.resolver import DoraResolver
from dora.config import Limits, Settings, load_settings
from dora.errors import DoraError, ProcessingFailed
from dora.logs import setup_logging
from dora.registry import Instance
from dora.rpc import (
    CONNECTION_ID,
    ErrorResponse,
    FrameTooLarge,
    OkResponse,
    PongResponse,
    ProgressMessage,
    ProtocolError,
    Response,
    encode_frame,
    error_response,
    parse_request,
    read_frame,
)
from dora.workers.announce import Announcer
from dora.workers.calls import Admitted, CallExecutor, builtin_chain
from dora.workers.debug_ops import debug_ops_enabled, with_debug_ops
from dora.workers.memory import tune_malloc
from dora.workers.metrics import CallObserver, CallRecord
from dora.workers.registry import ConsulRegistry

log = logging.getLogger(__name__)

SERVICE = "dora-builtin"
PROGRESS_STEP = 1.0  # percentage points worth a progress frame at once
PROGRESS_EVERY = 0.5  # seconds after which any change is worth one


class WorkerServer:
    """Serves RPC calls on TCP; an async context manager that drains on exit."""

    def __init__(
        self, executor: CallExecutor, *, grace: float = 10.0, observer: CallObserver | None = None
    ) -> None:
        self.executor = executor
        self.observer = observer  # counts and logs each call (None: not observed)
        self.limits: Limits = executor.limits
        self._grace = grace
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._call_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port); return the port."""
        if self._closed:
            raise RuntimeError("a closed WorkerServer cannot start again")
        self._server = await asyncio.start_server(self._accept, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain(self._grace)
        await self.close()

    async def drain(self, grace: float) -> None:
        """Stop accepting; wait up to ``grace`` seconds for calls in flight to answer."""
        self.executor.stop_accepting()
        if self._server is not None:
            self._server.close()
        if self._call_tasks:
            await asyncio.wait(set(self._call_tasks), timeout=grace)

    async def close(self) -> None:
        """Cancel what is left, close every connection; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self.executor.stop_accepting()
        for task in (*self._call_tasks, *self._conn_tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()
        pending = {*self._call_tasks, *self._conn_tasks}
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.executor.shutdown()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            if not self._closed:
                raise
            # Our own shutdown cancelled it: end quietly. (Python 3.11's start_server
            # callback would log a cancelled connection task as an unhandled error.)
        finally:
            self._writers.discard(writer)
            self._conn_tasks.discard(task)
            writer.close()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        calls: dict[int, Admitted] = {}  # this connection's calls in flight, by id
        try:
            await self._read_calls(reader, writer, calls, peer)
        finally:
            # The client is gone or broke the protocol: nobody waits for these.
            for call in calls.values():
                self.executor.cancel(call)

    async def _read_calls(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        calls: dict[int, Admitted],
        peer: object,
    ) -> None:
        while True:
            try:
                msg = await read_frame(reader, self.limits.max_rpc_frame_bytes)
            except FrameTooLarge as exc:
                log.warning("closing connection from %s: %s", peer, exc.message)
                await self._send(writer, error_response(CONNECTION_ID, exc, self._load()))
                return
            except (ProtocolError, OSError) as exc:
                log.warning("closing connection from %s: %s", peer, exc)
                return
            if msg is None:
                return
            try:
                req = parse_request(msg)
            except ProtocolError as exc:
                log.warning("closing connection from %s: %s", peer, exc.message)
                await self._send(writer, error_response(CONNECTION_ID, exc, self._load()))
                return
            if "ping" in req:
                pong = PongResponse(id=req["id"], ok=True, pong=True, load=self._load())
                await self._send(writer, pong)
                continue
            if "cancel" in req:
                running = calls.get(req["id"])
                if running is not None:
                    self.executor.cancel(running)
                continue
            sink = self._progress_sink(req["id"], writer) if req.get("progress") else None
            record = self.observer.begin(req) if self.observer is not None else None
            admitted = self.executor.admit(req, sink)
            if isinstance(admitted, Admitted):
                calls[admitted.call_id] = admitted
                self._spawn_call(admitted, writer, calls, record)
            else:
                if self.observer is not None and record is not None:
                    self.observer.end(record, admitted)
                # Refusals are answered inline: a client flooding a busy worker
                # is slowed by its own unread answers (TCP backpressure).
                await self._send(writer, admitted)

    def _spawn_call(
        self,
        call: Admitted,
        writer: asyncio.StreamWriter,
        calls: dict[int, Admitted],
        record: CallRecord | None = None,
    ) -> None:
        task = asyncio.create_task(
            self._answer(call, writer, calls, record), name=f"call-{call.call_id}"
        )
        self._call_tasks.add(task)
        task.add_done_callback(self._call_tasks.discard)

    async def _answer(
        self,
        call: Admitted,
        writer: asyncio.StreamWriter,
        calls: dict[int, Admitted],
        record: CallRecord | None = None,
    ) -> None:
        response: OkResponse | ErrorResponse | None = None
        try:
            response = await self.executor.complete(call)
            if "path" in response and (writer.is_closing() or call.cancel.is_set()):
                await self.executor.discard_output(call)  # nobody will collect the files
            await self._send(writer, response)
        finally:
            calls.pop(call.call_id, None)
            self.executor.release(call)
            if self.observer is not None and record is not None:
                self.observer.end(record, response)  # None: cancelled before its answer

    def _progress_sink(self, call_id: int, writer: asyncio.StreamWriter) -> Callable[[float], None]:
        """A thread-safe sink sending a call's progress, thinned to what is news."""
        loop = asyncio.get_running_loop()
        last = [-PROGRESS_STEP, 0.0]  # percent and monotonic time of the last frame

        def sink(percent: float) -> None:
            now = time.monotonic()
            moved = percent - last[0]
            if moved == 0 or (abs(moved) < PROGRESS_STEP and now - last[1] < PROGRESS_EVERY):
                return
            last[0], last[1] = percent, now
            msg = ProgressMessage(id=call_id, progress=round(percent, 2))
            with contextlib.suppress(RuntimeError):  # the loop closed: the worker is exiting
                loop.call_soon_threadsafe(self._send_now, writer, msg)

        return sink

    def _send_now(self, writer: asyncio.StreamWriter, msg: ProgressMessage) -> None:
        # Small and thinned out: written without waiting for the buffer to drain.
        if not writer.is_closing():
            writer.write(encode_frame(msg, self.limits.max_rpc_frame_bytes))

    async def _send(self, writer: asyncio.StreamWriter, msg: Response) -> None:
        """Write one answer; one that cannot be framed becomes an error answer."""
        max_bytes = self.limits.max_rpc_frame_bytes
        try:
            frame = encode_frame(msg, max_bytes)
        except DoraError as exc:  # result over the frame limit, or meta msgpack cannot carry
            err: DoraError = exc
            if not isinstance(exc, FrameTooLarge):
                err = ProcessingFailed(f"cannot send result: {exc.message}")
            frame = encode_frame(error_response(msg["id"], err, self._load()), max_bytes)
        if writer.is_closing():
            return  # the client left; its answer has nowhere to go
        writer.write(frame)
        with contextlib.suppress(OSError):
            await writer.drain()

    def _load(self) -> int:
        return self.executor.inflight


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dora.workers.server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: pick a free one)")
    p.add_argument("--advertise", help="address to register (default: --host)")
    p.add_argument(
        "--registry", type=_parse_hostport, help="registry HOST:PORT (none: no registration)"
    )
    p.add_argument("--datacenter", help="data centre to register in (default: from settings)")
    p.add_argument("--threads", type=int, default=2, help="op threads (default 2)")
    p.add_argument("--data-dir", type=Path, help="data directory; path sources must lie inside")
    p.add_argument("--config", type=Path, help="a dora.toml (default: <data-dir>/dora.toml)")
    p.add_argument("--instance-id", help="registry id (default: dora-builtin-<host>-<port>-<pid>)")
    return p


async def serve(args: argparse.Namespace, settings: Settings) -> None:
    """Run one worker until SIGTERM or SIGINT, then drain and deregister."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    production = builtin_chain(DoraResolver.from_settings(settings))
    observer = CallObserver()
    chain = observer.wrap_chain(with_debug_ops(production) if debug_ops_enabled() else production)
    executor = CallExecutor(
        settings.limits, threads=args.threads, chain=chain, source_root=settings.data_dir
    )  # AV calls write under <data dir>/tmp/work
    async with WorkerServer(executor, grace=settings.shutdown_grace, observer=observer) as server:
        port = await server.start(args.host, args.port)
        address = args.advertise or args.host
        instance_id = args.instance_id or f"{SERVICE}-{address}-{port}-{os.getpid()}"
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(observer.gauges(instance_id, lambda: executor.inflight))
            announcer: Announcer | None = None
            if args.registry is not None:
                datacenter = args.datacenter or settings.datacenter
                registry_host, registry_port = args.registry
                registry = ConsulRegistry(registry_host, registry_port, datacenter=datacenter)
                await stack.enter_async_context(registry)
                instance = Instance(
                    id=instance_id,
                    service=SERVICE,
                    address=address,
                    port=port,
                    datacenter=datacenter,
                    tags=("builtin",),
                    meta={"pid": str(os.getpid()), "threads": str(args.threads)},
                )
                announcer = Announcer(registry, instance, lambda: float(executor.inflight))
                await stack.enter_async_context(announcer)
            print(f"READY {port}", flush=True)
            log.info("worker listening on %s:%d", args.host, port)
            await stop.wait()
            log.info("draining (at most %.1fs)", settings.shutdown_grace)
            if announcer is not None:
                await announcer.draining()
            await server.drain(settings.shutdown_grace)
            log.info("drained; %s", executor.counters)
            # Leaving the stack deregisters, then the server closes.


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -P -m dora.workers.server``."""
    args = _arg_parser().parse_args(argv)
    setup_logging("worker")  # DORA_LOG_LEVEL, DORA_LOG_FORMAT=text|json
    tune_malloc()  # image buffers stay in the heap between calls (dora.workers.memory)
    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
        uvloop.run(serve(args, settings))
    except DoraError as exc:
        log.error("worker failed: %s", exc.message)
        return 1
    # An op thread cannot be interrupted; one still running past the drain
    # would keep the interpreter alive at exit, so leave without waiting.
    if any(t.name.startswith("dora-op") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
