"""Running one RPC call on a worker: admission, source, thread, deadline, answer.

Admission happens on the event loop and is immediate: beyond
``Limits.max_inflight_per_worker`` calls in flight, or while the worker is
draining, a call is refused with ``503`` so the client can go elsewhere. An
admitted call is handed at once to a bounded thread pool (Pillow releases the
GIL in decode, resize and encode); the op chain never runs on the loop.

A call counts as in flight from admission until both its thread is done and
its answer is sent (or abandoned): a call that ran out of time still occupies
a thread, and an answer a slow client has not read yet still holds memory;
the bound and the load a worker reports must count both.

Out of time (the request's ``deadline``, capped at ``Limits.op_timeout`` from
arrival) the answer is ``599 "deadline exceeded"``: the op failed to finish,
and trying again elsewhere would not help.

Calls with audio/video stages (:mod:`dora.workers.avchain`) run in a thread
pool of their own, so that minutes of ffmpeg do not hold up image calls;
their deadline is capped by the job timeout instead (``Limits.job_timeout``,
else :data:`~dora.builtin_ops.av.JOB_TIMEOUT`), they report progress to a
sink given at admission, and each has a cancel event (:meth:`CallExecutor.cancel`)
that kills its ffmpeg, set as well when its deadline passes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dora.builtin_ops.runner import parse_wire_stages, run_chain
from dora.config import Limits
from dora.errors import (
    BadRequest,
    DoraError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProcessingFailed,
    ServiceUnavailable,
)
from dora.layout import WORK_DIR
from dora.ops import Output
from dora.resources import ResourceResolver
from dora.rpc import CallRequest, ErrorResponse, OkResponse, Source, error_response, ok_response
from dora.storage.confine import fd_within, path_within
from dora.workers.avchain import AvCall, ProgressSink, is_av_call, run_av_call

log = logging.getLogger(__name__)

ChainFn = Callable[[Sequence[Sequence[str]], bytes, Limits], Output]
"""Runs wire stages ``[[op, argtext], ...]`` on source bytes (in a thread)."""


def job_timeout(limits: Limits) -> float:
    """The longest an audio/video call may run."""
    return limits.job_timeout


def run_builtin_chain(wire: Sequence[Sequence[str]], src: bytes, limits: Limits) -> Output:
    """The chain without external resources: re-validate the stages, then run them."""
    return run_chain(parse_wire_stages(wire), src, limits)


def builtin_chain(resources: ResourceResolver) -> ChainFn:
    """The production chain: like :func:`run_builtin_chain`, with ``resources``
    (watermark images from buckets and allow-listed URLs)."""

    def run(wire: Sequence[Sequence[str]], src: bytes, limits: Limits) -> Output:
        return run_chain(parse_wire_stages(wire), src, limits, resources=resources)

    return run


def read_source_file(path: str, root: Path | None, max_bytes: int) -> bytes:
    """Read a path source, confined to ``root`` (resolved) and bounded by ``max_bytes``."""
    outside = f"source path {path!r} is outside the worker's data directory"
    try:
        with open(path, "rb") as handle:
            if root is not None and not fd_within(handle.fileno(), path, str(root)):
                raise Forbidden(outside)
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise PayloadTooLarge(f"source larger than {max_bytes} bytes")
            # One byte more than the file has: growth shows, and the buffer is no
            # larger than needed (a max_bytes buffer costs page faults on every call).
            data = handle.read(size + 1)
            if len(data) > size:  # it grew since the fstat: read the rest, bounded
                data += handle.read(max_bytes + 1 - len(data))
    except (FileNotFoundError, NotADirectoryError) as exc:
        if root is not None and not path_within(path, str(root)):
            raise Forbidden(outside) from exc
        raise NotFound(f"source path {path!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise BadRequest(f"source path {path!r} is a directory") from exc
    except OSError as exc:
        raise ProcessingFailed(f"cannot read source path {path!r}: {exc.strerror}") from exc
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"source larger than {max_bytes} bytes")
    return data


@dataclasses.dataclass(slots=True)
class Admitted:
    """A call handed to the thread pool; :meth:`CallExecutor.complete` answers it
    and :meth:`CallExecutor.release` ends it once the answer is sent."""

    call_id: int
    future: concurrent.futures.Future[Output]
    deadline: float  # unix time
    holds: int = 2  # its thread, and its answer; in flight until both let go
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    work_dir: Path | None = None  # an AV call's outputs


@dataclasses.dataclass(slots=True)
class CallCounters:
    """Totals since the worker started (for logs and metrics)."""

    admitted: int = 0
    refused_busy: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0


class CallExecutor:
    """Admits calls, runs them in threads, and turns results into answers."""

    def __init__(
        self,
        limits: Limits,
        *,
        threads: int = 2,
        chain: ChainFn = run_builtin_chain,
        source_root: Path | None = None,
        work_root: Path | None = None,
        av_threads: int | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("a worker needs at least one thread")
        self.limits = limits
        self.counters = CallCounters()
        self._chain = chain
        self._root = source_root.resolve() if source_root is not None else None
        if work_root is None:
            base = self._root if self._root is not None else Path(tempfile.gettempdir())
            work_root = base / WORK_DIR if self._root is not None else base / "dora-work"
        self.work_root = work_root.resolve()
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="dora-op")
        # ffmpeg runs in child processes; these threads only wait for them.
        self._av_pool = concurrent.futures.ThreadPoolExecutor(
            av_threads or threads, thread_name_prefix="dora-op-av"
        )
        self._inflight = 0
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def inflight(self) -> int:
        """Calls admitted whose thread is not done or whose answer is not sent."""
        return self._inflight

    def stop_accepting(self) -> None:
        """From now on every new call is refused with 503 (the worker drains)."""
        self._accepting = False

    def admit(
        self, req: CallRequest, progress: ProgressSink | None = None
    ) -> Admitted | ErrorResponse:
        """Refuse at once (busy, draining, bad source, late) or start the call.

        ``progress`` hears an AV call's progress (0-100), in its thread."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        now = time.time()
        if not self._accepting:
            return self._refuse(req, ServiceUnavailable("worker shutting down", retry_after=1))
        if self._inflight >= self.limits.max_inflight_per_worker:
            self.counters.refused_busy += 1
            return self._refuse(req, ServiceUnavailable("worker busy", retry_after=1))
        av = is_av_call(req["stages"])
        budget = job_timeout(self.limits) if av else self.limits.op_timeout
        deadline = min(req["deadline"], now + budget)
        if deadline <= now:
            return self._refuse(req, ProcessingFailed("deadline exceeded"))
        src = req["src"]
        if "url" in src:
            return self._refuse(req, BadRequest("url sources are not supported by builtin workers"))
        self._inflight += 1
        self.counters.admitted += 1
        cancel = threading.Event()
        future: concurrent.futures.Future[Output]
        work_dir: Path | None = None
        if av:
            work_dir = self.work_root / f"{os.getpid()}-{req['id']}-{secrets.token_hex(4)}"
            av_call = AvCall(work_dir, self.limits, deadline, cancel, progress, self._root)
            future = self._av_pool.submit(self._av_job, req["stages"], src, av_call)
        else:
            future = self._pool.submit(self._job, req["stages"], src, deadline)
        call = Admitted(req["id"], future, deadline, cancel=cancel, work_dir=work_dir)
        future.add_done_callback(lambda _: self._thread_done(call))
        return call

    def cancel(self, call: Admitted) -> None:
        """Ask a call to stop: an AV call's ffmpeg is killed (image calls run out)."""
        call.cancel.set()

    async def discard_output(self, call: Admitted) -> None:
        """Remove an AV call's outputs that nobody will collect (its client left)."""
        if call.work_dir is not None:
            await asyncio.to_thread(shutil.rmtree, call.work_dir, True)

    async def complete(self, call: Admitted) -> OkResponse | ErrorResponse:
        """Wait for the call's thread until its deadline and build the answer."""
        try:
            async with asyncio.timeout_at(self._loop_time_of(call.deadline)):
                output = await asyncio.wrap_future(call.future)
        except TimeoutError:
            call.cancel.set()  # an AV call's ffmpeg stops now rather than at its own deadline
            self.counters.timed_out += 1
            return self._failure(call.call_id, ProcessingFailed("deadline exceeded"))
        except DoraError as err:
            return self._failure(call.call_id, err)
        except Exception as exc:
            # An op broke its contract (only DoraErrors on purpose); the worker lives on.
            log.exception("call %d: unexpected error in op chain", call.call_id)
            return self._failure(call.call_id, ProcessingFailed(f"internal error: {exc!r}"))
        self.counters.succeeded += 1
        return ok_response(call.call_id, output, self._inflight)

    def shutdown(self) -> None:
        """Drop queued calls; running threads finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._av_pool.shutdown(wait=False, cancel_futures=True)

    def _av_job(self, stages: Sequence[Sequence[str]], src: Source, call: AvCall) -> Output:
        # Runs in an AV pool thread: waits for ffmpeg, may run image stages too.
        if time.time() >= call.deadline:
            raise ProcessingFailed("deadline exceeded")
        return run_av_call(stages, src, call, self._chain)

    def _job(self, stages: Sequence[Sequence[str]], src: Source, deadline: float) -> Output:
        # Runs in a pool thread: may block, may burn CPU.
        if time.time() >= deadline:
            raise ProcessingFailed("deadline exceeded")  # queued behind slower calls
        max_bytes = self.limits.max_source_bytes
        if "path" in src:
            data = read_source_file(src["path"], self._root, max_bytes)
        elif "bytes" in src:
            data = src["bytes"]
            if len(data) > max_bytes:
                raise PayloadTooLarge(f"source larger than {max_bytes} bytes")
        else:  # admission refuses url sources
            raise BadRequest("unsupported source")
        return self._chain(stages, data, self.limits)

    def release(self, call: Admitted) -> None:
        """The call's answer is sent (or will never be): let go of its slot."""
        call.holds -= 1
        if call.holds == 0:
            self._inflight -= 1

    def _thread_done(self, call: Admitted) -> None:
        # Called in the pool thread (or at shutdown): hop to the loop to count.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(self.release, call)

    def _loop_time_of(self, unix_deadline: float) -> float:
        assert self._loop is not None
        return self._loop.time() + (unix_deadline - time.time())

    def _refuse(self, req: CallRequest, err: DoraError) -> ErrorResponse:
        return error_response(req["id"], err, self._inflight)

    def _failure(self, call_id: int, err: DoraError) -> ErrorResponse:
        self.counters.failed += 1
        return error_response(call_id, err, self._inflight)
