"""Processing URLs through the real gateway over HTTP on 127.0.0.1, with the
real builtin catalog and the real op runner (``run_chain`` in a thread)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import qiniu
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from yarl import URL

from dora.auth import Credentials, KeyRing
from dora.b64 import encode_entry
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.runner import run_chain
from dora.config import Limits, Settings
from dora.errors import NotFound, ProcessingFailed
from dora.etag import qiniu_etag
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext, Processor
from dora.ops import Output
from dora.storage.local import LocalStore

AK, SK = "test-access-key", "test-secret-key"
Client = TestClient[web.Request, web.Application]


class RunChainInThread:
    """The real op runner, in a thread: what a worker does, without the RPC."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.calls = 0

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        self.calls += 1
        data = src if isinstance(src, bytes) else await asyncio.to_thread(Path(src).read_bytes)
        return await asyncio.to_thread(run_chain, list(stages), data, self.limits)


def jpeg(width: int, height: int, colour: tuple[int, int, int] = (200, 60, 30)) -> bytes:
    image = Image.new("RGB", (width, height), colour)
    for x in range(0, width, 7):  # some detail, so the encoder has work to do
        image.putpixel((x, x * height // width), (0, 0, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def picture(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "buckets", Limits()) as opened:
        yield opened


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(store: LocalStore, tmp_path: Path) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(processor: Processor | None = None, **settings: Any) -> Client:
        limits = settings.pop("limits", Limits())
        ctx = GatewayContext(
            Settings(data_dir=tmp_path, limits=limits, **settings),
            store,
            KeyRing([Credentials(AK, SK)]),
            processor or RunChainInThread(limits),
            BUILTIN_CATALOG,
        )
        client: Client = TestClient(TestServer(build_app(ctx), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient, store: LocalStore) -> Client:
    await store.put("photos", "cat.jpg", jpeg(400, 300))
    return await make_client()


async def test_image_view_resizes_and_the_second_request_hits_the_cache(client: Client) -> None:
    first = await client.get("/photos/cat.jpg?imageView2/2/w/100")
    assert first.status == 200, await first.text()
    body = await first.read()
    assert first.headers["Content-Type"] == "image/jpeg"
    assert picture(body).size == (100, 75)
    assert first.headers["X-Dora-Cache"] == "MISS"
    assert first.headers["Cache-Control"] == "public, max-age=31536000"
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    second = await client.get("/photos/cat.jpg?imageView2/2/w/100")
    assert second.headers["X-Dora-Cache"] == "HIT"
    assert await second.read() == body
    assert second.headers["ETag"] == etag
    other = await client.get("/photos/cat.jpg?imageView2/2/w/120")
    assert other.headers["ETag"] != etag


async def test_pipes_percent_encoded_and_info_ops(client: Client) -> None:
    resp = await client.get(URL("/photos/cat.jpg?imageView2/2/w/100%7CimageInfo", encoded=True))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    info = json.loads(await resp.read())
    assert (info["width"], info["height"]) == (100, 75)
    resp = await client.get("/photos/cat.jpg?imageInfo")
    info = await resp.json()
    assert (info["width"], info["height"], info["format"]) == (400, 300, "jpeg")


async def test_if_none_match_on_a_result_answers_304_without_work(
    make_client: MakeClient, store: LocalStore
) -> None:
    await store.put("photos", "cat.jpg", jpeg(400, 300))
    processor = RunChainInThread(Limits())
    client = await make_client(processor)
    first = await client.get("/photos/cat.jpg?imageView2/1/w/50")
    assert processor.calls == 1
    again = await client.get(
        "/photos/cat.jpg?imageView2/1/w/50", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304
    assert again.headers["ETag"] == first.headers["ETag"]
    assert processor.calls == 1


async def test_cache_disabled_always_misses(make_client: MakeClient, store: LocalStore) -> None:
    await store.put("photos", "cat.jpg", jpeg(400, 300))
    processor = RunChainInThread(Limits())
    client = await make_client(processor, result_cache_bytes=0)
    for _ in range(2):
        resp = await client.get("/photos/cat.jpg?imageView2/2/w/60")
        assert resp.headers["X-Dora-Cache"] == "MISS"
    assert processor.calls == 2


async def test_a_changed_object_never_gets_a_stale_result(
    client: Client, store: LocalStore
) -> None:
    first = await client.get("/photos/cat.jpg?imageInfo")
    assert (await first.json())["width"] == 400
    await store.put("photos", "cat.jpg", jpeg(640, 480))
    second = await client.get("/photos/cat.jpg?imageInfo")
    assert second.headers["X-Dora-Cache"] == "MISS"
    assert (await second.json())["width"] == 640


async def test_attname_sets_content_disposition(client: Client) -> None:
    resp = await client.get(
        URL("/photos/cat.jpg?imageView2/2/w/80&attname=%E7%BC%A9%E7%95%A5%E5%9B%BE%201.jpg",
            encoded=True)
    )  # fmt: skip
    assert resp.status == 200
    disposition = resp.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''%E7%BC%A9%E7%95%A5%E5%9B%BE%201.jpg" in disposition


async def test_head_of_a_processing_url(client: Client) -> None:
    resp = await client.head("/photos/cat.jpg?imageView2/2/w/100")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert await resp.read() == b""


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("imageView2/9/w/100", ["imageView2", "mode"]),
        ("nosuchop/1/2", ["nosuchop"]),
        ("imageView2/2/w/abc", ["imageView2", "w"]),
        ("imageView2/2/w/100000", ["imageView2", "w"]),
        ("imageView2/2/w/100/zz/1", ["imageView2", "zz"]),
        ("imageView2/2/w/100|saveas", ["saveas"]),
    ],
)
async def test_bad_fops_are_400_naming_the_problem(
    client: Client, query: str, words: list[str]
) -> None:
    resp = await client.get(URL(f"/photos/cat.jpg?{query}", encoded=True))
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == 400
    for word in words:
        assert word in body["error"], body
    assert resp.headers["Cache-Control"] == "no-store"


async def test_fops_are_checked_before_the_object_is_looked_up(client: Client) -> None:
    resp = await client.get("/photos/missing.jpg?nosuchop")
    assert resp.status == 400
    resp = await client.get("/photos/missing.jpg?imageInfo")
    assert resp.status == 404
    assert (await resp.json())["code"] == 404
    resp = await client.get("/nobucket/cat.jpg?imageInfo")
    assert resp.status == 404


async def test_source_over_the_sync_limit_is_413(
    make_client: MakeClient, store: LocalStore
) -> None:
    big = jpeg(400, 300)
    await store.put("photos", "cat.jpg", big)
    client = await make_client(limits=Limits(max_source_bytes=len(big) - 1))
    resp = await client.get("/photos/cat.jpg?imageInfo")
    assert resp.status == 413
    assert (await resp.json())["code"] == 413


async def test_bucket_domain(make_client: MakeClient, store: LocalStore) -> None:
    await store.put("photos", "cat.jpg", jpeg(400, 300))
    client = await make_client(bucket_domains="img.example.com=photos")
    headers = {"Host": "IMG.example.com:8080"}
    resp = await client.get("/cat.jpg?imageInfo", headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["width"] == 400
    plain = await client.get("/cat.jpg", headers=headers)
    assert plain.status == 200
    assert plain.headers["Content-Type"] == "image/jpeg"
    # Without the domain, the first segment is the bucket.
    assert (await client.get("/cat.jpg")).status == 404


def saveas_sign(host: str, path: str, query: str) -> str:
    digest = hmac.new(SK.encode(), f"{host}{path}?{query}".encode(), hashlib.sha1).digest()
    return f"{AK}:{base64.urlsafe_b64encode(digest).decode()}"


async def test_signed_saveas_stores_and_returns_the_result(
    client: Client, store: LocalStore
) -> None:
    host = f"127.0.0.1:{client.port}"
    query = f"imageView2/2/w/90|saveas/{encode_entry('thumbs', 'cat-90.jpg')}"
    signed = f"{query}/sign/{saveas_sign(host, '/photos/cat.jpg', query)}"
    resp = await client.get(URL(f"/photos/cat.jpg?{signed}", encoded=True))
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    assert picture(body).size == (90, 68)
    meta, stored = await store.get("thumbs", "cat-90.jpg")
    assert stored == body
    assert meta.mime == "image/jpeg"

    # An entry naming only the bucket stores under the result's hash.
    query = f"imageView2/2/w/70|saveas/{encode_entry('thumbs', None)}"
    signed = f"{query}/sign/{saveas_sign(host, '/photos/cat.jpg', query)}"
    resp = await client.get(URL(f"/photos/cat.jpg?{signed}", encoded=True))
    assert resp.status == 200
    body = await resp.read()
    assert (await store.get("thumbs", qiniu_etag(body)))[1] == body


async def test_unsigned_or_badly_signed_saveas_is_401(client: Client, store: LocalStore) -> None:
    host = f"127.0.0.1:{client.port}"
    query = f"imageView2/2/w/90|saveas/{encode_entry('thumbs', 'x.jpg')}"
    wrong = f"{query}/sign/{saveas_sign(host, '/photos/other.jpg', query)}"
    for text in (query, wrong, f"{query}/sign/{AK}:AAAA"):
        resp = await client.get(URL(f"/photos/cat.jpg?{text}", encoded=True))
        assert resp.status == 401, text
        assert (await resp.json())["code"] == 401
    with pytest.raises(NotFound):
        await store.stat("thumbs", "x.jpg")


async def test_private_download_urls_from_the_sdk(client: Client) -> None:
    base = f"http://127.0.0.1:{client.port}/photos/cat.jpg?imageView2/2/w/50"
    good = URL(AUTH_SDK.private_download_url(base, expires=3600), encoded=True)
    resp = await client.session.get(good)
    assert resp.status == 200, await resp.text()
    assert picture(await resp.read()).size == (50, 38)

    expired = URL(AUTH_SDK.private_download_url(base, expires=-10), encoded=True)
    assert (await client.session.get(expired)).status == 401
    tampered = URL(str(good).replace("w/50", "w/60"), encoded=True)
    assert (await client.session.get(tampered)).status == 401
    plain = f"http://127.0.0.1:{client.port}/photos/cat.jpg"
    resp = await client.session.get(URL(AUTH_SDK.private_download_url(plain, 3600), encoded=True))
    assert resp.status == 200
    assert (await client.get("/photos/cat.jpg?e=1&token=a:b")).status == 401


AUTH_SDK = qiniu.Auth(AK, SK)


class Gated:
    """Counts calls and holds each until released, then runs the real chain.
    (Only the coalescing test uses a double.)"""

    def __init__(self) -> None:
        self.inner = RunChainInThread(Limits())
        self.calls = 0
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        self.calls += 1
        self.called.set()
        await self.release.wait()
        return await self.inner.call(stages, src, deadline=deadline)


async def test_identical_concurrent_misses_run_the_chain_once(
    make_client: MakeClient, store: LocalStore
) -> None:
    await store.put("photos", "cat.jpg", jpeg(400, 300))
    gated = Gated()
    client = await make_client(gated)
    requests = [
        asyncio.create_task(client.get("/photos/cat.jpg?imageView2/1/w/64/h/64")) for _ in range(8)
    ]
    await asyncio.wait_for(gated.called.wait(), 5)
    await asyncio.sleep(0.1)  # let every request arrive and join
    gated.release.set()
    responses = await asyncio.gather(*requests)
    bodies = {await r.read() for r in responses}
    assert [r.status for r in responses] == [200] * 8
    assert len(bodies) == 1
    assert gated.calls == 1
    assert picture(bodies.pop()).size == (64, 64)


class Broken:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        raise self.exc


async def test_processing_failures_keep_the_json_error_shape(
    make_client: MakeClient, store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.put("photos", "cat.jpg", jpeg(40, 30))
    failing = await make_client(Broken(ProcessingFailed("decoder gave up")))
    resp = await failing.get("/photos/cat.jpg?imageInfo")
    assert resp.status == 599
    assert await resp.json() == {"code": 599, "error": "decoder gave up"}
    assert resp.headers["Cache-Control"] == "no-store"

    crashing = await make_client(Broken(RuntimeError("bug")))
    resp = await crashing.get("/photos/cat.jpg?imageInfo", headers={"X-Reqid": "trace-me"})
    assert resp.status == 500
    body = await resp.json()
    assert body["code"] == 500 and "trace-me" in body["error"]
    assert "bug" not in body["error"]  # details stay in the log
    assert any("trace-me" in r.getMessage() for r in caplog.records)
