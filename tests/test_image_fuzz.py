"""A fuzz pass through the full worker path: corrupted images of every format.

A real worker process (``python -P -m dora.workers.server``) is called over
its RPC connection with ~200 seeded corruptions (flipped bytes, cuts,
insertions, zeroed runs, repeated slices) of valid images of each format.
Every call must answer in bounded time with a 200 or a 4xx, never a 5xx, a
hang or a dead worker; afterwards the worker still answers a normal call.
Huge but legal inputs finish within the op time, or fail with a clean 599
when their deadline is shorter, and the worker lives on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from data import make_data
from PIL import Image

from dora.builtin_ops import formats
from dora.rpc import make_call, output_from_response
from dora.workers.connection import WorkerConnection
from dora.workers.testing import WorkerProcess

MiB = 1024 * 1024
SEED = 20240601
CASES_PER_IMAGE = 17
CALL_WITHIN = 10.0  # seconds a fuzzed call may take, far more than any needs
CONCURRENCY = 6
FUZZ_ENV = {
    # corrupted headers that claim large sizes are refused from the header, quickly
    "DORA_MAX_SOURCE_PIXELS": str(4_000_000),
    "DORA_MAX_SOURCE_BYTES": str(2 * MiB),
}
FOPS = (
    "imageView2/2/w/48",
    "imageView2/1/w/32/h/32/format/png",
    "imageView2/2/w/40/format/webp",
    "imageView2/2/w/40/format/gif",
    "imageView2/0/w/64/format/jpg/interlace/1",
    "imageInfo",
)


def save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def valid_images() -> dict[str, bytes]:
    """A valid image of every format and flavour the chain reads."""
    photo = make_data.quadrants(96, 72)
    fractal = Image.effect_mandelbrot((96, 72), (-2.0, -1.2, 1.0, 1.2), 40)
    photo = Image.blend(photo, Image.merge("RGB", (fractal,) * 3), 0.4)
    frames = make_data.moving_box_frames(5, (48, 36))
    data = Path(__file__).parent / "data"
    images = {
        "jpeg": save(photo, "JPEG", quality=80),
        "jpeg-progressive": save(photo, "JPEG", quality=80, progressive=True),
        "jpeg-cmyk-icc": (data / "cmyk-icc.jpg").read_bytes(),
        "jpeg-exif": (data / "orientation-6.jpg").read_bytes(),
        "png-rgba": save(photo.convert("RGBA"), "PNG"),
        "png-16": (data / "png16-rgba.png").read_bytes(),
        "png-palette": save(photo.quantize(16), "PNG", transparency=0),
        "gif-animated": save(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0),
        "webp-animated": save(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "webp": save(photo, "WEBP", quality=70),
        "bmp": save(photo, "BMP"),
        "tiff": save(photo, "TIFF", compression="tiff_lzw"),
        "avif": save(photo, "AVIF", quality=60),
    }
    heic = formats.support("heic")
    if heic is not None and heic.write:  # with pillow-heif installed
        images["heic"] = save(photo, "HEIF", quality=60)
    return images


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    how: str
    fop: str
    src: bytes


def corrupt(src: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded corruption of ``src``; the first bytes (the signature) usually survive,
    so the decoders themselves get the damage."""
    data = bytearray(src)
    size = len(data)
    start = min(size - 1, rng.choice((4, 12, 32)))
    how = rng.choice(("flip", "flip", "cut", "insert", "zero", "repeat", "header"))
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(start, size)] = rng.randrange(256)
    elif how == "cut":
        del data[rng.randrange(start, size) :]
    elif how == "insert":
        at = rng.randrange(start, size)
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif how == "zero":
        at = rng.randrange(start, size)
        data[at : at + rng.randint(1, 256)] = bytes(min(256, size - at))
    elif how == "repeat":
        at = rng.randrange(start, size)
        data[at:at] = data[at : at + rng.randint(1, 512)] * rng.randint(1, 4)
    else:  # damage within the first 64 bytes: sizes, flags, chunk lengths
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(min(8, size - 1), min(64, size))] = rng.randrange(256)
    return how, bytes(data)


def fuzz_cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = []
    for name, src in valid_images().items():
        for _ in range(CASES_PER_IMAGE):
            how, data = corrupt(src, rng)
            cases.append(Case(name, how, rng.choice(FOPS), data))
    return cases


@pytest.fixture(scope="module")
def fuzz_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(tmp_path_factory.mktemp("fuzz"), env=FUZZ_ENV, debug_ops=False)
    try:
        proc.start()
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(15) == 0
    finally:
        proc.close()


@pytest.fixture(scope="module")
def big_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker with the default limits: 150 Mpx sources, 30 s per call."""
    proc = WorkerProcess(tmp_path_factory.mktemp("big"), debug_ops=False)
    try:
        proc.start()
        yield proc
    finally:
        proc.close()


async def connect(worker: WorkerProcess) -> WorkerConnection:
    return await WorkerConnection.open(
        "127.0.0.1", worker.port, max_frame_bytes=8 * MiB, connect_timeout=5.0
    )


@pytest.fixture
async def fuzz_conn(fuzz_worker: WorkerProcess) -> AsyncIterator[WorkerConnection]:
    conn = await connect(fuzz_worker)
    yield conn
    await conn.aclose()


async def call(
    conn: WorkerConnection, fop: str, src: bytes, within: float = CALL_WITHIN
) -> dict[str, Any]:
    """One call with the fop ``name/args``; its answer within ``within`` (+ a margin)."""
    op, _, args = fop.partition("/")
    stages: Sequence[tuple[str, str]] = [(op, args)]
    deadline = time.time() + within
    async with asyncio.timeout(within + 5.0):
        return await conn.call(lambda cid: make_call(cid, stages, src, deadline))


def status(reply: dict[str, Any]) -> int:
    return 200 if reply.get("ok") is True else int(reply["code"])


async def test_corrupted_images_of_every_format_never_break_the_worker(
    fuzz_worker: WorkerProcess, fuzz_conn: WorkerConnection
) -> None:
    cases = fuzz_cases()
    assert len(cases) >= 200
    gate = asyncio.Semaphore(CONCURRENCY)
    answers: list[tuple[Case, int, str, float]] = []

    async def one(case: Case) -> None:
        async with gate:
            start = time.monotonic()
            reply = await call(fuzz_conn, case.fop, case.src)
            answers.append(
                (case, status(reply), str(reply.get("error", "")), time.monotonic() - start)
            )

    async with asyncio.TaskGroup() as group:
        for case in cases:
            group.create_task(one(case))

    bad = [
        f"{case.name}/{case.how} {case.fop}: {code} {error}"
        for case, code, error, _ in answers
        if not (code == 200 or 400 <= code < 500)
    ]
    assert not bad, "\n".join(bad)
    codes = {code for _, code, _, _ in answers}
    assert 200 in codes and 400 in codes  # both kinds of damage: survivable and fatal
    assert max(elapsed for *_, elapsed in answers) < CALL_WITHIN
    assert fuzz_worker.alive
    normal = await call(fuzz_conn, "imageView2/2/w/50", save(make_data.quadrants(), "JPEG"))
    assert status(normal) == 200
    output = output_from_response(normal)
    assert output.body is not None and Image.open(io.BytesIO(output.body)).size == (50, 38)


def huge_png() -> bytes:
    """A legal, huge source: 9000x9000 grey (81 Mpx, under 150 Mpx), 80 kB of PNG."""
    return save(Image.new("L", (9000, 9000), 200), "PNG", compress_level=1)


@pytest.fixture(scope="module")
def huge() -> bytes:
    return huge_png()


async def test_a_huge_legal_source_finishes_within_the_op_time(
    big_worker: WorkerProcess, huge: bytes
) -> None:
    conn = await connect(big_worker)
    try:
        start = time.monotonic()
        reply = await call(conn, "imageView2/2/w/300/format/jpg", huge, within=30.0)
        assert status(reply) == 200, reply.get("error")
        assert time.monotonic() - start < 30.0
        output = output_from_response(reply)
        assert output.body is not None and Image.open(io.BytesIO(output.body)).size == (300, 300)
    finally:
        await conn.aclose()


async def test_a_huge_source_past_its_deadline_is_a_clean_599(
    big_worker: WorkerProcess, huge: bytes
) -> None:
    conn = await connect(big_worker)
    try:
        start = time.monotonic()
        reply = await call(conn, "imageView2/2/w/300/format/png", huge, within=0.05)
        assert status(reply) == 599 and "deadline" in reply["error"]
        assert time.monotonic() - start < 5.0
        # the worker lives on, and its other thread answers at once
        after = await call(conn, "imageView2/2/w/20", save(make_data.quadrants(), "JPEG"))
        assert status(after) == 200 and big_worker.alive
    finally:
        await conn.aclose()


def test_the_cases_are_reproducible() -> None:
    def jpeg_cases() -> list[tuple[str, str, bytes]]:
        return [(case.how, case.fop, case.src) for case in fuzz_cases()[:CASES_PER_IMAGE]]

    assert jpeg_cases() == jpeg_cases()
