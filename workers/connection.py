"""One persistent, multiplexed client connection to a worker.

Calls share the connection: each gets a fresh id and a future, a single
reader task resolves futures as answers arrive (in any order). When the
connection dies (EOF, reset, a broken frame), every pending call fails at once
with :class:`ConnectionLost`, which callers may retry on another worker: the
worker's ops are pure, so running a call twice is harmless.

A caller that stops waiting (cancelled, or out of time) tells the worker with
a ``cancel`` frame, so a long ffmpeg run does not go on for nobody; progress
messages of a call go to the callback given to :meth:`WorkerConnection.call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from dora.errors import ServiceUnavailable
from dora.rpc import CONNECTION_ID, ProtocolError, encode_frame, progress_value, read_frame

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float], None]


class ConnectionLost(ServiceUnavailable):
    """The worker went away (or never answered the connect); retry elsewhere."""

    default_message = "worker connection lost"


class WorkerConnection:
    """A multiplexed RPC connection; open with :meth:`open`, close with :meth:`aclose`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame_bytes: int,
        name: str = "",
    ) -> None:
        self.name = name or str(writer.get_extra_info("peername"))
        self.max_frame_bytes = max_frame_bytes
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._progress: dict[int, ProgressCallback] = {}
        self._lost: ConnectionLost | None = None
        self._read_task = asyncio.create_task(self._read_loop(), name=f"rpc-read-{self.name}")

    @classmethod
    async def open(
        cls, host: str, port: int, *, max_frame_bytes: int, connect_timeout: float, name: str = ""
    ) -> WorkerConnection:
        """Connect; :class:`ConnectionLost` when the worker cannot be reached in time."""
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to worker {host}:{port}: {exc!r}") from exc
        return cls(reader, writer, max_frame_bytes=max_frame_bytes, name=name or f"{host}:{port}")

    @property
    def closed(self) -> bool:
        """True once the connection can carry no more calls."""
        return self._lost is not None

    @property
    def pending(self) -> int:
        """Calls sent on this connection and not yet answered."""
        return len(self._pending)

    async def call(
        self,
        build: Callable[[int], Mapping[str, Any]],
        *,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Send ``build(id)`` and wait for the answer with that id.

        Bound the wait with ``asyncio.timeout`` around the call; a late answer
        is dropped, and the worker is told to cancel the call. Raises
        :class:`ConnectionLost` if the connection dies first, and
        :class:`~dora.rpc.FrameTooLarge` (a 413) if the request cannot be
        framed — then the connection stays usable. ``progress`` hears the
        call's progress messages (0-100), on the event loop.
        """
        if self._lost is not None:
            raise self._lost_error()
        call_id = next(self._ids)
        frame = encode_frame(build(call_id), self.max_frame_bytes)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        if progress is not None:
            self._progress[call_id] = progress
        sent = False
        try:
            # write() queues the whole frame at once, so a cancelled drain
            # cannot leave half a frame on the wire.
            self._writer.write(frame)
            sent = True
            await self._writer.drain()
            return await future
        except OSError as exc:
            self._fail(ConnectionLost(f"worker {self.name}: {exc!r}"))
            raise self._lost_error() from exc
        except asyncio.CancelledError:
            # Cancelling the task cancels ``future`` too: only an answer means done.
            answered = future.done() and not future.cancelled()
            if sent and not answered:
                self._send_cancel(call_id)
            raise
        finally:
            self._pending.pop(call_id, None)
            self._progress.pop(call_id, None)

    def _send_cancel(self, call_id: int) -> None:
        """Ask the worker to stop a call nobody waits for (best effort, no drain)."""
        if self._lost is not None or self._writer.is_closing():
            return
        try:
            self._writer.write(encode_frame({"id": call_id, "cancel": True}))
        except (OSError, RuntimeError) as exc:  # the transport is going away anyway
            log.debug("cannot send cancel of call %d to %s: %r", call_id, self.name, exc)

    def abort(self, reason: str = "connection closed") -> None:
        """Close now, failing pending calls; does not wait (see :meth:`aclose`)."""
        self._fail(ConnectionLost(f"worker {self.name}: {reason}"))

    async def aclose(self) -> None:
        """Close and wait for the reader to stop; closing twice is harmless."""
        self.abort()
        await asyncio.wait([self._read_task])
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _read_loop(self) -> None:
        reason = "worker closed the connection"
        try:
            while True:
                msg = await read_frame(self._reader, self.max_frame_bytes)
                if msg is None:
                    break
                call_id = msg.get("id")
                if call_id == CONNECTION_ID:
                    # The worker explains why it is about to hang up.
                    reason = f"worker closed the connection: {msg.get('error')}"
                    continue
                percent = progress_value(msg)
                if percent is not None:
                    self._report(call_id, percent)
                    continue  # progress is never the answer
                future = self._pending.get(call_id) if isinstance(call_id, int) else None
                if future is not None and not future.done():
                    future.set_result(msg)
        except ProtocolError as exc:
            reason = f"bad frame from worker: {exc.message}"
        except OSError as exc:
            reason = f"connection error: {exc!r}"
        finally:
            self._fail(ConnectionLost(f"worker {self.name}: {reason}"))

    def _report(self, call_id: Any, percent: float) -> None:
        callback = self._progress.get(call_id) if isinstance(call_id, int) else None
        if callback is None:
            return
        try:
            callback(percent)
        except Exception:  # a caller's bug must not take the connection down
            log.exception("progress callback of call %s failed", call_id)

    def _fail(self, err: ConnectionLost) -> None:
        if self._lost is None:
            self._lost = err
            self._writer.close()
            if self._read_task is not asyncio.current_task():
                self._read_task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._lost_error())

    def _lost_error(self) -> ConnectionLost:
        # A fresh exception per waiter: one instance raised in many tasks would
        # collect all their tracebacks.
        assert self._lost is not None
        return ConnectionLost(self._lost.message)
