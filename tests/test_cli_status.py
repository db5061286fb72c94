"""``dora status`` as a user runs it, against a real ``dora serve`` (and without one)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qiniu
from serving import Served, dora_command, dora_serve

from dora.auth import Credentials
from dora.cli_jobs import GatewayClient


def status(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dora_command("status", "--data-dir", str(data_dir), *args),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with dora_serve(tmp_path_factory.mktemp("status") / "data", workers=2) as srv:
        yield srv


def test_nothing_running_is_said_clearly(tmp_path: Path) -> None:
    done = status(tmp_path)
    assert done.returncode == 1
    assert "nothing is running" in done.stderr and "serve.json" in done.stderr
    done = status(tmp_path, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["running"] is False
    # A serve.json whose supervisor is gone is not a running system either.
    (tmp_path / "serve.json").write_text(
        json.dumps({"pid": 2**22 + 12345, "url": "http://127.0.0.1:1", "registry": "127.0.0.1:1"})
    )
    done = status(tmp_path)
    assert done.returncode == 1 and "is gone" in done.stderr


def failed_job(srv: Served) -> str:
    """A job that fails when it runs: a thumbnail of a text file."""
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    token = auth.upload_token("photos", "notes.txt")
    _, info = qiniu.put_data(
        token, "notes.txt", b"not a picture", regions=[qiniu.Region(up_host=srv.url)]
    )
    assert info.status_code == 200, info
    client = GatewayClient(srv.url, Credentials(srv.access_key, srv.secret_key))
    client.call("POST", "/v1/pipelines", form={"name": "thumbs", "concurrency": "2"})
    form = {"bucket": "photos", "key": "notes.txt", "fops": "imageView2/2/w/10"}
    job_id = str(client.call("POST", "/pfop/", form=form)["persistentId"])
    give_up = time.monotonic() + 30
    while client.call("GET", "/status/get/prefop", query={"id": job_id})["code"] in (1, 2):
        assert time.monotonic() < give_up
        time.sleep(0.1)
    return job_id


def settled_report(data_dir: Path) -> dict[str, Any]:
    """``status --json`` once the supervisor's sampled instance counts (copied
    every second: SAMPLE_EVERY) show every worker it started as running."""
    give_up = time.monotonic() + 15
    while True:
        done = status(data_dir, "--json")
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        builtin = report["services"].get("dora-builtin", {})
        if builtin.get("running") == builtin.get("desired") or time.monotonic() > give_up:
            return report
        time.sleep(0.2)


def test_status_json_shows_workers_pipelines_and_failures(served: Served) -> None:
    job_id = failed_job(served)  # picked up at once: it may end before the first sample
    report = settled_report(served.data_dir)
    assert report["running"] is True and report["errors"] == []
    assert report["url"] == served.url and report["registry"] == served.registry
    workers = report["workers"]
    assert len(workers) == 2
    registered = {str(s["ID"]) for s in served.healthy_instances()}
    assert {w["id"] for w in workers} == registered
    for worker in workers:
        assert worker["status"] == "passing"
        # Read from the registry's check and from /metrics (the job may have just left).
        assert isinstance(worker["load"], float) and worker["load"] >= 0
        assert all(isinstance(worker[k], int) for k in ("inflight", "threads_busy", "queued"))
    assert report["worker_restarts"] == 0
    assert report["services"]["dora-builtin"] == {"running": 2, "desired": 2, "restarts": 0}
    assert report["gateways"]["running"] == 1 and report["gateway_healthy"] is True
    pipelines = {p["name"]: p for p in report["pipelines"]}
    assert set(pipelines) == {"default", "thumbs"}
    assert pipelines["default"]["jobs"]["failed"] == 1
    assert pipelines["thumbs"]["concurrency"] == 2
    [failure] = report["failures"]
    assert failure["id"] == job_id and failure["input"] == "photos:notes.txt"
    assert failure["error"]


def test_status_text_is_a_summary_for_people(served: Served) -> None:
    done = status(served.data_dir)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"Dora at {served.url}" in text
    assert "Workers: 2 passing of 2, restarts 0" in text
    assert "Gateways: 1 running of 1, healthy" in text
    assert "thumbs" in text and "default" in text
    assert "Recent failures: 1" in text
    assert "could not read" not in text
