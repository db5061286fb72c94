"""Plain downloads through the real gateway app over HTTP on 127.0.0.1:
ETag, Last-Modified, conditional requests, ranges, HEAD, and the error shape."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from dora.auth import Credentials, KeyRing
from dora.config import Limits, Settings
from dora.errors import ServiceUnavailable
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.gateway.errors import add_reqid_header, error_middleware
from dora.ops import Output
from dora.storage.local import LocalStore

CREDS = Credentials("test-access-key", "test-secret-key")
Client = TestClient[web.Request, web.Application]


class NoProcessor:
    """Plain downloads never reach the processor."""

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise ServiceUnavailable("no processor in this test")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "buckets", Limits()) as opened:
        yield opened


@pytest.fixture
async def client(store: LocalStore, tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(data_dir=tmp_path)
    ctx = GatewayContext(settings, store, KeyRing([CREDS]), NoProcessor(), {})
    async with TestClient(TestServer(build_app(ctx), host="127.0.0.1")) as test_client:
        yield test_client


async def test_get_streams_the_object_with_its_validators(
    client: Client, store: LocalStore
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several store chunks
    meta = await store.put("photos", "dir/cat.bin", data, mime="application/x-test")
    resp = await client.get("/photos/dir/cat.bin")
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["ETag"] == f'"{meta.hash}"'
    assert resp.headers["Content-Type"] == "application/x-test"
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Last-Modified"] == formatdate(int(meta.mtime), usegmt=True)
    assert resp.headers["X-Reqid"]


async def test_head_has_headers_and_no_body(client: Client, store: LocalStore) -> None:
    meta = await store.put("photos", "a.txt", b"hello world")
    resp = await client.head("/photos/a.txt")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "11"
    assert resp.headers["ETag"] == f'"{meta.hash}"'
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert await resp.read() == b""


async def test_empty_object(client: Client, store: LocalStore) -> None:
    await store.put("photos", "empty", b"")
    resp = await client.get("/photos/empty")
    assert resp.status == 200
    assert await resp.read() == b""
    assert resp.headers["Content-Length"] == "0"


async def test_if_none_match_and_if_modified_since_answer_304(
    client: Client, store: LocalStore
) -> None:
    meta = await store.put("photos", "a.txt", b"hello")
    etag = f'"{meta.hash}"'
    resp = await client.get("/photos/a.txt", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.headers["ETag"] == etag
    resp = await client.get("/photos/a.txt", headers={"If-None-Match": f'"other", W/{etag}'})
    assert resp.status == 304
    resp = await client.get("/photos/a.txt", headers={"If-None-Match": '"other"'})
    assert resp.status == 200
    later = formatdate(meta.mtime + 60, usegmt=True)
    earlier = formatdate(meta.mtime - 60, usegmt=True)
    assert (await client.get("/photos/a.txt", headers={"If-Modified-Since": later})).status == 304
    resp = await client.get("/photos/a.txt", headers={"If-Modified-Since": earlier})
    assert resp.status == 200
    # If-None-Match decides when both are sent.
    resp = await client.get(
        "/photos/a.txt", headers={"If-None-Match": '"other"', "If-Modified-Since": later}
    )
    assert resp.status == 200


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=10-", 10, 99), ("bytes=-5", 95, 99), ("bytes=90-500", 90, 99)],
)
async def test_ranges_answer_206(
    client: Client,
    store: LocalStore,
    header: str,
    start: int,
    end: int,
) -> None:
    data = bytes(range(100))
    await store.put("photos", "r.bin", data)
    resp = await client.get("/photos/r.bin", headers={"Range": header})
    assert resp.status == 206
    assert await resp.read() == data[start : end + 1]
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/100"
    assert resp.headers["Content-Length"] == str(end - start + 1)


async def test_unsatisfiable_range_is_416(client: Client, store: LocalStore) -> None:
    await store.put("photos", "r.bin", b"0123456789")
    for header in ("bytes=10-", "bytes=-0", "bytes=100-200"):
        resp = await client.get("/photos/r.bin", headers={"Range": header})
        assert resp.status == 416, header
        assert resp.headers["Content-Range"] == "bytes */10"
        assert (await resp.json())["code"] == 416


async def test_malformed_or_multiple_ranges_get_the_whole_object(
    client: Client, store: LocalStore
) -> None:
    await store.put("photos", "r.bin", b"0123456789")
    for header in ("bytes=5-2", "items=0-1", "bytes=0-1,3-4"):
        resp = await client.get("/photos/r.bin", headers={"Range": header})
        assert resp.status == 200, header
        assert await resp.read() == b"0123456789"


async def test_if_range_with_a_stale_etag_sends_everything(
    client: Client, store: LocalStore
) -> None:
    meta = await store.put("photos", "r.bin", b"0123456789")
    resp = await client.get("/photos/r.bin", headers={"Range": "bytes=0-1", "If-Range": '"old"'})
    assert resp.status == 200
    resp = await client.get(
        "/photos/r.bin", headers={"Range": "bytes=0-1", "If-Range": f'"{meta.hash}"'}
    )
    assert resp.status == 206


async def test_missing_object_and_bucket_are_404_in_json(client: Client, store: LocalStore) -> None:
    await store.put("photos", "a.txt", b"x")
    for path in ("/photos/nope.txt", "/nobucket/a.txt", "/photos"):
        resp = await client.get(path)
        assert resp.status == 404, path
        body = await resp.json()
        assert body["code"] == 404 and body["error"]
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Reqid"]


async def test_percent_encoded_keys(client: Client, store: LocalStore) -> None:
    await store.put("photos", "sp ace/ü+plus.txt", b"ok")
    resp = await client.get(URL("/photos/sp%20ace/%C3%BC+plus.txt", encoded=True))
    assert resp.status == 200
    assert await resp.read() == b"ok"


async def test_path_traversal_is_400(client: Client, store: LocalStore) -> None:
    await store.put("photos", "a.txt", b"x")
    for raw in ("/photos/a/%2E%2E/%2E%2E/etc/passwd", "/photos/%2E%2E/photos/a.txt"):
        resp = await client.get(URL(raw, encoded=True))
        assert resp.status == 400, raw
        assert (await resp.json())["code"] == 400


async def test_reqid_is_echoed_or_generated(
    client: Client,
) -> None:
    resp = await client.get("/photos/x", headers={"X-Reqid": "my-request-1"})
    assert resp.headers["X-Reqid"] == "my-request-1"
    resp = await client.get("/photos/x", headers={"X-Reqid": "bad id\twith junk"})
    assert resp.headers["X-Reqid"] not in ("", "bad id\twith junk")
    first = (await client.get("/photos/x")).headers["X-Reqid"]
    second = (await client.get("/photos/x")).headers["X-Reqid"]
    assert first != second


async def test_wrong_method_is_405_in_json(
    client: Client,
) -> None:
    resp = await client.put("/photos/a.txt", data=b"x")
    assert resp.status == 405
    body = await resp.json()
    assert body == {"code": 405, "error": body["error"]} and body["error"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Reqid"]


async def test_health_answers_ok(client: Client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_aiohttp_http_errors_take_the_json_shape() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(middlewares=[error_middleware], client_max_size=16)
    app.on_response_prepare.append(add_reqid_header)
    app.router.add_post("/echo", echo)
    async with TestClient(TestServer(app, host="127.0.0.1")) as plain:
        too_large = await plain.post("/echo", data=b"x" * 100)
        assert too_large.status == 413
        assert (await too_large.json())["code"] == 413
        assert too_large.headers["Cache-Control"] == "no-store"
        missing = await plain.get("/no/such/route")
        assert missing.status == 404
        assert await missing.json() == {"code": 404, "error": "not found"}
        assert missing.headers["X-Reqid"]
