"""``dora pfop``, ``prefop``, ``pipeline`` and ``job`` against a live gateway on 127.0.0.1.

The gateway runs in the test's event loop; the CLI (blocking) runs in a
thread, or as its real entry point in a child process. Keys come from the
data directory, as ``dora serve`` and ``dora keys`` share them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dora.b64 import urlsafe_b64encode
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.cli import main
from dora.config import Limits, Settings
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.gateway.jobs_wiring import with_jobs
from dora.jobs import JobCode, JobItem, JobState
from dora.jobstore import SqliteJobStore
from dora.keys import ensure_keys, keyring_for
from dora.ops import Output
from dora.storage.local import LocalStore

Client = TestClient[web.Request, web.Application]


class NoProcessor:
    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise AssertionError("nothing runs synchronously here")


class Gateway:
    def __init__(self, data_dir: Path, url: str, jobs: SqliteJobStore) -> None:
        self.data_dir = data_dir
        self.url = url
        self.jobs = jobs

    async def dora(self, *argv: str, url: bool = True) -> int:
        """Run ``dora <argv>`` in a thread, pointed at this gateway and data directory."""
        extra = ["--data-dir", str(self.data_dir)] + (["--url", self.url] if url else [])
        return await asyncio.to_thread(main, [*argv, *extra])


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("DORA_SSRF_ALLOW", "127.0.0.1/32")
    data_dir = tmp_path / "data"
    ensure_keys(data_dir)
    async with (
        LocalStore(data_dir / "buckets", Limits()) as store,
        SqliteJobStore(data_dir / "jobs.sqlite3") as jobs,
    ):
        await store.put("photos", "cat.png", b"\x89PNG not decoded by anything here")
        ctx = GatewayContext(
            Settings(data_dir=data_dir),
            store,
            keyring_for(data_dir),
            NoProcessor(),
            BUILTIN_CATALOG,
        )
        async with TestClient(TestServer(build_app(with_jobs(ctx, jobs)), host="127.0.0.1")) as c:
            yield Gateway(data_dir, f"http://127.0.0.1:{c.port}", jobs)


def out_json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


async def test_pfop_then_prefop(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert await gateway.dora("pfop", "photos", "cat.png", "imageInfo;imageView2/2/w/8") == 0
    job_id = capsys.readouterr().out.strip()
    job = await gateway.jobs.get(job_id)
    assert job.fops == "imageInfo;imageView2/2/w/8" and job.state is JobState.QUEUED

    assert await gateway.dora("prefop", job_id) == 0
    assert out_json(capsys) == job.status_json()


async def test_pfop_options_reach_the_job(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    await gateway.jobs.create_pipeline("video")
    target = urlsafe_b64encode(b"photos:out.png")
    code = await gateway.dora(
        "pfop", "photos", "cat.png", f"imageView2/2/w/8|saveas/{target}",
        "--pipeline", "video", "--notify-url", "http://127.0.0.1:9/hook", "--force",
        "--type", "1",
    )  # fmt: skip
    assert code == 0
    job = await gateway.jobs.get(capsys.readouterr().out.strip())
    assert (job.pipeline, job.notify_url, job.force, job.type) == (
        "video",
        "http://127.0.0.1:9/hook",
        True,
        1,
    )


async def test_errors_are_reported(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert await gateway.dora("pfop", "photos", "cat.png", "nope/1") == 1
    assert capsys.readouterr().err.strip() == "dora pfop: unknown fop 'nope'"
    assert await gateway.dora("prefop", "z0.nosuch") == 1
    assert "dora prefop: no such job" in capsys.readouterr().err
    assert await gateway.dora("pipeline", "delete", "default") == 1
    assert "cannot be deleted" in capsys.readouterr().err
    assert (await gateway.jobs.list()).jobs == ()


async def test_prefop_wait_follows_the_job_to_its_end(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await gateway.dora("pfop", "photos", "cat.png", "imageInfo") == 0
    job_id = capsys.readouterr().out.strip()
    waiting = asyncio.create_task(gateway.dora("prefop", job_id, "--wait", "--interval", "0.05"))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # code 1: still polling
    [leased] = await gateway.jobs.lease("runner", 60.0, 1)
    item = JobItem(0, "imageInfo", code=JobCode.DONE, key="out.json", hash="Fabc")
    await gateway.jobs.update_item(leased.id, "runner", item)
    await gateway.jobs.complete(leased.id, "runner")
    assert await asyncio.wait_for(waiting, 10) == 0
    status = out_json(capsys)
    assert isinstance(status, dict) and status["code"] == 0
    assert status["items"][0]["key"] == "out.json"


async def test_prefop_wait_exits_1_for_a_failed_job_or_a_timeout(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    await gateway.dora("pfop", "photos", "cat.png", "imageInfo")
    job_id = capsys.readouterr().out.strip()
    code = await gateway.dora("prefop", job_id, "--wait", "--interval", "0.05", "--timeout", "0.3")
    assert code == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["code"] == 1 and "still running after 0.3s" in captured.err

    await gateway.dora("job", "cancel", job_id)
    capsys.readouterr()
    assert await gateway.dora("prefop", job_id, "--wait") == 1
    assert out_json(capsys) == (await gateway.jobs.get(job_id)).status_json()


async def test_pipeline_commands(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert await gateway.dora("pipeline", "create", "video", "--concurrency", "2") == 0
    made = out_json(capsys)
    assert isinstance(made, dict) and (made["name"], made["concurrency"]) == ("video", 2)

    assert await gateway.dora("pipeline", "update", "video", "--max-queued", "5") == 0
    assert (await gateway.jobs.get_pipeline("video")).max_queued == 5
    capsys.readouterr()

    assert await gateway.dora("pipeline", "pause", "video") == 0
    assert (await gateway.jobs.get_pipeline("video")).paused
    capsys.readouterr()
    assert await gateway.dora("pipeline", "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "CONCURRENCY", "MAX_QUEUED", "PAUSED", "QUEUED", "RUNNING"]
    assert table[2].split() == ["video", "2", "5", "yes", "0", "0"]

    assert await gateway.dora("pipeline", "resume", "video") == 0
    capsys.readouterr()
    assert await gateway.dora("pipeline", "get", "video") == 0
    shown = out_json(capsys)
    assert isinstance(shown, dict) and shown["paused"] is False

    assert await gateway.dora("pipeline", "list", "--json") == 0
    listed = out_json(capsys)
    assert isinstance(listed, dict)
    assert [p["name"] for p in listed["items"]] == ["default", "video"]

    assert await gateway.dora("pipeline", "delete", "video") == 0
    capsys.readouterr()
    assert [p.name for p in await gateway.jobs.list_pipelines()] == ["default"]


async def test_job_commands(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    ids = []
    for _ in range(3):
        await gateway.dora("pfop", "photos", "cat.png", "imageInfo")
        ids.append(capsys.readouterr().out.strip())

    assert await gateway.dora("job", "cancel", ids[0]) == 0
    cancelled = out_json(capsys)
    assert isinstance(cancelled, dict) and cancelled["state"] == "failed"

    assert await gateway.dora("job", "list", "--state", "queued") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "PIPELINE", "STATE", "CODE"]
    assert [line.split()[0] for line in lines[1:]] == [ids[2], ids[1]]

    assert await gateway.dora("job", "list", "--limit", "1", "--json") == 0
    captured = capsys.readouterr()
    page = json.loads(captured.out)
    assert [j["id"] for j in page["items"]] == [ids[2]] and page["marker"]
    assert await gateway.dora("job", "list", "--limit", "5", "--marker", page["marker"]) == 0
    rest = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rest == [ids[1], ids[0]]

    assert await gateway.dora("job", "retry", ids[0]) == 0
    capsys.readouterr()
    assert await gateway.dora("job", "get", ids[0]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "queued" and shown["id"] == ids[0]


async def test_the_url_comes_from_the_running_serve(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    (gateway.data_dir / "serve.json").write_text(json.dumps({"url": gateway.url}))
    assert await gateway.dora("pipeline", "list", "--json", url=False) == 0
    listed = out_json(capsys)
    assert isinstance(listed, dict) and listed["items"][0]["name"] == "default"


async def test_an_unreachable_gateway_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["job", "list", "--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9"]
    assert await asyncio.to_thread(main, argv) == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in capsys.readouterr().err


async def test_the_real_entry_point(gateway: Gateway) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "dora.cli", "pfop", "photos", "cat.png", "imageInfo",
        "--data-dir", str(gateway.data_dir), "--url", gateway.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    job = await gateway.jobs.get(out.decode().strip())
    assert job.key == "cat.png"
