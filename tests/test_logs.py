"""Structured logs, and the request id that follows a request into a worker process.

The end-to-end test runs a real worker process (its stderr captured, in
``DORA_LOG_FORMAT=json``) registered in an embedded registry, a real gateway
app over HTTP and a real dispatcher, both calling it through the worker
pool: the worker's line for each call carries the client's ``X-Reqid``, or
the job's reqid.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dora.auth import Credentials, KeyRing
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.config import Limits, Settings
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.jobs import JobSpec, JobStoreOptions
from dora.jobstore import SqliteJobStore
from dora.logs import JsonFormatter, TextFormatter, bound_reqid, setup_logging
from dora.rpc import decode_payload, encode_frame, make_call, parse_request
from dora.scheduler.dispatcher import Dispatcher, DispatchPolicy
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.storage.local import LocalStore
from dora.workers.pool import WorkerPool
from dora.workers.registry import ConsulRegistry
from dora.workers.testing import sample_jpeg


def record(msg: str = "hello %s", *args: object, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("dora.test", logging.INFO, __file__, 1, msg, args or ("you",), None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_message_fields_and_the_bound_reqid() -> None:
    stream = io.StringIO()
    handler = setup_logging("gateway", fmt="json", level="INFO", stream=stream, env={})
    root = logging.getLogger()
    try:
        log = logging.getLogger("dora.test")
        with bound_reqid("req-1"):
            log.info("call", extra={"ops": "imageView2", "status": 200, "ms": 1.5})
        log.info("plain %d", 7)
        log.debug("not at INFO")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed", extra={"reqid": "given"})
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first, second, third = lines
    assert first["msg"] == "call" and first["reqid"] == "req-1"
    assert (first["ops"], first["status"], first["ms"]) == ("imageView2", 200, 1.5)
    assert (first["role"], first["level"], first["logger"]) == ("gateway", "INFO", "dora.test")
    assert first["ts"].endswith("Z") and isinstance(first["pid"], int)
    assert second["msg"] == "plain 7" and "reqid" not in second
    assert third["reqid"] == "given" and "ValueError: boom" in third["exc"]


def test_text_lines_are_for_people_with_fields_after_the_message() -> None:
    line = TextFormatter("worker").format(
        record(reqid="r-9", ops="imageView2|watermark", note="two words", empty="")
    )
    assert " worker[" in line and " INFO dora.test: hello you " in line
    assert line.endswith('reqid=r-9 ops=imageView2|watermark note="two words" empty=""')
    assert TextFormatter("worker").format(record()).endswith("dora.test: hello you")


def test_long_fields_are_clipped() -> None:
    data = json.loads(JsonFormatter("worker").format(record(error="x" * 10_000)))
    assert len(data["error"]) < 2100


def test_a_call_carries_a_sane_reqid_and_drops_any_other() -> None:
    call = make_call(1, [("imageView2", "2/w/10")], b"src", 1.0, reqid="trace-1")
    assert parse_request(decode_payload(encode_frame(call)[4:])) == call
    assert "reqid" not in make_call(1, [("imageInfo", "")], b"src", 1.0)
    for bad in ("", "x" * 200, "two\nlines", 42):
        parsed = parse_request({**call, "reqid": bad})
        assert "reqid" not in parsed  # an older or odd peer's field is ignored


# -- end to end --------------------------------------------------------------------


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


@pytest.fixture
async def pool(tmp_path: Path, worker_log: Path) -> AsyncIterator[WorkerPool]:
    async with EmbeddedRegistry(datacenter="dc1") as server:
        assert server.port is not None
        env = {"DORA_LOG_FORMAT": "json", "DORA_LOG_LEVEL": "INFO", "PATH": "/usr/bin:/bin"}
        with worker_log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", "dora.workers.server", "--port", "0",
                "--registry", f"127.0.0.1:{server.port}", "--data-dir", str(tmp_path),
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
            )  # fmt: skip
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                line = await proc.stdout.readline()
            assert line.startswith(b"READY "), await asyncio.to_thread(worker_log.read_text)
            async with (
                ConsulRegistry("127.0.0.1", server.port, datacenter="dc1") as registry,
                WorkerPool(registry, instance_wait=5.0) as opened,
            ):
                await opened.wait_for_instances(1, within=10.0)
                yield opened
        finally:
            proc.terminate()
            async with asyncio.timeout(15):
                await proc.wait()


def call_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        data = json.loads(line)  # every line of the worker is one JSON object
        if data.get("msg") == "call":
            yield data


async def wait_for_line(path: Path, reqid: str, within: float = 5.0) -> dict[str, Any]:
    give_up = time.monotonic() + within
    while True:
        lines = await asyncio.to_thread(lambda: list(call_lines(path)))
        found = [line for line in lines if line.get("reqid") == reqid]
        if found:
            return found[0]
        assert time.monotonic() < give_up, f"no call line with reqid {reqid}: {lines}"
        await asyncio.sleep(0.05)


async def test_the_reqid_reaches_the_workers_log_from_gateway_and_dispatcher(
    tmp_path: Path, pool: WorkerPool, worker_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    photo = sample_jpeg(400, 300)
    async with (
        LocalStore(tmp_path / "buckets", Limits()) as objects,
        SqliteJobStore(tmp_path / "jobs.db", JobStoreOptions(durable=False)) as jobs,
    ):
        await objects.put("photos", "cat.jpg", photo)
        ctx = GatewayContext(
            Settings(data_dir=tmp_path), objects, KeyRing([Credentials("ak", "sk")]), pool,
            BUILTIN_CATALOG,
        )  # fmt: skip
        async with TestClient(TestServer(build_app(ctx), host="127.0.0.1")) as client:
            resp = await client.get(
                "/photos/cat.jpg?imageView2/2/w/100", headers={"X-Reqid": "trace-42"}
            )
            assert resp.status == 200
            assert resp.headers["X-Reqid"] == "trace-42"
            body = await resp.read()
        line = await wait_for_line(worker_log, "trace-42")
        assert (line["ops"], line["status"]) == ("imageView2", 200)
        assert line["bytes_in"] == len(photo) and line["bytes_out"] == len(body)
        assert line["ms"] >= 0 and line["role"] == "worker" and line["logger"] == "dora.call"
        access = [r for r in caplog.records if r.name == "dora.access"]
        assert [(r.__dict__["reqid"], r.__dict__["status"]) for r in access] == [("trace-42", 200)]

        policy = DispatchPolicy(lease_seconds=5.0, heartbeat_interval=0.5, poll_interval=0.1)
        job = await jobs.enqueue(
            JobSpec("photos", "cat.jpg", "imageView2/2/w/50;nosuchop/1", reqid="job-req-7")
        )
        async with Dispatcher(jobs, objects, pool, work_root=tmp_path / "work", policy=policy) as d:
            runner = asyncio.create_task(d.run())
            give_up = time.monotonic() + 20
            while not (job := await jobs.get(job.id)).state.finished:
                assert time.monotonic() < give_up
                await asyncio.sleep(0.05)
            d.stop()
            await runner
    line = await wait_for_line(worker_log, "job-req-7")
    assert (line["ops"], line["status"]) == ("imageView2", 200)
    items = [r.__dict__ for r in caplog.records if r.getMessage() == "job item"]
    assert [(i["reqid"], i["index"], i["status"]) for i in items] == [
        ("job-req-7", 0, "done"),
        ("job-req-7", 1, "failed"),
    ]
    assert "nosuchop" in items[1]["error"]
    [run] = [r.__dict__ for r in caplog.records if r.getMessage() == "job"]
    assert (run["job"], run["outcome"], run["items"]) == (job.id, "finished", 2)
