"""Resumable uploads (Qiniu's v1 mkblk/bput/mkfile and v2 multipart) through
the real gateway over HTTP: the official qiniu SDK's ``put_file`` and
``put_stream`` end to end, the raw protocol for what the SDK never sends
(bput, forged or stale ctx, bad parts), and the on-disk part store's bounds."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import qiniu
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from qiniu.utils import etag_stream

from dora.auth import Credentials, KeyRing
from dora.b64 import urlsafe_b64encode
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.config import Limits, Settings
from dora.errors import NoSuchUpload, NotFound, ServiceUnavailable, UploadExpired
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.gateway.jobs_wiring import with_jobs
from dora.gateway.parts import PartLimits, PartStore
from dora.gateway.resumable_v1 import BlockCtx, decode_ctx, encode_ctx
from dora.jobs import JobState
from dora.jobstore import SqliteJobStore
from dora.layout import uploads_root
from dora.ops import Output
from dora.storage.local import LocalStore

AK, SK = "test-access-key", "test-secret-key"
OTHER = Credentials("other-access-key", "other-secret-key")
AUTH = qiniu.Auth(AK, SK)
MiB = 1024 * 1024
PART = 4 * MiB
SIZE = 9 * MiB + 512 * 1024 + 7  # three 4 MiB blocks / parts, the last one short
VERSIONS = ["v1", "v2"]

# put_file and put_stream are the SDK's v1 entry points, deprecated but still shipped.
pytestmark = pytest.mark.filterwarnings("ignore:DEPRECATED:DeprecationWarning")

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


class NoProcessor:
    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise ServiceUnavailable("no processor in this test")


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def data_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "buckets", Limits()) as opened:
        yield opened


@pytest.fixture
async def make_client(store: LocalStore, tmp_path: Path) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(limits: Limits | None = None, jobs: SqliteJobStore | None = None) -> Client:
        settings = Settings(data_dir=tmp_path, limits=limits or Limits())
        keys = KeyRing([Credentials(AK, SK), OTHER])
        ctx = GatewayContext(settings, store, keys, NoProcessor(), BUILTIN_CATALOG)
        app = build_app(ctx if jobs is None else with_jobs(ctx, jobs))
        client: Client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def put_file(client: Client, token: str, key: str | None, path: Path, version: str,
             **kwargs: Any) -> Awaitable[tuple[Any, Any]]:  # fmt: skip
    """The SDK's put_file in a thread, pointed at the gateway.

    Each call records its progress apart unless told otherwise: a record
    left by a failed upload would send the next one to that upload's host.
    """
    if "upload_progress_recorder" not in kwargs:
        records = tempfile.mkdtemp(dir=path.parent)
        kwargs["upload_progress_recorder"] = qiniu.UploadProgressRecorder(records)
    region = qiniu.Region(up_host=f"http://127.0.0.1:{client.port}")
    return asyncio.to_thread(
        qiniu.put_file, token, key, str(path), version=version, part_size=PART,
        regions=[region], **kwargs,
    )  # fmt: skip


def leftovers(tmp_path: Path) -> list[Path]:
    root = uploads_root(Settings(data_dir=tmp_path))
    return [p for p in root.rglob("*") if p.is_file() and p.name != "secret"]


async def assert_absent(store: LocalStore, bucket: str, key: str) -> None:
    with pytest.raises(NotFound):
        await store.stat(bucket, key)


def up_token(token: str) -> dict[str, str]:
    return {"Authorization": f"UpToken {token}"}


# -- the SDK end to end -------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_sdk_put_file(
    version: str, client: Client, store: LocalStore, data: bytes, data_file: Path, tmp_path: Path
) -> None:
    ret, info = await put_file(client, AUTH.upload_token("photos", "big.bin"), "big.bin",
                               data_file, version)  # fmt: skip
    assert info.status_code == 200, info
    expected = etag_stream(io.BytesIO(data))
    assert ret == {"hash": expected, "key": "big.bin"}
    meta, stored = await store.get("photos", "big.bin")
    assert stored == data and meta.hash == expected and meta.size == SIZE
    assert leftovers(tmp_path) == []  # the blocks or parts are gone


@pytest.mark.parametrize("version", VERSIONS)
async def test_sdk_put_stream_keyed_by_hash(
    version: str, client: Client, store: LocalStore, data: bytes, tmp_path: Path
) -> None:
    region = qiniu.Region(up_host=f"http://127.0.0.1:{client.port}")
    recorder = qiniu.UploadProgressRecorder(str(tmp_path))
    ret, info = await asyncio.to_thread(
        qiniu.put_stream, AUTH.upload_token("photos"), None, io.BytesIO(data), "s.bin", SIZE,
        version=version, part_size=PART, regions=[region], upload_progress_recorder=recorder,
    )  # fmt: skip
    assert info.status_code == 200, info
    expected = etag_stream(io.BytesIO(data))
    assert ret == {"hash": expected, "key": expected}
    assert (await store.get("photos", expected))[1] == data


@pytest.mark.parametrize("version", VERSIONS)
async def test_sdk_resumes_an_interrupted_upload(
    version: str, client: Client, store: LocalStore, data: bytes, data_file: Path, tmp_path: Path
) -> None:
    token = AUTH.upload_token("photos", "resumed.bin")
    recorder = qiniu.UploadProgressRecorder(str(tmp_path))

    def interrupt(uploaded: int, total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await put_file(client, token, "resumed.bin", data_file, version,
                       upload_progress_recorder=recorder, progress_handler=interrupt)  # fmt: skip
    record = recorder.get_upload_record("big.bin", "resumed.bin")
    done = len(record["contexts" if version == "v1" else "etags"])
    assert done == 1
    await asyncio.sleep(0.3)  # let the first run's other threads finish their parts

    calls: list[int] = []
    ret, info = await put_file(client, token, "resumed.bin", data_file, version,
                               upload_progress_recorder=recorder,
                               progress_handler=lambda up, total: calls.append(up))  # fmt: skip
    assert info.status_code == 200, info
    assert len(calls) == 3 - done  # the recorded part was not sent again
    assert ret["hash"] == etag_stream(io.BytesIO(data))
    assert (await store.get("photos", "resumed.bin"))[1] == data
    assert recorder.get_upload_record("big.bin", "resumed.bin") is None


@pytest.mark.parametrize("version", VERSIONS)
async def test_sdk_reports_a_stale_record(
    version: str, client: Client, store: LocalStore, data: bytes, data_file: Path, tmp_path: Path
) -> None:
    token = AUTH.upload_token("photos", "stale.bin")
    recorder = qiniu.UploadProgressRecorder(str(tmp_path))

    def interrupt(uploaded: int, total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await put_file(client, token, "stale.bin", data_file, version,
                       upload_progress_recorder=recorder, progress_handler=interrupt)  # fmt: skip
    await asyncio.sleep(0.3)
    root = uploads_root(Settings(data_dir=tmp_path))
    for path in [*(root / "v1").iterdir(), *(root / "v2").iterdir()]:  # as the sweep would
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    # The ctx (701) or uploadId (612) is gone, which the SDK reports as Qiniu would.
    ret, info = await put_file(client, token, "stale.bin", data_file, version,
                               upload_progress_recorder=recorder)  # fmt: skip
    assert ret is None and info.status_code == (701 if version == "v1" else 612), info
    await assert_absent(store, "photos", "stale.bin")
    recorder.delete_upload_record("big.bin", "stale.bin")
    ret, info = await put_file(client, token, "stale.bin", data_file, version,
                               upload_progress_recorder=recorder)  # fmt: skip
    assert info.status_code == 200, info
    assert (await store.get("photos", "stale.bin"))[1] == data


@pytest.mark.parametrize("version", VERSIONS)
async def test_expired_or_bad_token_is_401(
    version: str, client: Client, store: LocalStore, data_file: Path
) -> None:
    for token in (
        AUTH.upload_token("photos", "t.bin", expires=-10),
        qiniu.Auth(AK, "wrong").upload_token("photos", "t.bin"),
    ):
        ret, info = await put_file(client, token, "t.bin", data_file, version)
        assert ret is None and info.status_code == 401
    await assert_absent(store, "photos", "t.bin")
    resp = await client.post("/mkblk/4", data=b"abcd")
    assert resp.status == 401


@pytest.mark.parametrize("version", VERSIONS)
async def test_over_the_size_limit_is_413_and_stores_nothing(
    version: str, make_client: MakeClient, store: LocalStore, data_file: Path
) -> None:
    client = await make_client(limits=Limits(max_upload_bytes=6 * MiB))
    token = AUTH.upload_token("photos", "big.bin")
    ret, info = await put_file(client, token, "big.bin", data_file, version)
    assert ret is None and info.status_code == 413, info
    limited = AUTH.upload_token("photos", "big.bin", policy={"fsizeLimit": 5 * MiB})
    ret, info = await put_file(await make_client(), limited, "big.bin", data_file, version)
    assert info.status_code == 413, info
    await assert_absent(store, "photos", "big.bin")


@pytest.mark.parametrize("version", VERSIONS)
async def test_insert_only_on_completion(
    version: str, client: Client, store: LocalStore, data: bytes, data_file: Path, tmp_path: Path
) -> None:
    bucket_token = AUTH.upload_token("photos")  # a bucket scope only adds
    first, info = await put_file(client, bucket_token, "k.bin", data_file, version)
    assert info.status_code == 200, info
    again, info = await put_file(client, bucket_token, "k.bin", data_file, version)
    assert (info.status_code, again) == (200, first)  # the very same content: success
    other = tmp_path / "other" / "big.bin"
    other.parent.mkdir()
    other.write_bytes(data[::-1])
    ret, info = await put_file(client, bucket_token, "k.bin", other, version)
    assert ret is None and info.status_code == 614
    insert_only = AUTH.upload_token("photos", "k.bin", policy={"insertOnly": 1})
    ret, info = await put_file(client, insert_only, "k.bin", other, version)
    assert info.status_code == 614
    assert (await store.get("photos", "k.bin"))[1] == data
    overwrite = AUTH.upload_token("photos", "k.bin")  # bucket:key overwrites
    ret, info = await put_file(client, overwrite, "k.bin", other, version)
    assert info.status_code == 200
    assert (await store.get("photos", "k.bin"))[1] == data[::-1]


@pytest.mark.parametrize("version", VERSIONS)
async def test_persistent_ops_start_a_job(
    version: str, make_client: MakeClient, tmp_path: Path, data_file: Path, store: LocalStore
) -> None:
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as jobs:
        client = await make_client(jobs=jobs)
        policy = {
            "persistentOps": "imageInfo",
            "returnBody": '{"key":$(key),"id":$(persistentId),"name":$(fname),'
            '"user":$(x:user),"size":$(fsize)}',
        }
        token = AUTH.upload_token("photos", "v.png", policy=policy)
        ret, info = await put_file(client, token, "v.png", data_file, version,
                                   params={"x:user": "ann"})  # fmt: skip
        assert info.status_code == 200, info
        assert ret["key"] == "v.png" and ret["name"] == "big.bin"
        assert ret["user"] == "ann" and ret["size"] == SIZE
        job = await jobs.get(ret["id"])
        assert (job.bucket, job.key, job.fops) == ("photos", "v.png", "imageInfo")
        assert job.state is JobState.QUEUED

        # A policy whose follow-up cannot run is refused before any data is taken.
        bad = AUTH.upload_token("photos", "w.png", policy={"persistentOps": "nosuchop/1"})
        ret, info = await put_file(client, bad, "w.png", data_file, version)
        assert info.status_code == 400, info
        await assert_absent(store, "photos", "w.png")
        assert leftovers(tmp_path) == []


# -- v1 on the wire -----------------------------------------------------------


async def mkblk(client: Client, token: str, size: int, chunk: bytes) -> tuple[int, Any]:
    resp = await client.post(f"/mkblk/{size}", data=chunk, headers=up_token(token))
    return resp.status, await resp.json()


async def bput(client: Client, token: str, ctx: str, offset: int, chunk: bytes) -> tuple[int, Any]:
    resp = await client.post(f"/bput/{ctx}/{offset}", data=chunk, headers=up_token(token))
    return resp.status, await resp.json()


async def mkfile(client: Client, token: str, size: int, ctxs: Sequence[str],
                 **params: str) -> tuple[int, Any]:  # fmt: skip
    tail = "".join(f"/{name}/{urlsafe_b64encode(value)}" for name, value in params.items())
    resp = await client.post(f"/mkfile/{size}{tail}", data=",".join(ctxs),
                             headers=up_token(token))  # fmt: skip
    return resp.status, await resp.json()


async def test_v1_chunks_offsets_and_answers(client: Client, store: LocalStore) -> None:
    token = AUTH.upload_token("photos", "c.bin")
    chunks = [os.urandom(1000), os.urandom(1000), os.urandom(500)]
    status, first = await mkblk(client, token, 2500, chunks[0])
    assert status == 200, first
    assert first["crc32"] == zlib.crc32(chunks[0]) and first["offset"] == 1000
    sha1 = base64.urlsafe_b64encode(hashlib.sha1(chunks[0]).digest()).decode()
    assert first["checksum"] == sha1
    assert first["host"] == f"http://127.0.0.1:{client.port}"
    assert time.time() < first["expired_at"] < time.time() + 2 * 86400

    status, body = await bput(client, token, first["ctx"], 500, chunks[1])
    assert status == 701, body  # the ctx is for the chunk at 1000
    status, second = await bput(client, token, first["ctx"], 1000, chunks[1])
    assert status == 200 and second["offset"] == 2000
    status, again = await bput(client, token, first["ctx"], 1000, chunks[1])
    assert status == 200 and again["offset"] == 2000  # a lost answer: resent, replaced
    status, body = await mkfile(client, token, 2500, [again["ctx"]], key="c.bin")
    assert status == 400 and "incomplete" in body["error"]
    status, body = await bput(client, token, again["ctx"], 2000, chunks[2] + b"x")
    assert status == 400  # longer than what is left of the block
    status, last = await bput(client, token, again["ctx"], 2000, chunks[2])
    assert status == 200 and last["offset"] == 2500
    status, body = await bput(client, token, last["ctx"], 2500, b"y")
    assert status == 400  # the block is complete
    status, body = await mkfile(client, token, 2600, [last["ctx"]], key="c.bin")
    assert status == 400  # the sizes do not add up
    status, body = await mkfile(client, token, 2500, [last["ctx"]], key="c.bin",
                                mimeType="text/x-test")  # fmt: skip
    assert status == 200, body
    meta, stored = await store.get("photos", "c.bin")
    assert stored == b"".join(chunks) and body["hash"] == meta.hash
    assert meta.mime == "text/x-test"


async def test_v1_refuses_malformed_blocks(client: Client) -> None:
    token = AUTH.upload_token("photos", "m.bin")
    assert (await mkblk(client, token, 4 * MiB + 1, b"x"))[0] == 400
    for size in ("abc", "\u0661\u0662", "9" * 30, "-1"):
        resp = await client.post(f"/mkblk/{size}", data=b"x", headers=up_token(token))
        assert resp.status == 400, size
    assert (await mkblk(client, token, 100, b"x" * 101))[0] == 400
    status, small = await mkblk(client, token, 100, b"x" * 100)
    assert status == 200
    # Every block but the last is 4 MiB: two small blocks are no file.
    status, body = await mkfile(client, token, 200, [small["ctx"], small["ctx"]], key="m.bin")
    assert status == 400, body


async def test_v1_forged_or_foreign_ctx_is_refused(
    client: Client, store: LocalStore, tmp_path: Path
) -> None:
    token = AUTH.upload_token("photos", "f.bin")
    status, block = await mkblk(client, token, 10, b"0123456789")
    assert status == 200
    ctx = block["ctx"]
    payload, _, mac = ctx.partition(".")
    flipped = ("A" if payload[5] != "A" else "B").join((payload[:5], payload[6:]))
    for forged in (f"{flipped}.{mac}", ctx[:-2], "garbage", ctx.replace(".", "")):
        assert (await mkfile(client, token, 10, [forged], key="f.bin"))[0] == 400, forged
        assert (await bput(client, token, forged, 10, b"x"))[0] == 400, forged
    # A genuine ctx is still bound to the access key that made it.
    foreign = qiniu.Auth(OTHER.access_key, OTHER.secret_key).upload_token("photos", "f.bin")
    status, body = await mkfile(client, foreign, 10, [ctx], key="f.bin")
    assert status == 400, body
    await assert_absent(store, "photos", "f.bin")
    # A block swept away (expired) is Qiniu's 701.
    for path in leftovers(tmp_path):
        path.unlink()
    assert (await mkfile(client, token, 10, [ctx], key="f.bin"))[0] == 701


async def test_ctx_expiry_is_701(tmp_path: Path) -> None:
    parts = PartStore(tmp_path / "uploads", PartLimits(max_total_bytes=MiB))
    key = await parts.signing_key()
    block_id = await parts.new_block()
    text = encode_ctx(key, BlockCtx(block_id, AK, 10, 10, int(time.time()) + 60))
    assert decode_ctx(key, text, AK).block_id == block_id
    with pytest.raises(UploadExpired) as caught:
        decode_ctx(key, text, AK, now=time.time() + 61)
    assert caught.value.status == 701
    # Another process on the same data directory signs with the same key.
    assert await PartStore(tmp_path / "uploads", parts.limits).signing_key() == key


# -- v2 on the wire -----------------------------------------------------------


def uploads_url(bucket: str, key: str | None, *rest: str | int) -> str:
    encoded = "~" if key is None else urlsafe_b64encode(key)
    return "/".join([f"/buckets/{bucket}/objects/{encoded}/uploads", *map(str, rest)])


async def test_v2_parts_listing_and_completion(client: Client, store: LocalStore) -> None:
    token = AUTH.upload_token("photos", "p.bin")
    auth = up_token(token)
    resp = await client.post(uploads_url("photos", "p.bin"), headers=auth)
    assert resp.status == 200
    started = await resp.json()
    upload_id = started["uploadId"]
    assert time.time() < started["expireAt"]
    big, small = os.urandom(MiB + 10), os.urandom(300)

    url1, url2 = (
        uploads_url("photos", "p.bin", upload_id, 1),
        uploads_url("photos", "p.bin", upload_id, 2),
    )
    resp = await client.put(url1, data=big, headers={**auth, "Content-MD5": "0" * 32})
    assert resp.status == 400  # Content-MD5 mismatch
    big_md5 = hashlib.md5(big).hexdigest()  # hex, as the SDK sends it
    resp = await client.put(url1, data=big, headers={**auth, "Content-MD5": big_md5})
    assert resp.status == 200
    part1 = await resp.json()
    assert part1["md5"] == big_md5
    md5_b64 = base64.b64encode(hashlib.md5(small).digest()).decode()
    resp = await client.put(url2, data=small, headers={**auth, "Content-MD5": md5_b64})
    assert resp.status == 200
    part2 = await resp.json()
    resp = await client.put(uploads_url("photos", "p.bin", upload_id, 3), data=b"z", headers=auth)
    assert resp.status == 400  # only one part may be under 1 MiB

    resp = await client.get(uploads_url("photos", "p.bin", upload_id), headers=auth,
                            params={"max-parts": "1"})  # fmt: skip
    listed = await resp.json()
    assert [p["partNumber"] for p in listed["parts"]] == [1] and listed["partNumberMarker"] == 1
    assert listed["parts"][0]["size"] == len(big) and listed["uploadId"] == upload_id

    complete_url = uploads_url("photos", "p.bin", upload_id)
    wrong = {"parts": [{"etag": part1["etag"], "partNumber": 1}, {"etag": "x", "partNumber": 2}]}
    backwards = {"parts": [{"etag": part2["etag"], "partNumber": 2},
                           {"etag": part1["etag"], "partNumber": 1}]}  # fmt: skip
    small_first = {"parts": [{"etag": part2["etag"], "partNumber": 2}]}
    refused: list[object] = [wrong, backwards, {"parts": []}, "nonsense"]
    for body in refused:
        resp = await client.post(complete_url, data=json.dumps(body), headers=auth)
        assert resp.status == 400, body
    good = {
        "parts": [
            {"etag": part1["etag"], "partNumber": 1},
            {"etag": part2["etag"], "partNumber": 2},
        ],
        "fname": "p.bin",
        "mimeType": "application/x-part",
        "customVars": {"x:a": "b"},
    }
    resp = await client.post(complete_url, data=json.dumps(good), headers=auth)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    meta, stored = await store.get("photos", "p.bin")
    assert stored == big + small and answer == {"hash": meta.hash, "key": "p.bin"}
    assert meta.mime == "application/x-part"
    resp = await client.post(complete_url, data=json.dumps(small_first), headers=auth)
    assert resp.status == 612  # done: the upload is gone


async def test_v2_ownership_scope_and_abort(client: Client, store: LocalStore) -> None:
    token = AUTH.upload_token("photos", "o.bin")
    auth = up_token(token)
    resp = await client.post(uploads_url("videos", "o.bin"), headers=auth)
    assert resp.status == 403  # not the token's bucket
    resp = await client.post(uploads_url("photos", "elsewhere.bin"), headers=auth)
    assert resp.status == 403  # not the token's key
    resp = await client.post(uploads_url("photos", None), headers=auth)
    assert resp.status == 403  # a bucket:key token must name its key
    resp = await client.post(uploads_url("photos", "o.bin"), headers=auth)
    upload_id = (await resp.json())["uploadId"]

    foreign = up_token(qiniu.Auth(OTHER.access_key, OTHER.secret_key).upload_token("photos"))
    part_url = uploads_url("photos", "o.bin", upload_id, 1)
    assert (await client.put(part_url, data=b"x", headers=foreign)).status == 612
    assert (await client.put(uploads_url("photos", "o.bin", "f" * 32, 1), data=b"x",
                             headers=auth)).status == 612  # fmt: skip
    assert (await client.put(part_url, data=b"x", headers={})).status == 401
    assert (
        await client.delete(uploads_url("photos", "o.bin", upload_id), headers=auth)
    ).status == 200
    assert (await client.put(part_url, data=b"x", headers=auth)).status == 612
    await assert_absent(store, "photos", "o.bin")


# -- the part store's bounds --------------------------------------------------


async def body_of(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_part_store_bounds_and_sweep(tmp_path: Path) -> None:
    limits = PartLimits(max_total_bytes=3 * MiB, max_uploads=2, max_blocks=2, ttl=3600)
    parts = PartStore(tmp_path / "uploads", limits)
    first = await parts.create_session(AK, "photos", "a")
    await parts.create_session(AK, "photos", "b")
    with pytest.raises(ServiceUnavailable):
        await parts.create_session(AK, "photos", "c")
    await parts.put_part(first, 1, body_of(b"x" * 2 * MiB), 2 * MiB, limit=10 * MiB,
                         expected_md5=None)  # fmt: skip
    with pytest.raises(ServiceUnavailable) as full:  # 2 MiB on disk, 3 MiB allowed
        await parts.put_part(first, 2, body_of(b"y" * 2 * MiB), 2 * MiB, limit=10 * MiB,
                             expected_md5=None)  # fmt: skip
    assert full.value.retry_after
    await parts.new_block()
    await parts.new_block()
    with pytest.raises(ServiceUnavailable):
        await parts.new_block()

    # Expired uploads and blocks are swept; live ones stay.
    expired = PartStore(tmp_path / "uploads", dataclasses.replace(limits, ttl=-1.0, max_uploads=10))
    await expired.sweep()
    assert list((tmp_path / "uploads" / "v1").iterdir()) == []
    assert list((tmp_path / "uploads" / "v2").iterdir()) != []  # their own expiry is an hour
    stale = await expired.create_session(AK, "photos", "d")
    with pytest.raises(NoSuchUpload):
        await expired.get_session(stale.upload_id)
    await expired.sweep()
    assert not stale.path.exists() and first.path.exists()
