"""The management API (``/v1/pipelines``, ``/v1/jobs``) through the real gateway,
signed in both schemes, by Dora's signer and by the official qiniu SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import qiniu
import qiniu.http
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dora.auth import Credentials, KeyRing, qbox_authorization, qiniu_authorization
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.config import Limits, Settings
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.gateway.jobs_wiring import with_jobs
from dora.jobs import JobCode, JobItem, JobSpec, JobState
from dora.jobstore import SqliteJobStore
from dora.ops import Output
from dora.storage.local import LocalStore

AK, SK = "manage-access-key", "manage-secret-key"
CREDS = Credentials(AK, SK)
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

Client = TestClient[web.Request, web.Application]


class NoProcessor:
    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise AssertionError("the management API processes nothing")


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as opened:
        yield opened


@pytest.fixture
async def client(jobs: SqliteJobStore, tmp_path: Path) -> AsyncIterator[Client]:
    async with LocalStore(tmp_path / "buckets", Limits()) as store:
        ctx = GatewayContext(
            Settings(data_dir=tmp_path), store, KeyRing([CREDS]), NoProcessor(), BUILTIN_CATALOG
        )
        app = build_app(with_jobs(ctx, jobs))
        async with TestClient(TestServer(app, host="127.0.0.1")) as c:
            yield c


async def call(
    client: Client,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    json_body: Any = None,
    scheme: str = "qiniu",
    creds: Credentials = CREDS,
) -> tuple[int, Any]:
    """A signed management call; ``(status, JSON answer)``."""
    target = path + ("?" + urlencode(query) if query else "")
    headers: dict[str, str] = {}
    body: bytes | None = None
    if form is not None:
        body, headers["Content-Type"] = urlencode(form).encode(), FORM
    elif json_body is not None:
        body, headers["Content-Type"] = json.dumps(json_body).encode(), JSON
    elif method in ("POST", "PATCH"):
        # Sign what is sent: aiohttp would add application/octet-stream itself.
        body, headers["Content-Type"] = b"", FORM
    ctype = headers.get("Content-Type")
    if scheme == "qiniu":
        headers["X-Qiniu-Date"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        host = f"127.0.0.1:{client.port}"
        headers["Authorization"] = qiniu_authorization(
            creds, method, target, host, ctype, headers, body
        )
    elif scheme == "qbox":
        headers["Authorization"] = qbox_authorization(creds, target, body, ctype)
    resp = await client.request(method, target, data=body, headers=headers)
    assert resp.headers["Cache-Control"] == "no-store"
    return resp.status, await resp.json(content_type=None)


def spec(pipeline: str = "", key: str = "a.png", fops: str = "imageInfo") -> JobSpec:
    return JobSpec(bucket="photos", key=key, fops=fops, pipeline=pipeline)


# -- pipelines -----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["qiniu", "qbox"])
async def test_pipeline_round_trip(client: Client, jobs: SqliteJobStore, scheme: str) -> None:
    status, made = await call(
        client,
        "POST",
        "/v1/pipelines",
        form={"name": "video", "concurrency": "3", "maxQueued": "50"},
        scheme=scheme,
    )
    assert status == 200, made
    assert made["name"] == "video" and made["concurrency"] == 3 and made["maxQueued"] == 50
    assert made["paused"] is False and made["jobs"] == {
        "queued": 0,
        "running": 0,
        "done": 0,
        "failed": 0,
    }
    assert (await jobs.get_pipeline("video")).max_queued == 50

    status, listed = await call(client, "GET", "/v1/pipelines", scheme=scheme)
    assert status == 200 and [p["name"] for p in listed["items"]] == ["default", "video"]

    status, updated = await call(
        client, "PATCH", "/v1/pipelines/video", form={"concurrency": "7"}, scheme=scheme
    )
    assert status == 200 and (updated["concurrency"], updated["maxQueued"]) == (7, 50)

    status, paused = await call(client, "POST", "/v1/pipelines/video/pause", scheme=scheme)
    assert status == 200 and paused["paused"] is True
    assert (await jobs.get_pipeline("video")).paused
    status, resumed = await call(client, "POST", "/v1/pipelines/video/resume", scheme=scheme)
    assert status == 200 and resumed["paused"] is False

    status, gone = await call(client, "DELETE", "/v1/pipelines/video", scheme=scheme)
    assert (status, gone) == (200, {"name": "video", "deleted": True})
    status, body = await call(client, "GET", "/v1/pipelines/video", scheme=scheme)
    assert (status, body["code"]) == (404, 404) and "no such pipeline" in body["error"]


async def test_json_bodies_need_the_qiniu_scheme(client: Client) -> None:
    status, made = await call(
        client, "POST", "/v1/pipelines", json_body={"name": "js", "concurrency": 2}
    )
    assert status == 200 and made["concurrency"] == 2
    status, body = await call(
        client, "PATCH", "/v1/pipelines/js", json_body={"maxQueued": 9}, scheme="qbox"
    )
    assert status == 401 and "does not cover the request body" in body["error"]
    status, body = await call(client, "PATCH", "/v1/pipelines/js", json_body={"maxQueued": 9})
    assert status == 200 and body["maxQueued"] == 9


async def test_pipeline_counts_show_jobs(client: Client, jobs: SqliteJobStore) -> None:
    await jobs.create_pipeline("busy")
    for n in range(3):
        await jobs.enqueue(spec("busy", key=f"{n}.png"))
    await jobs.lease("runner", 60.0, 1)
    status, body = await call(client, "GET", "/v1/pipelines/busy")
    assert status == 200 and body["jobs"] == {"queued": 2, "running": 1, "done": 0, "failed": 0}


async def test_pause_and_resume_govern_leasing(client: Client, jobs: SqliteJobStore) -> None:
    await jobs.create_pipeline("p")
    job = await jobs.enqueue(spec("p"))
    await call(client, "POST", "/v1/pipelines/p/pause")
    assert await jobs.lease("runner", 60.0, 10) == []
    await call(client, "POST", "/v1/pipelines/p/resume")
    assert [j.id for j in await jobs.lease("runner", 60.0, 10)] == [job.id]


@pytest.mark.parametrize(
    ("method", "path", "form", "status", "needle"),
    [
        ("POST", "/v1/pipelines", {"name": "default"}, 409, "already exists"),
        ("POST", "/v1/pipelines", {"name": "bad name!"}, 400, "invalid pipeline name"),
        ("POST", "/v1/pipelines", {}, 400, "name is required"),
        ("POST", "/v1/pipelines", {"name": "x", "concurrency": "0"}, 400, "concurrency"),
        ("POST", "/v1/pipelines", {"name": "x", "concurrency": "-1"}, 400, "positive integer"),
        ("POST", "/v1/pipelines", {"name": "x", "maxQueued": "many"}, 400, "positive integer"),
        ("PATCH", "/v1/pipelines/default", {}, 400, "give concurrency"),
        ("PATCH", "/v1/pipelines/nosuch", {"concurrency": "2"}, 404, "no such pipeline"),
        ("POST", "/v1/pipelines/nosuch/pause", None, 404, "no such pipeline"),
        ("DELETE", "/v1/pipelines/default", None, 400, "cannot be deleted"),
        ("DELETE", "/v1/pipelines/nosuch", None, 404, "no such pipeline"),
    ],
)
async def test_pipeline_errors(
    client: Client,
    method: str,
    path: str,
    form: dict[str, str] | None,
    status: int,
    needle: str,
) -> None:
    got, body = await call(client, method, path, form=form)
    assert got == status and body["code"] == status and needle in body["error"], body


async def test_a_busy_pipeline_is_not_deleted(client: Client, jobs: SqliteJobStore) -> None:
    await jobs.create_pipeline("busy")
    await jobs.enqueue(spec("busy"))
    status, body = await call(client, "DELETE", "/v1/pipelines/busy")
    assert status == 409 and "1 queued" in body["error"]
    assert (await jobs.get_pipeline("busy")).name == "busy"


# -- signatures -------------------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/pipelines"),
    ("GET", "/v1/pipelines"),
    ("GET", "/v1/pipelines/default"),
    ("PATCH", "/v1/pipelines/default"),
    ("DELETE", "/v1/pipelines/default"),
    ("POST", "/v1/pipelines/default/pause"),
    ("POST", "/v1/pipelines/default/resume"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/z0.x"),
    ("POST", "/v1/jobs/z0.x/cancel"),
    ("POST", "/v1/jobs/z0.x/retry"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("how", ["unsigned", "wrong-secret"])
async def test_every_route_needs_a_signature(
    client: Client, jobs: SqliteJobStore, method: str, path: str, how: str
) -> None:
    status, body = await call(
        client,
        method,
        path,
        form={"name": "sneaky", "concurrency": "1"} if method != "GET" else None,
        scheme="none" if how == "unsigned" else "qiniu",
        creds=Credentials(AK, "wrong-secret"),
    )
    assert (status, body["code"]) == (401, 401)
    assert [p.name for p in await jobs.list_pipelines()] == ["default"]
    assert not (await jobs.get_pipeline("default")).paused


async def test_a_signed_query_cannot_be_changed(client: Client) -> None:
    target = "/v1/jobs?state=queued"
    auth = qbox_authorization(CREDS, target, None, None)
    resp = await client.get("/v1/jobs?state=failed", headers={"Authorization": auth})
    assert resp.status == 401


async def test_the_sdk_signs_management_calls(client: Client, jobs: SqliteJobStore) -> None:
    mac = qiniu.QiniuMacAuth(AK, SK)
    base = f"http://127.0.0.1:{client.port}"
    ret, info = await asyncio.to_thread(
        qiniu.http._post_with_qiniu_mac, f"{base}/v1/pipelines", {"name": "sdk"}, mac
    )
    assert info.status_code == 200, info
    assert ret["name"] == "sdk"
    ret, info = await asyncio.to_thread(
        qiniu.http._get_with_qiniu_mac, f"{base}/v1/jobs", {"pipeline": "sdk"}, mac
    )
    assert info.status_code == 200 and ret == {"items": [], "marker": ""}
    ret, info = await asyncio.to_thread(
        qiniu.http._delete_with_qiniu_mac, f"{base}/v1/pipelines/sdk", None, mac
    )
    assert info.status_code == 200 and ret["deleted"] is True


# -- jobs ---------------------------------------------------------------------------------


async def test_job_listing_filters_and_pages(client: Client, jobs: SqliteJobStore) -> None:
    await jobs.create_pipeline("other")
    first = await jobs.enqueue(spec(key="1.png"))
    second = await jobs.enqueue(spec("other", key="2.png"))
    third = await jobs.enqueue(spec(key="3.png"))
    await jobs.cancel(first.id)

    status, page = await call(client, "GET", "/v1/jobs")
    assert status == 200 and page["marker"] == ""
    assert [j["id"] for j in page["items"]] == [third.id, second.id, first.id]

    _, page = await call(client, "GET", "/v1/jobs", query={"state": "failed"})
    assert [j["id"] for j in page["items"]] == [first.id]
    _, page = await call(client, "GET", "/v1/jobs", query={"pipeline": "other"})
    assert [j["id"] for j in page["items"]] == [second.id]
    _, page = await call(client, "GET", "/v1/jobs", query={"state": "queued", "pipeline": ""})
    assert [j["id"] for j in page["items"]] == [third.id, second.id]

    seen, marker = [], None
    while True:
        query = {"limit": "1", **({"marker": marker} if marker else {})}
        status, page = await call(client, "GET", "/v1/jobs", query=query)
        assert status == 200 and len(page["items"]) <= 1
        seen += [j["id"] for j in page["items"]]
        marker = page["marker"]
        if not marker:
            break
    assert seen == [third.id, second.id, first.id]


async def test_job_get_shows_status_and_bookkeeping(client: Client, jobs: SqliteJobStore) -> None:
    job = await jobs.enqueue(
        JobSpec(
            "photos", "a.png", "imageInfo;imageView2/2/w/9", notify_url="http://n/x", force=True
        )
    )
    status, body = await call(client, "GET", f"/v1/jobs/{job.id}")
    assert status == 200
    assert {k: body[k] for k in job.status_json()} == job.status_json()
    assert body["state"] == "queued" and body["fops"] == job.fops
    assert (body["notifyURL"], body["force"], body["type"]) == ("http://n/x", 1, 0)
    assert (body["attempts"], body["error"], body["cancelRequested"]) == (0, "", False)
    assert (body["notifyState"], body["finished"]) == ("none", None)
    assert body["created"] == job.created


async def test_cancel_then_retry(client: Client, jobs: SqliteJobStore) -> None:
    job = await jobs.enqueue(spec())
    status, body = await call(client, "POST", f"/v1/jobs/{job.id}/cancel")
    assert status == 200
    assert (body["state"], body["code"], body["error"]) == ("failed", 3, "cancelled")
    assert (await jobs.get(job.id)).code is JobCode.FAILED

    status, body = await call(client, "POST", f"/v1/jobs/{job.id}/retry")
    assert status == 200 and (body["state"], body["code"]) == ("queued", 1)
    status, body = await call(client, "POST", f"/v1/jobs/{job.id}/retry")
    assert status == 409 and "only a failed job" in body["error"]


async def test_cancel_a_running_job_asks_it_to_stop(client: Client, jobs: SqliteJobStore) -> None:
    job = await jobs.enqueue(spec())
    [leased] = await jobs.lease("runner", 60.0, 1)
    await jobs.update_item(job.id, "runner", JobItem(0, "imageInfo", code=JobCode.PROCESSING))
    status, body = await call(client, "POST", f"/v1/jobs/{job.id}/cancel")
    assert status == 200 and body["state"] == "running" and body["cancelRequested"] is True
    assert await jobs.heartbeat(leased.id, "runner", 60.0) is False
    assert (await jobs.get(job.id)).state is JobState.RUNNING


@pytest.mark.parametrize(
    ("method", "path", "query", "status", "needle"),
    [
        ("GET", "/v1/jobs/z0.nosuch", None, 612, "no such job"),
        ("POST", "/v1/jobs/z0.nosuch/cancel", None, 612, "no such job"),
        ("POST", "/v1/jobs/z0.nosuch/retry", None, 612, "no such job"),
        ("GET", "/v1/jobs", {"state": "lost"}, 400, "invalid state"),
        ("GET", "/v1/jobs", {"limit": "0"}, 400, "limit"),
        ("GET", "/v1/jobs", {"limit": "100000"}, 400, "limit"),
        ("GET", "/v1/jobs", {"marker": "abc"}, 400, "invalid marker"),
        ("GET", "/v1/jobs", {"pipeline": "no way"}, 400, "invalid pipeline name"),
    ],
)
async def test_job_errors(
    client: Client,
    method: str,
    path: str,
    query: dict[str, str] | None,
    status: int,
    needle: str,
) -> None:
    got, body = await call(client, method, path, query=query)
    assert got == status and body["code"] == status and needle in body["error"], body
