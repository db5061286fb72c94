"""Form upload (``POST /``) through the real gateway over HTTP, with upload
tokens made by the official qiniu SDK and, for the full client path, the
SDK's own ``put_data`` pointed at the gateway."""

from __future__ import annotations

import asyncio
import io
import json
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import qiniu
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer
from qiniu.utils import etag_stream

from dora.auth import Credentials, KeyRing
from dora.config import Limits, Settings
from dora.errors import NotFound, ServiceUnavailable
from dora.etag import qiniu_etag
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import AfterUpload, GatewayContext, UploadedObject
from dora.ops import Output
from dora.storage.local import LocalStore

AK, SK = "test-access-key", "test-secret-key"
AUTH = qiniu.Auth(AK, SK)
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


class NoProcessor:
    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise ServiceUnavailable("no processor in this test")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "buckets", Limits()) as opened:
        yield opened


@pytest.fixture
async def make_client(store: LocalStore, tmp_path: Path) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(limits: Limits | None = None, after_upload: AfterUpload | None = None) -> Client:
        settings = Settings(data_dir=tmp_path, limits=limits or Limits())
        ctx = GatewayContext(
            settings,
            store,
            KeyRing([Credentials(AK, SK)]),
            NoProcessor(),
            {},
            after_upload=after_upload,
            spool_dir=tmp_path,
        )
        client: Client = TestClient(TestServer(build_app(ctx), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def form(token: str, data: bytes, key: str | None = None, **fields: str) -> FormData:
    out = FormData()
    out.add_field("token", token)
    if key is not None:
        out.add_field("key", key)
    for name, value in fields.items():
        out.add_field(name.replace("x_", "x:", 1), value)
    out.add_field(
        "file", io.BytesIO(data), filename="upload.bin", content_type="application/octet-stream"
    )
    return out


async def upload(client: Client, body: FormData) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/", data=body)
    return resp.status, await resp.json(content_type=None)


async def assert_absent(store: LocalStore, bucket: str, key: str) -> None:
    with pytest.raises(NotFound):
        await store.stat(bucket, key)


async def test_upload_with_sdk_token_stores_the_object(client: Client, store: LocalStore) -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)  # more than one 4 MiB etag block
    token = AUTH.upload_token("photos", "big.bin")
    status, body = await upload(client, form(token, data, key="big.bin"))
    assert status == 200, body
    expected_hash = etag_stream(io.BytesIO(data))  # the SDK's own etag
    assert body == {"hash": expected_hash, "key": "big.bin"}
    meta, stored = await store.get("photos", "big.bin")
    assert stored == data and meta.hash == expected_hash


async def test_sdk_put_data_against_the_gateway(client: Client, store: LocalStore) -> None:
    region = qiniu.Region(up_host=f"http://127.0.0.1:{client.port}")
    token = AUTH.upload_token("photos", "sdk.png")

    def put() -> Any:
        return qiniu.put_data(
            token, "sdk.png", PNG_1x1, params={"x:user": "ann"}, mime_type="image/png",
            regions=[region],
        )  # fmt: skip

    ret, info = await asyncio.to_thread(put)
    assert info.status_code == 200, info
    assert info.req_id  # the SDK refuses answers without X-Reqid
    assert ret == {"hash": qiniu_etag(PNG_1x1), "key": "sdk.png"}
    meta = await store.stat("photos", "sdk.png")
    assert meta.mime == "image/png"

    # The SDK reads our error answers too: a bad token is its 401.
    bad = qiniu.Auth(AK, "wrong-secret").upload_token("photos", "sdk.png")
    ret, info = await asyncio.to_thread(
        qiniu.put_data, bad, "sdk.png", b"x", regions=[region]
    )  # fmt: skip
    assert ret is None and info.status_code == 401


async def test_bad_and_expired_tokens_are_401(client: Client, store: LocalStore) -> None:
    wrong = qiniu.Auth(AK, "not-the-secret").upload_token("photos", "a")
    expired = AUTH.upload_token("photos", "a", expires=-10)
    unknown = qiniu.Auth("someone-else", SK).upload_token("photos", "a")
    for token in (wrong, expired, unknown, "garbage", ""):
        status, body = await upload(client, form(token, b"data", key="a"))
        assert status == 401, (token, body)
        assert body["code"] == 401
    resp = await client.post("/", data=form("", b"x", key="a"))
    assert resp.headers["Cache-Control"] == "no-store"
    await assert_absent(store, "photos", "a")


async def test_missing_token_or_file(client: Client) -> None:
    body = FormData()
    body.add_field("key", "a")
    body.add_field("file", b"x", filename="f")
    status, _ = await upload(client, body)
    assert status == 401
    only_token = FormData(default_to_multipart=True)
    only_token.add_field("token", AUTH.upload_token("photos"))
    only_token.add_field("key", "a")
    status, answer = await upload(client, only_token)
    assert status == 400 and "file" in answer["error"]
    resp = await client.post("/", data=b"raw", headers={"Content-Type": "text/plain"})
    assert resp.status == 400


async def test_key_outside_scope_is_403(client: Client, store: LocalStore) -> None:
    token = AUTH.upload_token("photos", "allowed.txt")
    status, body = await upload(client, form(token, b"x", key="other.txt"))
    assert (status, body["error"]) == (403, "key doesn't match with scope")
    # A bucket:key token needs the form to name the key.
    status, body = await upload(client, form(token, b"x"))
    assert status == 403
    await assert_absent(store, "photos", "other.txt")


async def test_prefix_scope(client: Client, store: LocalStore) -> None:
    token = AUTH.upload_token("photos", "users/ann/", policy={"isPrefixalScope": 1})
    status, _ = await upload(client, form(token, b"1", key="users/ann/a.txt"))
    assert status == 200
    status, _ = await upload(client, form(token, b"2", key="users/bob/a.txt"))
    assert status == 403
    # Prefix scopes only add, as Qiniu's do.
    status, _ = await upload(client, form(token, b"changed", key="users/ann/a.txt"))
    assert status == 614


async def test_bucket_scope_adds_only_unless_the_content_is_the_same(
    client: Client, store: LocalStore
) -> None:
    token = AUTH.upload_token("photos")
    status, first = await upload(client, form(token, b"original", key="k.txt"))
    assert status == 200
    status, body = await upload(client, form(token, b"original", key="k.txt"))
    assert (status, body) == (200, first)
    status, body = await upload(client, form(token, b"different", key="k.txt"))
    assert (status, body["code"]) == (614, 614)
    assert (await store.get("photos", "k.txt"))[1] == b"original"


async def test_bucket_key_scope_overwrites_and_insert_only_does_not(
    client: Client, store: LocalStore
) -> None:
    token = AUTH.upload_token("photos", "k.txt")
    assert (await upload(client, form(token, b"one", key="k.txt")))[0] == 200
    assert (await upload(client, form(token, b"two", key="k.txt")))[0] == 200
    assert (await store.get("photos", "k.txt"))[1] == b"two"
    insert_only = AUTH.upload_token("photos", "k.txt", policy={"insertOnly": 1})
    assert (await upload(client, form(insert_only, b"three", key="k.txt")))[0] == 614
    assert (await store.get("photos", "k.txt"))[1] == b"two"


async def test_no_key_uses_the_hash_or_save_key(client: Client, store: LocalStore) -> None:
    data = b"content addressed"
    status, body = await upload(client, form(AUTH.upload_token("photos"), data))
    assert status == 200
    assert body == {"hash": qiniu_etag(data), "key": qiniu_etag(data)}
    assert (await store.get("photos", qiniu_etag(data)))[1] == data

    token = AUTH.upload_token("photos", policy={"saveKey": "u/$(x:user)/$(etag)$(ext)"})
    body_form = form(token, data, x_user="ann")
    status, body = await upload(client, body_form)
    assert status == 200, body
    assert body["key"] == f"u/ann/{qiniu_etag(data)}.bin"  # fname upload.bin
    assert (await store.get("photos", body["key"]))[1] == data


async def test_return_body_magic_variables(client: Client) -> None:
    policy = {
        "returnBody": '{"key":$(key),"hash":"$(etag)","size":$(fsize),"bucket":"$(bucket)",'
        '"user":$(x:user),"mime":$(mimeType),"name":"$(fname)","missing":$(x:nope)}'
    }
    token = AUTH.upload_token("photos", "rb.png", policy=policy)
    body = form(token, PNG_1x1, key="rb.png", x_user='a "quoted" name')
    resp = await client.post("/", data=body)
    assert resp.status == 200
    answer = json.loads(await resp.text())
    assert answer == {
        "key": "rb.png",
        "hash": qiniu_etag(PNG_1x1),
        "size": len(PNG_1x1),
        "bucket": "photos",
        "user": 'a "quoted" name',
        "mime": "image/png",  # octet-stream declared: sniffed from the content
        "name": "upload.bin",
        "missing": None,
    }


async def test_oversized_upload_is_413_and_stores_nothing(
    make_client: MakeClient, store: LocalStore
) -> None:
    client = await make_client(limits=Limits(max_upload_bytes=64 * 1024))
    token = AUTH.upload_token("photos", "big")
    status, body = await upload(client, form(token, b"x" * (64 * 1024 + 1), key="big"))
    assert (status, body["code"]) == (413, 413)
    await assert_absent(store, "photos", "big")
    # The policy's fsizeLimit is a limit too.
    limited = AUTH.upload_token("photos", "big", policy={"fsizeLimit": 100})
    status, _ = await upload(client, form(limited, b"x" * 101, key="big"))
    assert status == 413
    await assert_absent(store, "photos", "big")
    status, _ = await upload(client, form(limited, b"x" * 100, key="big"))
    assert status == 200


async def test_oversized_upload_without_key_stores_nothing(
    make_client: MakeClient, tmp_path: Path, store: LocalStore
) -> None:
    client = await make_client(limits=Limits(max_upload_bytes=1000))
    status, _ = await upload(client, form(AUTH.upload_token("photos"), b"y" * 5000))
    assert status == 413
    assert await store.buckets() == []
    spooled = await asyncio.to_thread(lambda: list(tmp_path.glob("dora-upload-*")))
    assert not spooled  # the spool file is gone


async def test_crc32_is_verified(client: Client, store: LocalStore) -> None:
    data = b"checksummed bytes"
    token = AUTH.upload_token("photos", "c.txt")
    good = str(zlib.crc32(data))
    bad = str((zlib.crc32(data) + 1) % 2**32)
    status, body = await upload(client, form(token, data, key="c.txt", crc32=bad))
    assert status == 400 and "crc32" in body["error"]
    await assert_absent(store, "photos", "c.txt")
    status, _ = await upload(client, form(token, data, key="c.txt", crc32="not-a-number"))
    assert status == 400
    status, _ = await upload(client, form(token, data, key="c.txt", crc32=good))
    assert status == 200


async def test_path_traversal_keys_are_400(client: Client, tmp_path: Path) -> None:
    for key in ("../escape.txt", "a/../../b", "/abs", "a//b"):
        token = AUTH.upload_token("photos", key)
        status, body = await upload(client, form(token, b"x", key=key))
        assert status == 400, (key, body)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "buckets" / "escape.txt").exists()


async def test_mime_limit(client: Client, store: LocalStore) -> None:
    token = AUTH.upload_token("photos", "m", policy={"mimeLimit": "image/*"})
    status, _ = await upload(client, form(token, b"plain text", key="m"))
    assert status == 403
    await assert_absent(store, "photos", "m")
    status, _ = await upload(client, form(token, PNG_1x1, key="m"))
    assert status == 200
    deny = AUTH.upload_token("photos", "n", policy={"mimeLimit": "!image/png"})
    assert (await upload(client, form(deny, PNG_1x1, key="n")))[0] == 403


async def test_declared_mime_type_is_kept(client: Client, store: LocalStore) -> None:
    token = AUTH.upload_token("photos", "doc")
    assert (await upload(client, form(token, b"{}", key="doc", mimeType="application/x-doc")))[
        0
    ] == 200
    assert (await store.stat("photos", "doc")).mime == "application/x-doc"


async def test_after_upload_hook_sees_the_object_and_extends_the_answer(
    make_client: MakeClient,
) -> None:
    seen: list[UploadedObject] = []

    async def hook(uploaded: UploadedObject) -> Mapping[str, Any] | None:
        seen.append(uploaded)
        return {"persistentId": "job-1"} if uploaded.policy.persistent_ops else None

    client = await make_client(after_upload=hook)
    token = AUTH.upload_token("photos", "p.png", policy={"persistentOps": "imageInfo"})
    status, body = await upload(client, form(token, PNG_1x1, key="p.png", x_tag="t1"))
    assert status == 200
    assert body == {"hash": qiniu_etag(PNG_1x1), "key": "p.png", "persistentId": "job-1"}
    assert seen[0].meta.key == "p.png"
    assert seen[0].custom_vars == {"x:tag": "t1"}
    assert seen[0].policy.persistent_ops == "imageInfo"
