"""pfop and prefop through the real gateway over HTTP, with the official qiniu SDK.

The gateway runs on 127.0.0.1 around a real LocalStore and a real
SqliteJobStore; no dispatcher runs, so a queued job stays at code 1.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import qiniu
import qiniu.config
import requests
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer
from qiniu.auth import QiniuMacRequestsAuth

from dora.auth import Credentials, KeyRing, qbox_authorization, qiniu_authorization
from dora.b64 import urlsafe_b64encode
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.config import Limits, Settings
from dora.errors import NotFound
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.gateway.jobs_wiring import with_jobs
from dora.jobs import JobCode, JobState
from dora.jobstore import SqliteJobStore
from dora.ops import Output
from dora.storage.local import LocalStore

AK, SK = "pfop-access-key", "pfop-secret-key"
AUTH = qiniu.Auth(AK, SK)
CREDS = Credentials(AK, SK)
FORM = "application/x-www-form-urlencoded"
NOTIFY = "http://127.0.0.1:9/notify"  # allow-listed below; nothing needs to listen
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)

Client = TestClient[web.Request, web.Application]


def b64(text: str) -> str:
    return urlsafe_b64encode(text.encode())


class NoProcessor:
    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise AssertionError("pfop must not process anything synchronously")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "buckets", Limits()) as opened:
        await opened.put("photos", "cat.png", PNG_1x1)
        await opened.put("videos", "clip.mp4", b"not really a video: nothing runs it here")
        yield opened


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as opened:
        yield opened


@pytest.fixture
async def client(
    store: LocalStore, jobs: SqliteJobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Client]:
    monkeypatch.setenv("DORA_SSRF_ALLOW", "127.0.0.1/32")
    ctx = GatewayContext(
        Settings(data_dir=tmp_path), store, KeyRing([CREDS]), NoProcessor(), BUILTIN_CATALOG
    )
    async with TestClient(TestServer(build_app(with_jobs(ctx, jobs)), host="127.0.0.1")) as c:
        yield c


@pytest.fixture
def api_host(client: Client) -> Iterator[str]:
    """Point the SDK's pfop/prefop host at the gateway (a process-wide SDK setting)."""
    before = qiniu.config.get_default("default_api_host")
    host = f"http://127.0.0.1:{client.port}"
    qiniu.config.set_default(default_api_host=host)
    yield host
    qiniu.config.set_default(default_api_host=before)


async def post_pfop(
    client: Client, fields: dict[str, str], *, path: str = "/pfop/", creds: Credentials = CREDS
) -> tuple[int, dict[str, Any], Any]:
    """A QBox-signed form POST, as the SDK sends it."""
    body = _urlencode(fields)
    auth = qbox_authorization(creds, path, body, FORM)
    resp = await client.post(path, data=body, headers={"Content-Type": FORM, "Authorization": auth})
    return resp.status, await resp.json(content_type=None), resp.headers


def _urlencode(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def fields(fops: str, **extra: str) -> dict[str, str]:
    return {"bucket": "photos", "key": "cat.png", "fops": fops, **extra}


async def no_jobs(jobs: SqliteJobStore) -> None:
    page = await jobs.list()
    assert page.jobs == ()


# -- the official SDK -----------------------------------------------------------


async def test_sdk_execute_and_get_status(api_host: str, jobs: SqliteJobStore) -> None:
    fops = [
        f"imageView2/2/w/100|saveas/{b64('photos:thumb.png')}",
        "imageInfo",
    ]
    pfop = qiniu.PersistentFop(AUTH, "photos", notify_url=NOTIFY)
    ret, info = await asyncio.to_thread(pfop.execute, "cat.png", fops, 1)
    assert info.status_code == 200, info
    job_id = ret["persistentId"]
    assert set(ret) == {"persistentId"}

    job = await jobs.get(job_id)
    assert (job.bucket, job.key, job.fops) == ("photos", "cat.png", ";".join(fops))
    assert job.force and job.notify_url == NOTIFY and job.pipeline == "default"
    assert job.reqid == info.req_id and job.state is JobState.QUEUED

    status, info = await asyncio.to_thread(pfop.get_status, job_id)
    assert info.status_code == 200, info
    assert status == job.status_json()
    assert status["code"] == 1 and status["desc"] == JobCode.WAITING.desc
    assert (status["inputBucket"], status["inputKey"]) == ("photos", "cat.png")
    assert [item["cmd"] for item in status["items"]] == fops
    assert all(item["code"] == 1 for item in status["items"])


async def test_sdk_with_pipeline_type_and_av_ops(api_host: str, jobs: SqliteJobStore) -> None:
    await jobs.create_pipeline("transcode", concurrency=2)
    urls = "/".join(b64(f"https://example.com/{n}.mp4") for n in range(2))
    fops = [
        f"avthumb/mp4/s/640x360/vb/1m|saveas/{b64('videos:clip-640.mp4')}",
        "avthumb/m3u8/segtime/10",
        f"avconcat/2/format/mp4/{urls}",
        "vframe/jpg/offset/1",
    ]
    pfop = qiniu.PersistentFop(AUTH, "videos", pipeline="transcode")
    ret, info = await asyncio.to_thread(pfop.execute, "clip.mp4", fops, None, 1)
    assert info.status_code == 200, info
    job = await jobs.get(ret["persistentId"])
    assert job.pipeline == "transcode" and job.type == 1 and not job.force
    assert len(job.items) == 4 and job.notify_url == ""


async def test_sdk_with_a_wrong_secret_is_401(api_host: str, jobs: SqliteJobStore) -> None:
    pfop = qiniu.PersistentFop(qiniu.Auth(AK, "not-the-secret"), "photos")
    ret, info = await asyncio.to_thread(pfop.execute, "cat.png", ["imageInfo"])
    assert ret is None and info.status_code == 401
    assert json.loads(info.text_body)["code"] == 401
    await no_jobs(jobs)


async def test_qiniu_scheme_from_the_sdk_is_accepted(client: Client, jobs: SqliteJobStore) -> None:
    url = f"http://127.0.0.1:{client.port}/pfop"
    data = fields("imageInfo")
    resp = await asyncio.to_thread(
        requests.post,
        url,
        data=data,
        auth=QiniuMacRequestsAuth(qiniu.QiniuMacAuth(AK, SK)),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert (await jobs.get(resp.json()["persistentId"])).fops == "imageInfo"


async def test_qiniu_scheme_signed_by_dora(client: Client, jobs: SqliteJobStore) -> None:
    body = _urlencode(fields("imageInfo"))
    host = f"127.0.0.1:{client.port}"
    headers = {"Content-Type": FORM, "X-Qiniu-Date": "20990101T000000Z"}
    headers["Authorization"] = qiniu_authorization(
        CREDS, "POST", "/pfop", host, FORM, headers, body
    )
    resp = await client.post("/pfop", data=body, headers=headers)
    assert resp.status == 401  # a far-future X-Qiniu-Date is refused: replay bound
    headers["X-Qiniu-Date"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    headers["Authorization"] = qiniu_authorization(
        CREDS, "POST", "/pfop", host, FORM, headers, body
    )
    resp = await client.post("/pfop", data=body, headers=headers)
    assert resp.status == 200, await resp.text()


# -- signatures ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/pfop", "/pfop/"])
async def test_both_paths_answer(client: Client, jobs: SqliteJobStore, path: str) -> None:
    status, body, headers = await post_pfop(client, fields("imageInfo"), path=path)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert (await jobs.get(body["persistentId"])).reqid == headers["X-Reqid"]


async def test_missing_signature_is_401(client: Client, jobs: SqliteJobStore) -> None:
    resp = await client.post("/pfop/", data=fields("imageInfo"))
    assert resp.status == 401
    assert await resp.json() == {"code": 401, "error": "missing Authorization header"}
    await no_jobs(jobs)


async def test_tampered_body_is_401(client: Client, jobs: SqliteJobStore) -> None:
    signed = _urlencode(fields("imageInfo"))
    sent = _urlencode(fields("imageView2/2/w/10"))
    auth = qbox_authorization(CREDS, "/pfop/", signed, FORM)
    resp = await client.post(
        "/pfop/", data=sent, headers={"Content-Type": FORM, "Authorization": auth}
    )
    assert resp.status == 401
    assert "signature mismatch" in (await resp.json())["error"]
    await no_jobs(jobs)


async def test_qbox_signature_must_cover_the_body(client: Client, jobs: SqliteJobStore) -> None:
    # QBox signs no body of another type: a captured header would carry any body.
    body = _urlencode(fields("imageInfo"))
    auth = qbox_authorization(CREDS, "/pfop/", body, "text/plain")
    resp = await client.post(
        "/pfop/", data=body, headers={"Content-Type": "text/plain", "Authorization": auth}
    )
    assert resp.status == 401
    assert "does not cover the request body" in (await resp.json())["error"]
    await no_jobs(jobs)


async def test_unknown_access_key_is_401(client: Client, jobs: SqliteJobStore) -> None:
    status, body, _ = await post_pfop(
        client, fields("imageInfo"), creds=Credentials("someone-else", SK)
    )
    assert (status, body["error"]) == (401, "unknown access key")


# -- validation at submit time ----------------------------------------------------


@pytest.mark.parametrize(
    ("fops", "status", "needle"),
    [
        ("imageInfo;noSuchOp/1/w/3", 400, "unknown fop 'noSuchOp'"),
        ("imageView2/2/w/100|noSuchOp", 400, "unknown fop 'noSuchOp'"),
        ("imageView2/9/w/100", 400, "imageView2: invalid argument 'mode'"),
        ("avthumb/mp4/vb/fast", 400, "avthumb: invalid argument 'vb'"),
        ("avconcat/2/format/mp4", 400, "avconcat: invalid argument 'url'"),
        (f"imageInfo|saveas/{b64('bad bucket!:k')}", 400, "saveas: invalid bucket name"),
        ("imageInfo|saveas/%%%", 400, "saveas: invalid argument 'entry'"),
        ("saveas/" + b64("photos:x"), 400, "no fop before saveas"),
        (" ; ", 400, "empty fops"),
    ],
)
async def test_bad_fops_are_refused_before_queueing(
    client: Client, jobs: SqliteJobStore, fops: str, status: int, needle: str
) -> None:
    got, body, _ = await post_pfop(client, fields(fops))
    assert got == status and needle in body["error"], body
    assert body["code"] == status
    await no_jobs(jobs)


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        ({"bucket": ""}, 400, "bucket is required"),
        ({"key": ""}, 400, "key is required"),
        ({"fops": ""}, 400, "fops is required"),
        ({"key": "missing.png"}, 404, "no such key"),
        ({"bucket": "nobucket"}, 404, "no such bucket"),
        ({"pipeline": "nosuch"}, 400, "no such pipeline: nosuch"),
        ({"pipeline": "bad name!"}, 400, "invalid pipeline name"),
        ({"notifyURL": "ftp://127.0.0.1/x"}, 400, "http:// or https://"),
        ({"notifyURL": "http:///nohost"}, 400, "no host"),
        ({"notifyURL": "http://u:p@127.0.0.1/x"}, 400, "credentials"),
        ({"notifyURL": "http://10.1.2.3/hook"}, 403, "private"),
        ({"notifyURL": "http://169.254.169.254/latest"}, 403, "link-local"),
        ({"force": "yes"}, 400, "invalid force"),
        ({"type": "2"}, 400, "invalid type"),
        ({"workflowTemplateID": "t1"}, 400, "workflowTemplateID"),
    ],
)
async def test_bad_fields_are_refused(
    client: Client, jobs: SqliteJobStore, extra: dict[str, str], status: int, needle: str
) -> None:
    got, body, _ = await post_pfop(client, {**fields("imageInfo"), **extra})
    assert got == status and needle in body["error"], body
    await no_jobs(jobs)


async def test_a_full_pipeline_is_429_with_retry_after(
    client: Client, jobs: SqliteJobStore
) -> None:
    await jobs.create_pipeline("tiny", concurrency=1, max_queued=2)
    for _ in range(2):
        status, body, _ = await post_pfop(client, fields("imageInfo", pipeline="tiny"))
        assert status == 200, body
    status, body, headers = await post_pfop(client, fields("imageInfo", pipeline="tiny"))
    assert status == 429 and body["code"] == 429 and "full" in body["error"]
    assert int(headers["Retry-After"]) >= 1
    assert (await jobs.counts())["tiny"]["queued"] == 2
    # Another pipeline is unaffected.
    status, _, _ = await post_pfop(client, fields("imageInfo"))
    assert status == 200


async def test_an_oversized_body_is_413(client: Client, jobs: SqliteJobStore) -> None:
    status, body, _ = await post_pfop(client, fields("imageInfo;" * 20_000))
    assert status == 413, body
    await no_jobs(jobs)


# -- prefop -----------------------------------------------------------------------


async def test_prefop_needs_no_signature(client: Client, jobs: SqliteJobStore) -> None:
    _, body, _ = await post_pfop(client, fields("imageInfo"))
    resp = await client.get("/status/get/prefop", params={"id": body["persistentId"]})
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    status = await resp.json()
    assert status["id"] == body["persistentId"] and status["code"] == 1
    assert status["items"] == [
        {"cmd": "imageInfo", "code": 1, "desc": JobCode.WAITING.desc, "returnOld": 0}
    ]


@pytest.mark.parametrize("job_id", ["z0.0000000000000000deadbeef", "x" * 300, "../etc"])
async def test_prefop_unknown_id_is_612(client: Client, job_id: str) -> None:
    resp = await client.get("/status/get/prefop", params={"id": job_id})
    assert resp.status == 612
    body = await resp.json()
    assert body["code"] == 612 and "no such job" in body["error"]


async def test_prefop_unknown_id_through_the_sdk(api_host: str) -> None:
    ret, info = await asyncio.to_thread(
        qiniu.PersistentFop(AUTH, "photos").get_status, "z0.nosuchjob"
    )
    assert ret is None and info.status_code == 612


async def test_prefop_without_id_is_400(client: Client) -> None:
    resp = await client.get("/status/get/prefop")
    assert resp.status == 400 and (await resp.json())["error"] == "id is required"


# -- persistentOps on upload --------------------------------------------------------


async def test_upload_with_persistent_ops_starts_a_job(
    client: Client, jobs: SqliteJobStore, store: LocalStore
) -> None:
    await jobs.create_pipeline("uploads")
    ops = f"imageView2/2/w/50|saveas/{b64('photos:small.png')};imageInfo"
    token = AUTH.upload_token(
        "photos",
        "up.png",
        policy={
            "persistentOps": ops,
            "persistentNotifyUrl": NOTIFY,
            "persistentPipeline": "uploads",
        },
    )
    region = qiniu.Region(up_host=f"http://127.0.0.1:{client.port}")
    ret, info = await asyncio.to_thread(qiniu.put_data, token, "up.png", PNG_1x1, regions=[region])
    assert info.status_code == 200, info
    job = await jobs.get(ret["persistentId"])
    assert (job.bucket, job.key, job.fops) == ("photos", "up.png", ops)
    assert job.pipeline == "uploads" and job.notify_url == NOTIFY
    assert job.state is JobState.QUEUED and len(job.items) == 2
    assert (await store.stat("photos", "up.png")).size == len(PNG_1x1)


async def test_upload_return_body_gets_the_persistent_id(
    client: Client, jobs: SqliteJobStore
) -> None:
    token = AUTH.upload_token(
        "photos",
        "rb.png",
        policy={"persistentOps": "imageInfo", "returnBody": '{"pid": $(persistentId)}'},
    )
    body = FormData()
    body.add_field("token", token)
    body.add_field("key", "rb.png")
    body.add_field("file", io.BytesIO(PNG_1x1), filename="rb.png")
    resp = await client.post("/", data=body)
    assert resp.status == 200, await resp.text()
    pid = (await resp.json())["pid"]
    assert (await jobs.get(pid)).key == "rb.png"


async def test_upload_without_persistent_ops_has_no_id(
    client: Client, jobs: SqliteJobStore
) -> None:
    region = qiniu.Region(up_host=f"http://127.0.0.1:{client.port}")
    token = AUTH.upload_token("photos", "plain.png")
    ret, info = await asyncio.to_thread(
        qiniu.put_data, token, "plain.png", PNG_1x1, regions=[region]
    )
    assert info.status_code == 200 and "persistentId" not in ret
    await no_jobs(jobs)


async def test_upload_with_bad_persistent_ops_is_400(
    client: Client, jobs: SqliteJobStore, store: LocalStore
) -> None:
    region = qiniu.Region(up_host=f"http://127.0.0.1:{client.port}")
    for policy, message in (
        ({"persistentOps": "nope/1"}, "unknown fop 'nope'"),
        ({"persistentOps": "imageInfo", "persistentPipeline": "ghost"}, "no such pipeline"),
    ):
        token = AUTH.upload_token("photos", "bad.png", policy=policy)
        _, info = await asyncio.to_thread(
            qiniu.put_data, token, "bad.png", PNG_1x1, regions=[region]
        )
        assert info.status_code == 400 and message in info.text_body
    await no_jobs(jobs)
    with pytest.raises(NotFound):  # refused before the file was read: nothing stored
        await store.stat("photos", "bad.png")


# -- without a job store --------------------------------------------------------------


async def test_without_a_job_store_the_routes_are_503(store: LocalStore, tmp_path: Path) -> None:
    ctx = GatewayContext(
        Settings(data_dir=tmp_path), store, KeyRing([CREDS]), NoProcessor(), BUILTIN_CATALOG
    )
    async with TestClient(TestServer(build_app(ctx), host="127.0.0.1")) as client:
        status, body, _ = await post_pfop(client, fields("imageInfo"))
        assert status == 503 and "not enabled" in body["error"]
        resp = await client.get("/status/get/prefop", params={"id": "z0.x"})
        assert resp.status == 503
