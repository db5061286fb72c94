"""The builtin worker process over real TCP: calls, errors, limits, draining.

Each worker here is a real ``python -P -m dora.workers.server`` subprocess,
called through :class:`dora.workers.connection.WorkerConnection` or a raw
socket; images are real JPEGs decoded by Pillow.
"""

from __future__ import annotations

import asyncio
import io
import signal
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dora.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, ProcessingFailed
from dora.rpc import encode_frame, make_call, output_from_response, read_frame
from dora.workers.connection import ConnectionLost, WorkerConnection
from dora.workers.testing import WorkerProcess, sample_jpeg

MiB = 1024 * 1024
JPEG = sample_jpeg(640, 480)
SHARED_ENV = {"DORA_MAX_RPC_FRAME_BYTES": str(4 * MiB), "DORA_MAX_SOURCE_BYTES": str(2 * MiB)}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for the tests that neither change its settings nor stop it."""
    proc = WorkerProcess(tmp_path_factory.mktemp("worker-data"), env=SHARED_ENV)
    try:
        proc.start()
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(15) == 0
    finally:
        proc.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Make extra workers for one test; they are killed after it."""
    made: list[WorkerProcess] = []

    def make(**kwargs: Any) -> WorkerProcess:
        made.append(WorkerProcess(tmp_path, **kwargs))
        return made[-1]

    yield make
    for proc in made:
        proc.close()


async def connect(port: int) -> WorkerConnection:
    return await WorkerConnection.open(
        "127.0.0.1", port, max_frame_bytes=8 * MiB, connect_timeout=2.0
    )


@pytest.fixture
async def conn(worker: WorkerProcess) -> AsyncIterator[WorkerConnection]:
    c = await connect(worker.port)
    yield c
    await c.aclose()


async def call(
    conn: WorkerConnection,
    stages: Sequence[tuple[str, str]],
    src: bytes | str = JPEG,
    within: float = 10.0,
) -> dict[str, Any]:
    deadline = time.time() + within
    async with asyncio.timeout(within + 2.0):
        return await conn.call(lambda cid: make_call(cid, stages, src, deadline))


async def ping(conn: WorkerConnection) -> dict[str, Any]:
    async with asyncio.timeout(5.0):
        return await conn.call(lambda cid: {"id": cid, "ping": True})


def image_size(body: bytes | None) -> tuple[int, int]:
    assert body is not None
    with Image.open(io.BytesIO(body)) as img:
        assert img.format == "JPEG"
        return img.size


async def test_imageview2_on_a_real_jpeg(conn: WorkerConnection) -> None:
    reply = await call(conn, [("imageView2", "2/w/100/h/100")])
    out = output_from_response(reply)
    assert out.mime == "image/jpeg"
    assert image_size(out.body) == (100, 75)
    assert reply["load"] >= 0


async def test_many_calls_in_flight_on_one_connection_answer_by_id(conn: WorkerConnection) -> None:
    widths = list(range(40, 72))
    replies = await asyncio.gather(*(call(conn, [("imageView2", f"2/w/{w}")]) for w in widths))
    for width, reply in zip(widths, replies, strict=True):
        assert image_size(output_from_response(reply).body)[0] == width

    # A slow call sent first is answered after a quick one sent second.
    finished: list[str] = []

    async def tagged(tag: str, stages: list[tuple[str, str]]) -> None:
        output_from_response(await call(conn, stages))
        finished.append(tag)

    slow = asyncio.create_task(tagged("slow", [("debug-sleep", "0.6"), ("imageView2", "2/w/50")]))
    await asyncio.sleep(0.05)
    await tagged("quick", [("imageView2", "2/w/60")])
    await slow
    assert finished == ["quick", "slow"]


async def test_corrupt_image_is_400_and_the_next_call_works(conn: WorkerConnection) -> None:
    for junk in (b"not an image at all", JPEG[: len(JPEG) // 3]):
        with pytest.raises(BadRequest):
            output_from_response(await call(conn, [("imageView2", "2/w/100")], junk))
    assert (
        image_size(output_from_response(await call(conn, [("imageView2", "2/w/90")])).body)[0] == 90
    )


async def test_bad_arguments_are_rechecked_by_the_worker(conn: WorkerConnection) -> None:
    with pytest.raises(BadRequest):
        output_from_response(await call(conn, [("imageView2", "9/w/100")]))
    with pytest.raises(BadRequest):
        output_from_response(await call(conn, [("noSuchOp", "1")]))


async def test_a_broken_op_is_599_and_the_worker_lives_on(
    worker: WorkerProcess, conn: WorkerConnection
) -> None:
    with pytest.raises(ProcessingFailed):
        output_from_response(await call(conn, [("debug-raise", "kaboom")]))
    assert (await ping(conn))["pong"] is True
    assert worker.alive


async def test_a_call_past_its_deadline_is_599(conn: WorkerConnection) -> None:
    started = time.monotonic()
    reply = await call(conn, [("debug-sleep", "3")], within=0.3)
    assert time.monotonic() - started < 2.5  # answered at the deadline, not after the op
    assert reply["ok"] is False
    assert (reply["code"], reply["error"]) == (599, "deadline exceeded")
    late = await call(conn, [("imageView2", "2/w/10")], within=-1.0)  # already late
    assert (late["code"], late["error"]) == (599, "deadline exceeded")


async def test_sources_by_path_are_confined_and_bounded(
    worker: WorkerProcess, conn: WorkerConnection, tmp_path: Path
) -> None:
    data_dir = worker.data_dir
    inside = data_dir / "cat.jpg"
    inside.write_bytes(JPEG)
    out = output_from_response(await call(conn, [("imageView2", "2/w/64")], str(inside)))
    assert image_size(out.body)[0] == 64
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(JPEG)
    with pytest.raises(Forbidden):
        output_from_response(await call(conn, [("imageView2", "2/w/64")], str(outside)))
    with pytest.raises(Forbidden):  # no escaping through ..
        escape = str(data_dir / ".." / outside.parent.name / outside.name)
        output_from_response(await call(conn, [("imageView2", "2/w/64")], escape))
    link = data_dir / "link.jpg"  # inside by name, outside in fact
    link.symlink_to(outside)
    with pytest.raises(Forbidden):
        output_from_response(await call(conn, [("imageView2", "2/w/64")], str(link)))
    with pytest.raises(Forbidden):  # missing and outside: refused, not "not found"
        output_from_response(await call(conn, [("imageView2", "2/w/64")], str(outside) + ".x"))
    with pytest.raises(NotFound):
        output_from_response(await call(conn, [("imageView2", "2/w/64")], str(inside) + ".gone"))
    big = data_dir / "big.bin"
    big.write_bytes(b"\0" * (2 * MiB + 1))
    with pytest.raises(PayloadTooLarge):
        output_from_response(await call(conn, [("imageView2", "2/w/64")], str(big)))


async def test_oversized_bytes_source_and_url_source_are_refused(conn: WorkerConnection) -> None:
    with pytest.raises(PayloadTooLarge):
        output_from_response(await call(conn, [("imageView2", "2/w/64")], b"\xff" * (2 * MiB + 1)))
    url_call = {"id": 0, "stages": [], "src": {"url": "http://example.com/a.jpg"}}
    reply = await conn.call(lambda cid: {**url_call, "id": cid, "deadline": time.time() + 5})
    assert (reply["ok"], reply["code"]) == (False, 400)


async def test_a_frame_over_the_limit_closes_that_connection_only(
    worker: WorkerProcess, conn: WorkerConnection
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(struct.pack(">I", 8 * MiB))  # declares more than the worker's 4 MiB
    await writer.drain()
    async with asyncio.timeout(5):
        notice = await read_frame(reader, MiB)
        assert notice is not None
        assert (notice["id"], notice["ok"], notice["code"]) == (0, False, 413)
        assert await read_frame(reader, MiB) is None  # then the worker hangs up
    writer.close()
    assert (await ping(conn))["pong"] is True  # other connections are untouched
    fresh = await connect(worker.port)
    assert (await ping(fresh))["pong"] is True
    await fresh.aclose()


async def test_a_malformed_message_closes_the_connection(worker: WorkerProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(encode_frame({"id": 5, "stages": "imageView2/2", "src": {}, "deadline": 0}))
    async with asyncio.timeout(5):
        notice = await read_frame(reader, MiB)
        assert notice is not None
        assert (notice["id"], notice["code"]) == (0, 502)
        assert await read_frame(reader, MiB) is None
    writer.close()
    assert worker.alive


async def test_calls_beyond_the_inflight_bound_are_503_at_once(
    spawn: Callable[..., WorkerProcess],
) -> None:
    port = await spawn(env={"DORA_MAX_INFLIGHT_PER_WORKER": "2"}).astart()
    c = await connect(port)
    held = [asyncio.create_task(call(c, [("debug-sleep", "1.5")], b"x")) for _ in range(2)]
    await asyncio.sleep(0.2)
    assert (await ping(c))["load"] == 2
    started = time.monotonic()
    busy = await call(c, [("imageView2", "2/w/10")])
    assert time.monotonic() - started < 1.0  # refused at once, not queued behind the others
    assert (busy["ok"], busy["code"], busy["error"]) == (False, 503, "worker busy")
    for reply in await asyncio.gather(*held):
        assert output_from_response(reply).body == b"x"
    assert output_from_response(await call(c, [("imageView2", "2/w/10")])).mime == "image/jpeg"
    await c.aclose()


async def test_sigterm_drains_calls_in_flight_then_exits(
    spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    proc = spawn(log_file=tmp_path / "worker.log")
    port = await proc.astart()
    c = await connect(port)
    slow = asyncio.create_task(call(c, [("debug-sleep", "2.0"), ("imageView2", "2/w/30")]))
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(1.5):  # the signal lands soon; from then on, new calls are 503
        while (refused := await call(c, [("imageView2", "2/w/10")]))["ok"]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert (refused["code"], refused["error"]) == (503, "worker shutting down")
    assert not slow.done()
    assert image_size(output_from_response(await slow).body)[0] == 30
    assert await proc.astop() == 0
    with pytest.raises(ConnectionLost):
        await ping(c)
    await c.aclose()
    log = (tmp_path / "worker.log").read_text()
    assert "drained" in log
    assert " ERROR " not in log and "Traceback" not in log  # a quiet, orderly exit


async def test_debug_ops_are_absent_unless_enabled(
    spawn: Callable[..., WorkerProcess],
) -> None:
    port = await spawn(debug_ops=False).astart()
    c = await connect(port)
    with pytest.raises(BadRequest):
        output_from_response(await call(c, [("debug-sleep", "0")], b"x"))
    await c.aclose()
