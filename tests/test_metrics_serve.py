"""``/metrics`` across the processes of a real ``dora serve``: two gateways sharing
the port, two worker processes, the supervisor with its dispatcher and notify.

Every scrape is a fresh connection, so the kernel spreads them over both
gateways; each must answer the same totals, which include what the workers
and the supervisor counted in their own processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import qiniu
from images import make_photo_jpeg
from prometheus_client.parser import text_string_to_metric_families
from serving import Served, dora_serve

from dora.auth import Credentials
from dora.cli_jobs import GatewayClient
from dora.scheduler.jobtesting import NotifyReceiver

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ENV = {"DORA_SSRF_ALLOW": "127.0.0.1/32", "DORA_JOB_LEASE_SECONDS": "4"}
WIDTHS = (100, 110, 120, 130, 140)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("metrics-serve") / "data"
    with dora_serve(data_dir, workers=2, gateways=2, env=ENV) as srv:
        auth = qiniu.Auth(srv.access_key, srv.secret_key)
        region = qiniu.Region(up_host=srv.url)
        photo = make_photo_jpeg(640, 480, seed=3)
        _, info = qiniu.put_data(
            auth.upload_token("photos", "cat.jpg"), "cat.jpg", photo, regions=[region]
        )
        assert info.status_code == 200, info
        yield srv


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(srv: Served) -> Samples:
    status, body = get(srv.url + "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name}


def eventually(srv: Served, check: Callable[[Samples], bool], within: float = 15.0) -> Samples:
    give_up = time.monotonic() + within
    while True:
        samples = scrape(srv)
        if check(samples):
            return samples
        assert time.monotonic() < give_up, "the metrics never showed what was expected"
        time.sleep(0.2)


def worker_ids(srv: Served) -> set[str]:
    return {str(s["ID"]) for s in srv.healthy_instances()}


def test_requests_worker_calls_and_state_from_every_process(served: Served) -> None:
    for width in WIDTHS:
        status, body = get(f"{served.url}/photos/cat.jpg?imageView2/2/w/{width}")
        assert status == 200, body
    status, _ = get(f"{served.url}/photos/cat.jpg?imageView2/9/w/100")
    assert status == 400
    ids = worker_ids(served)
    assert len(ids) == 2

    def settled(s: Samples) -> bool:  # gauges and cache counts are copied each second
        return (
            set(by_label(s, "dora_worker_inflight", "instance")) == ids
            and set(by_label(s, "dora_pool_inflight", "instance")) == ids
            and value(s, "dora_gateway_processes") == 2
            and value(s, "dora_instances", service="dora-builtin", kind="running") == 2
            and value(s, "dora_cache_misses_total", cache="result") == 5
            and not any(by_label(s, "dora_worker_inflight", "instance").values())  # all done
        )

    first = eventually(served, settled)
    for samples in [first] + [scrape(served) for _ in range(5)]:  # whichever gateway answers
        requests = "dora_requests_total"
        assert value(samples, requests, route="process", op="imageView2", status="200") == 5
        assert value(samples, requests, route="process", op="imageView2", status="400") == 1
        calls = by_label(samples, "dora_worker_calls_total", "status")
        assert calls == {"200": 5}  # one call per distinct URL, by both workers together
        assert value(samples, "dora_worker_call_seconds_count", op="imageView2") == 5
        assert value(samples, "dora_worker_op_seconds_count", op="imageView2") == 5
        assert value(samples, "dora_cache_misses_total", cache="result") == 5
        assert value(samples, "dora_pool_calls_total") == 5
        assert value(samples, "dora_restarts_total", service="dora-builtin") == 0
        assert value(samples, "dora_instances", service="dora-builtin", kind="running") == 2
        assert value(samples, "dora_instances", service="dora-gateway", kind="desired") == 2
        assert value(samples, "dora_worker_bytes_total", direction="out") > 0


def test_jobs_durations_items_and_notifies(served: Served) -> None:
    client = GatewayClient(served.url, Credentials(served.access_key, served.secret_key))
    client.call("POST", "/v1/pipelines", form={"name": "held"})
    client.call("POST", "/v1/pipelines/held/pause")
    for _ in range(2):
        form = {"bucket": "photos", "key": "cat.jpg", "fops": "imageInfo", "pipeline": "held"}
        client.call("POST", "/pfop/", form=form)

    async def run_one() -> None:
        async with NotifyReceiver() as receiver:
            form = {"bucket": "photos", "key": "cat.jpg", "notifyURL": receiver.url,
                    "fops": "imageView2/2/w/60;imageView2/2/w/70"}  # fmt: skip
            await asyncio.to_thread(client.call, "POST", "/pfop/", form=form)
            [notice] = await receiver.wait_for(1, within=60)
            assert notice.body["code"] == 0

    asyncio.run(run_one())
    samples = eventually(
        served, lambda s: value(s, "dora_jobs", pipeline="held", state="queued") == 2
    )
    assert value(samples, "dora_jobs", pipeline="default", state="done") == 1
    assert value(samples, "dora_jobs", pipeline="held", state="running") == 0
    assert value(samples, "dora_job_seconds_count", pipeline="default", outcome="finished") == 1
    assert value(samples, "dora_job_items_total", status="done") == 2
    assert value(samples, "dora_notify_attempts_total", outcome="delivered") == 1
    assert value(samples, "dora_notifies_total", result="delivered") == 1


def test_a_killed_worker_counts_as_a_restart_and_its_gauges_go(served: Served) -> None:
    before = scrape(served)
    calls = sum(by_label(before, "dora_worker_calls_total", "status").values())
    [victim] = [s for s in served.healthy_instances() if s["ID"] == sorted(worker_ids(served))[0]]
    meta = victim["Meta"]
    assert isinstance(meta, dict)
    os.kill(int(meta["pid"]), signal.SIGKILL)

    def replaced(s: Samples) -> bool:
        instances = set(by_label(s, "dora_worker_inflight", "instance"))
        return (
            value(s, "dora_restarts_total", service="dora-builtin") == 1
            and victim["ID"] not in instances  # swept with its process
            and len(instances) == 2  # and the new worker publishes its own
        )

    after = eventually(served, replaced, within=30.0)
    # The dead worker's calls stay in the totals.
    assert sum(by_label(after, "dora_worker_calls_total", "status").values()) == calls
