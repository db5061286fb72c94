"""``GET /metrics`` of a real gateway app over HTTP on 127.0.0.1, after real requests.

The app runs the real builtin catalog and op runner (in a thread, as a
worker would) and a real SQLite job store. Metrics are per process here (no
multiprocess directory), and other tests in this process count too, so each
test compares the counts before and after its own requests.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from dora.auth import Credentials, KeyRing
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.runner import run_chain
from dora.config import Limits, Settings
from dora.fop import Stage
from dora.gateway.app import build_app
from dora.gateway.context import GatewayContext
from dora.gateway.jobs_wiring import with_jobs
from dora.gateway.metrics import JobCounts
from dora.jobs import JobSpec, JobStoreOptions
from dora.jobstore import SqliteJobStore
from dora.ops import Output
from dora.storage.local import LocalStore

Client = TestClient[web.Request, web.Application]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class ChainInThread:
    """The real op runner in a thread: a worker's work without the RPC."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        self.calls += 1
        return await asyncio.to_thread(run_local, list(stages), src)


def run_local(stages: list[Stage], src: bytes | str) -> Output:
    """Run the chain on bytes or on a local object's path, as a worker does."""
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    return run_chain(stages, data, Limits())


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 60, 30)).save(out, "JPEG", quality=90)
    return out.getvalue()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: Client) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return parse(await resp.text())


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "jobs.db", JobStoreOptions(durable=False)) as store:
        yield store


@pytest.fixture
async def client(tmp_path: Path, jobs: SqliteJobStore) -> AsyncIterator[Client]:
    async with LocalStore(tmp_path / "buckets", Limits()) as store:
        await store.put("photos", "cat.jpg", jpeg(400, 300))
        ctx = GatewayContext(
            Settings(data_dir=tmp_path),
            store,
            KeyRing([Credentials("ak", "sk")]),
            ChainInThread(),
            BUILTIN_CATALOG,
        )
        async with TestClient(TestServer(build_app(with_jobs(ctx, jobs)), host="127.0.0.1")) as c:
            yield c


async def test_requests_are_counted_by_route_op_and_status(client: Client) -> None:
    before = await scrape(client)
    for width in (100, 110, 120):
        resp = await client.get(f"/photos/cat.jpg?imageView2/2/w/{width}")
        assert resp.status == 200, await resp.text()
    bad = await client.get("/photos/cat.jpg?imageView2/9/w/100")  # no mode 9
    assert bad.status == 400
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "dora_requests_total"
    assert delta(total, route="process", op="imageView2", status="200") == 3
    assert delta(total, route="process", op="imageView2", status="400") == 1
    # The scrape before this one is counted once it has answered.
    assert delta(total, route="metrics", op="", status="200") == 1
    hist = "dora_request_seconds"
    assert delta(f"{hist}_count", route="process", op="imageView2") == 4
    assert delta(f"{hist}_bucket", route="process", op="imageView2", le="+Inf") == 4
    assert delta(f"{hist}_sum", route="process", op="imageView2") > 0


async def test_other_routes_unknown_ops_and_chains_have_their_labels(client: Client) -> None:
    before = await scrape(client)
    assert (await client.get("/health")).status == 200
    assert (await client.get("/photos/missing.jpg")).status == 404
    assert (await client.get("/photos/cat.jpg")).status == 200
    assert (await client.get("/photos/cat.jpg?nosuchop/1")).status == 400
    chain = "/photos/cat.jpg?imageView2/2/w/50|imageMogr2/rotate/90"
    assert (await client.get(chain)).status == 200
    assert (await client.post("/pfop", data={"bucket": "photos"})).status == 401
    after = await scrape(client)

    def delta(**labels: str) -> float:
        name = "dora_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(route="health", op="", status="200") == 1
    assert delta(route="object", op="", status="404") == 1
    assert delta(route="object", op="", status="200") == 1
    assert delta(route="process", op="unknown", status="400") == 1
    assert delta(route="process", op="imageView2|imageMogr2", status="200") == 1
    assert delta(route="pfop", op="", status="401") == 1


async def test_cache_hits_misses_bytes_and_entries(client: Client) -> None:
    before = await scrape(client)
    first = await client.get("/photos/cat.jpg?imageView2/2/w/90")
    assert first.headers["X-Dora-Cache"] == "MISS"
    body = await first.read()
    second = await client.get("/photos/cat.jpg?imageView2/2/w/90")
    assert second.headers["X-Dora-Cache"] == "HIT"
    other = await client.get("/photos/cat.jpg?imageView2/2/w/91")
    assert other.headers["X-Dora-Cache"] == "MISS"
    after = await scrape(client)

    def delta(name: str, cache: str) -> float:
        return value(after, name, cache=cache) - value(before, name, cache=cache)

    assert delta("dora_cache_hits_total", "result") == 1
    assert delta("dora_cache_misses_total", "result") == 2
    # A local object goes to the worker by path: the source cache (for stores
    # without local files) is not involved.
    assert delta("dora_cache_misses_total", "source") == 0
    assert delta("dora_cache_hits_total", "source") == 0
    # Sizes are this app's: two results kept.
    assert value(after, "dora_cache_entries", cache="result") == 2
    assert value(after, "dora_cache_entries", cache="source") == 0
    assert value(after, "dora_cache_bytes", cache="result") > len(body)
    assert value(after, "dora_gateway_processes") >= 1


async def test_jobs_by_pipeline_and_state(client: Client, jobs: SqliteJobStore) -> None:
    await jobs.create_pipeline("video", 1, 100)
    for _ in range(2):
        await jobs.enqueue(JobSpec("photos", "cat.jpg", "imageView2/2/w/10"))
    await jobs.enqueue(JobSpec("photos", "cat.jpg", "imageView2/2/w/20", pipeline="video"))
    [leased] = await jobs.lease("test-owner", 30.0, 1)
    samples = await scrape(client)
    running = {("default", "running"): 0.0, ("video", "running"): 0.0}
    running[(leased.pipeline, "running")] = 1.0
    queued = {"default": 2.0, "video": 1.0}
    queued[leased.pipeline] -= 1
    for pipeline in ("default", "video"):
        labels = {"pipeline": pipeline}
        assert value(samples, "dora_jobs", state="queued", **labels) == queued[pipeline]
        assert (
            value(samples, "dora_jobs", state="running", **labels) == running[(pipeline, "running")]
        )
        assert ("dora_jobs", frozenset({("pipeline", pipeline), ("state", "failed")})) in samples


async def test_job_counts_are_read_at_most_once_per_interval(jobs: SqliteJobStore) -> None:
    counts = JobCounts(jobs, every=0.3)

    async def queued() -> float:
        await counts.refresh()
        [family] = counts.collect()
        return sum(s.value for s in family.samples if s.labels["state"] == "queued")

    assert await queued() == 0
    await jobs.enqueue(JobSpec("photos", "cat.jpg", "imageView2/2/w/10"))
    assert await queued() == 0  # read less than 0.3 s ago: not read again
    await asyncio.sleep(0.35)
    assert await queued() == 1
