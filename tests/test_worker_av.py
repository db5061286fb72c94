"""Audio/video calls on a real worker process: files in, files out, progress, cancel.

The worker is a real ``python -P -m dora.workers.server`` subprocess with a
data directory; the clip is made by ffmpeg's lavfi sources and every output
is read back by ffprobe or Pillow.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dora.errors import BadRequest, Forbidden, ProcessingFailed
from dora.rpc import encode_frame, make_call, output_from_response, read_frame
from dora.scheduler.jobtesting import ffmpeg_pids, ffprobe, make_clip
from dora.workers.connection import WorkerConnection
from dora.workers.testing import WorkerProcess

MiB = 1024 * 1024
SLOW = ("avthumb", "mp4/s/1920x1080")  # ~10 s of x264 work on the clip: long enough to cancel


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("worker-av")
    make_clip(base / "media" / "clip.mp4", seconds=4.0)
    (base / "media" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    return base


@pytest.fixture(scope="module")
def worker(data_dir: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(data_dir, env={"DORA_LOG_LEVEL": "WARNING"})
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


@pytest.fixture
async def conn(worker: WorkerProcess) -> AsyncIterator[WorkerConnection]:
    c = await WorkerConnection.open(
        "127.0.0.1", worker.port, max_frame_bytes=64 * MiB, connect_timeout=2.0
    )
    yield c
    await c.aclose()


async def call(
    conn: WorkerConnection,
    stages: Sequence[tuple[str, str]],
    src: str,
    *,
    within: float = 60.0,
    progress: list[float] | None = None,
) -> dict[str, Any]:
    deadline = time.time() + within
    async with asyncio.timeout(within + 5):
        return await conn.call(
            lambda cid: make_call(cid, stages, src, deadline, progress=progress is not None),
            progress=progress.append if progress is not None else None,
        )


async def wait_until(predicate: Any, within: float, what: str) -> None:
    give_up = time.monotonic() + within
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


async def test_avthumb_writes_a_file_in_the_work_dir_and_reports_progress(
    conn: WorkerConnection, data_dir: Path
) -> None:
    heard: list[float] = []
    reply = await call(
        conn, [("avthumb", "mp4/s/320x240")], str(data_dir / "media" / "clip.mp4"), progress=heard
    )
    out = output_from_response(reply)
    assert out.mime == "video/mp4"
    assert out.path is not None
    work = Path(out.path).parent.parent
    assert work.parent == (data_dir / "tmp" / "work").resolve()
    info = ffprobe(out.path)
    kinds = sorted(s["codec_type"] for s in info["streams"])
    assert kinds == ["audio", "video"]
    assert abs(float(info["format"]["duration"]) - 4.0) < 0.3
    assert out.meta["files"] == [Path(out.path).name]
    # Progress frames arrived before the answer, in order, ending at 100.
    assert heard
    assert heard == sorted(heard)
    assert heard[-1] == 100.0


async def test_a_frame_then_image_stages_run_in_one_call(
    conn: WorkerConnection, data_dir: Path
) -> None:
    reply = await call(
        conn,
        [("vframe", "jpg/offset/1"), ("imageView2", "2/w/100")],
        str(data_dir / "media" / "clip.mp4"),
    )
    out = output_from_response(reply)
    assert out.body is not None
    with Image.open(io.BytesIO(out.body)) as img:
        assert img.format == "JPEG"
        assert img.size == (100, 75)
    # A transcode then a frame of its output: the file passes from stage to stage.
    reply = await call(
        conn,
        [("avthumb", "mp4/s/160x120"), ("vframe", "png/offset/0.5")],
        str(data_dir / "media" / "clip.mp4"),
    )
    out = output_from_response(reply)
    assert out.mime == "image/png"
    assert out.body is not None
    with Image.open(io.BytesIO(out.body)) as img:
        assert img.size == (160, 120)
    # Answers in bytes leave no work directory behind.
    work = data_dir / "tmp" / "work"
    leftovers = [p for p in work.iterdir() if not any(p.rglob("avthumb.mp4"))]
    assert leftovers == []


async def test_sources_outside_the_data_dir_are_refused(
    conn: WorkerConnection, tmp_path: Path
) -> None:
    outside = make_clip(tmp_path / "outside.mp4", seconds=1.0)
    with pytest.raises(Forbidden, match="outside the worker's data directory"):
        output_from_response(await call(conn, [("avinfo", "")], str(outside)))


async def test_a_corrupt_video_is_a_400_with_ffmpegs_reason_and_the_worker_lives(
    conn: WorkerConnection, data_dir: Path, worker: WorkerProcess
) -> None:
    corrupt = str(data_dir / "media" / "corrupt.mp4")
    with pytest.raises(BadRequest) as caught:
        output_from_response(await call(conn, [("avthumb", "mp4")], corrupt))
    message = caught.value.message
    assert "invalid media" in message
    assert str(data_dir) not in message  # the worker's paths never leak
    assert len(message) < 600
    assert worker.alive
    reply = await call(conn, [("avinfo", "")], str(data_dir / "media" / "clip.mp4"))
    assert b'"format"' in (output_from_response(reply).body or b"")


async def test_cancelling_a_call_kills_its_ffmpeg(conn: WorkerConnection, data_dir: Path) -> None:
    source = str(data_dir / "media" / "clip.mp4")
    heard: list[float] = []
    task = asyncio.create_task(call(conn, [SLOW], source, progress=heard))
    await wait_until(lambda: ffmpeg_pids(source) and heard, 20, "ffmpeg running with progress")
    task.cancel()  # the connection sends {id, cancel: True}
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: not ffmpeg_pids(source), 5, "ffmpeg killed")
    # The connection and the worker go on.
    reply = await call(conn, [("avinfo", "")], source)
    assert output_from_response(reply).mime == "application/json"


async def test_a_closed_connection_cancels_its_calls(worker: WorkerProcess, data_dir: Path) -> None:
    source = str(data_dir / "media" / "clip.mp4")
    _, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(encode_frame(make_call(1, [SLOW], source, time.time() + 60)))
    await writer.drain()
    await wait_until(lambda: ffmpeg_pids(source), 20, "ffmpeg running")
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: not ffmpeg_pids(source), 5, "ffmpeg killed")
    assert worker.alive


async def test_an_av_call_past_its_deadline_is_599_and_ffmpeg_stops(
    worker: WorkerProcess, data_dir: Path
) -> None:
    source = str(data_dir / "media" / "clip.mp4")
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    try:
        writer.write(encode_frame(make_call(7, [SLOW], source, time.time() + 1.5)))
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await read_frame(reader, 64 * MiB)
        assert answer is not None
        with pytest.raises(ProcessingFailed, match=r"deadline exceeded|timed out"):
            output_from_response(answer)
        await wait_until(lambda: not ffmpeg_pids(source), 5, "ffmpeg killed")
    finally:
        writer.close()
        await writer.wait_closed()
