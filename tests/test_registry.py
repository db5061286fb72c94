"""The registry seam end to end: ConsulRegistry (over py-consul's consul.aio)
against the EmbeddedRegistry server on 127.0.0.1, and the server's Consul
wire format checked with a plain HTTP client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dora.errors import NotFound, ServiceUnavailable
from dora.registry import (
    Instance,
    Registry,
    format_load,
    go_duration,
    parse_go_duration,
    parse_load,
)
from dora.scheduler.embedded_registry import EmbeddedRegistry
from dora.workers.registry import ConsulRegistry

TTL = 1.0
MARGIN = 0.5


def inst(iid: str, service: str = "imageview", port: int = 9100, **kw: Any) -> Instance:
    return Instance(id=iid, service=service, address="127.0.0.1", port=port, datacenter="", **kw)


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedRegistry]:
    async with EmbeddedRegistry(datacenter="dc1", node="node-a") as reg:
        yield reg


@pytest.fixture
async def client(server: EmbeddedRegistry) -> AsyncIterator[ConsulRegistry]:
    assert server.port is not None
    async with ConsulRegistry("127.0.0.1", server.port) as reg:
        yield reg


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def wait_until(predicate: Any, limit: float) -> float:
    """Poll ``predicate`` (an async callable) until true; return the elapsed time."""
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < limit, "condition not reached in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


# -- the seam's helpers ---------------------------------------------------------


def test_go_durations_round_trip_and_reject_what_go_rejects() -> None:
    for seconds, text in [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
    ]:
        assert go_duration(seconds) == text
        assert parse_go_duration(text) == seconds
    assert parse_go_duration("5m") == 300 and parse_go_duration("10s") == 10
    for bad in ("10", "", "s", "1x", "1.5"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_load_note_round_trip() -> None:
    assert parse_load(format_load(0.75)) == 0.75
    assert parse_load("TTL expired (last output before timeout follows): load=2") == 2.0
    assert parse_load("") is None and parse_load("load=nan") is None and parse_load("x") is None


def test_instance_is_immutable_and_hashable() -> None:
    meta = {"zone": "a"}
    one = inst("a", tags=["x"], meta=meta)
    meta["zone"] = "b"
    assert one.meta == {"zone": "a"} and one.tags == ("x",)
    assert hash(one) == hash(inst("a", tags=("x",), meta={"zone": "a"}))
    with pytest.raises(TypeError):
        one.meta["zone"] = "c"  # type: ignore[index]


# -- register / health / deregister --------------------------------------------


async def test_register_health_deregister(client: ConsulRegistry) -> None:
    assert isinstance(client, Registry)
    await client.register(inst("iv-1", tags=("fast",), meta={"v": "2"}), ttl=10)
    await client.register(inst("iv-2", port=9101), ttl=10)
    found = await client.healthy("imageview")
    assert [(i.id, i.port) for i in found] == [("iv-1", 9100), ("iv-2", 9101)]
    first = found[0]
    assert first.service == "imageview" and first.address == "127.0.0.1"
    assert first.datacenter == "dc1" and first.tags == ("fast",) and first.meta == {"v": "2"}
    assert first.load is None
    await client.deregister("iv-1")
    assert [i.id for i in await client.healthy("imageview")] == ["iv-2"]
    await client.deregister("iv-1")  # unknown now: not an error
    assert await client.healthy("nothing") == []


async def test_names_and_ids_are_case_insensitive_and_keep_their_casing(
    client: ConsulRegistry,
) -> None:
    await client.register(inst("IV-Upper", service="ImageView"), ttl=10)
    found = await client.healthy("imageview")
    assert [(i.id, i.service) for i in found] == [("IV-Upper", "ImageView")]
    await client.pass_ttl("iv-upper", load=3)
    assert (await client.healthy("IMAGEVIEW"))[0].load == 3
    await client.register(inst("iv-upper", service="imageVIEW", port=1), ttl=10)  # same instance
    again = await client.healthy("ImageView")
    assert [(i.id, i.service, i.port) for i in again] == [("iv-upper", "imageVIEW", 1)]
    await client.deregister("IV-UPPER")
    assert await client.healthy("imageview") == []


async def test_load_reported_with_pass_ttl_and_fail_hides_the_instance(
    client: ConsulRegistry,
) -> None:
    await client.register(inst("a", load=0.5), ttl=10)
    assert (await client.healthy("imageview"))[0].load == 0.5
    await client.pass_ttl("a", load=0.75)
    assert (await client.healthy("imageview"))[0].load == 0.75
    await client.fail_ttl("a", note="draining")
    assert await client.healthy("imageview") == []
    await client.pass_ttl("a")
    assert [(i.id, i.load) for i in await client.healthy("imageview")] == [("a", None)]
    with pytest.raises(NotFound):
        await client.pass_ttl("never-registered")


# -- TTL expiry and reaping -----------------------------------------------------


async def test_ttl_expiry_then_deregister_critical_service_after(
    client: ConsulRegistry, server: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    await client.register(inst("short", load=1.0), ttl=TTL, deregister_after=0.5)
    start = time.monotonic()
    assert [i.id for i in await client.healthy("imageview")] == ["short"]

    async def gone_from_passing() -> bool:
        return await client.healthy("imageview") == []

    await wait_until(gone_from_passing, TTL + MARGIN)
    assert time.monotonic() - start >= TTL * 0.9
    async with http.get(f"{server.url}/v1/health/service/imageview") as resp:
        (entry,) = await resp.json()
    check = entry["Checks"][1]
    assert check["CheckID"] == "service:short" and check["Status"] == "critical"
    assert check["Output"] == "TTL expired (last output before timeout follows): load=1"

    async def reaped() -> bool:
        async with http.get(f"{server.url}/v1/agent/services") as resp:
            return "short" not in await resp.json()

    await wait_until(reaped, 0.5 + MARGIN)
    async with http.get(f"{server.url}/v1/agent/checks") as resp:
        assert await resp.json() == {}


async def test_passing_keeps_an_instance_alive_past_its_ttl(client: ConsulRegistry) -> None:
    await client.register(inst("kept"), ttl=0.6, deregister_after=0.3)
    for _ in range(4):  # 1.2 s: twice the TTL
        await asyncio.sleep(0.3)
        await client.pass_ttl("kept", load=1)
    assert [i.id for i in await client.healthy("imageview")] == ["kept"]


# -- blocking queries -----------------------------------------------------------


async def test_watch_wakes_on_register_and_on_expiry(client: ConsulRegistry) -> None:
    index, found = await client.watch("imageview", 0, wait=1)  # index 0: answers at once
    assert found == [] and index >= 1
    waiter = asyncio.create_task(client.watch("imageview", index, wait=5))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    start = time.monotonic()
    await client.register(inst("w1"), ttl=TTL)
    index2, found = await waiter
    assert time.monotonic() - start < 0.5
    assert index2 > index and [i.id for i in found] == ["w1"]

    start = time.monotonic()
    index3, found = await client.watch("imageview", index2, wait=5)
    assert found == [] and index3 > index2
    assert TTL * 0.8 <= time.monotonic() - start <= TTL + MARGIN


async def test_watch_returns_after_wait_with_the_same_index(client: ConsulRegistry) -> None:
    await client.register(inst("still"), ttl=10)
    index, _ = await client.watch("imageview", 0, wait=1)
    start = time.monotonic()
    again, found = await client.watch("imageview", index, wait=0.4)
    elapsed = time.monotonic() - start
    assert again == index and [i.id for i in found] == ["still"]
    assert 0.4 <= elapsed <= 0.4 * (1 + 1 / 16) + 0.3
    await client.pass_ttl("still")  # same status, same output: readers see no change
    assert (await client.watch("imageview", 0, wait=1))[0] == index


async def test_too_many_blocking_queries_is_503(http: aiohttp.ClientSession) -> None:
    async with EmbeddedRegistry(max_blocking_queries=2) as server:
        assert server.port is not None
        async with ConsulRegistry("127.0.0.1", server.port) as client:
            index, _ = await client.watch("imageview", 0, wait=1)
            held = [asyncio.create_task(client.watch("imageview", index, wait=5)) for _ in range(2)]
            await asyncio.sleep(0.2)
            with pytest.raises(ServiceUnavailable):
                await client.watch("imageview", index, wait=5)
            url = f"{server.url}/v1/health/service/imageview?index={index}&wait=5s"
            async with http.get(url) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert await client.healthy("imageview") == []  # plain reads still served
            await client.register(inst("wake"), ttl=10)
            for task in held:
                assert [i.id for i in (await task)[1]] == ["wake"]


async def test_stop_releases_blocking_queries_promptly(http: aiohttp.ClientSession) -> None:
    server = EmbeddedRegistry()
    await server.start()
    url = f"{server.url}/v1/health/service/x?index=1&wait=5m"
    request = asyncio.create_task(http.get(url))
    await asyncio.sleep(0.2)
    start = time.monotonic()
    await server.stop()
    await server.stop()  # twice is harmless
    assert time.monotonic() - start < 1.5
    resp = await request
    assert resp.status == 200
    resp.release()
    with pytest.raises(RuntimeError):
        await server.start()


# -- data centres ---------------------------------------------------------------


async def test_linked_datacenters_and_healthy_any_dc() -> None:
    async with (
        EmbeddedRegistry("dc1") as dc1,
        EmbeddedRegistry("dc2") as dc2,
        EmbeddedRegistry("dc3") as dc3,
    ):
        dc1.link(dc2)
        dc3.link(dc1)
        assert dc1.port and dc2.port and dc3.port
        async with (
            ConsulRegistry("127.0.0.1", dc1.port) as c1,
            ConsulRegistry("127.0.0.1", dc2.port) as c2,
            ConsulRegistry("127.0.0.1", dc3.port) as c3,
        ):
            assert await c1.datacenters() == ["dc1", "dc2", "dc3"]
            assert await c2.datacenters() == ["dc2", "dc1", "dc3"]
            assert await c1.local_datacenter() == "dc1"

            await c3.register(inst("in-dc3"), ttl=10)
            found = await c1.healthy_any_dc("imageview")
            assert [(i.id, i.datacenter) for i in found] == [("in-dc3", "dc3")]
            await c2.register(inst("in-dc2"), ttl=10)  # dc2 is listed before dc3
            found = await c1.healthy_any_dc("imageview")
            assert [(i.id, i.datacenter) for i in found] == [("in-dc2", "dc2")]
            await c1.register(inst("in-dc1"), ttl=10)  # local wins
            found = await c1.healthy_any_dc("imageview")
            assert [(i.id, i.datacenter) for i in found] == [("in-dc1", "dc1")]

            remote = await c1.healthy("imageview", datacenter="dc2")
            assert [(i.id, i.datacenter) for i in remote] == [("in-dc2", "dc2")]
            with pytest.raises(ServiceUnavailable, match="No path to datacenter"):
                await c1.healthy("imageview", datacenter="dc9")

            # A watch through dc1 on dc2 wakes on dc2's changes.
            index, _ = await c1.watch("imageview", 0, wait=1, datacenter="dc2")
            waiter = asyncio.create_task(c1.watch("imageview", index, wait=5, datacenter="dc2"))
            await asyncio.sleep(0.1)
            await c2.deregister("in-dc2")
            _, found = await waiter
            assert found == []

            # A client configured for dc2 treats dc2 as local.
            async with ConsulRegistry("127.0.0.1", dc1.port, datacenter="dc3") as via:
                found = await via.healthy_any_dc("imageview")
                assert [i.datacenter for i in found] == ["dc3"]

            # A data centre that is down is skipped, not fatal.
            await c1.deregister("in-dc1")
            await dc2.stop()
            found = await c1.healthy_any_dc("imageview")
            assert [(i.id, i.datacenter) for i in found] == [("in-dc3", "dc3")]


def test_link_refuses_two_registries_for_one_datacenter() -> None:
    a, b = EmbeddedRegistry("dc1"), EmbeddedRegistry("dc1")
    with pytest.raises(ValueError):
        a.link(b)


# -- the client's boundary ------------------------------------------------------


async def test_unreachable_agent_and_closed_client_are_service_unavailable() -> None:
    probe = EmbeddedRegistry()
    port = await probe.start()
    await probe.stop()  # the port is free now: nothing listens there
    client = ConsulRegistry("127.0.0.1", port, request_timeout=2)
    with pytest.raises(ServiceUnavailable):
        await client.healthy("imageview")
    with pytest.raises(ServiceUnavailable):
        await client.register(inst("x"), ttl=1)
    await client.close()
    await client.close()
    with pytest.raises(ServiceUnavailable, match="closed"):
        await client.datacenters()


# -- Consul's wire format, checked without the client -------------------------


async def test_wire_format_of_health_and_catalog(
    client: ConsulRegistry, server: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    await client.register(inst("w", tags=("primary",), meta={"k": "v"}), ttl=10)
    async with http.get(f"{server.url}/v1/health/service/IMAGEVIEW?passing") as resp:
        assert resp.status == 200
        assert int(resp.headers["X-Consul-Index"]) >= 2
        assert resp.headers["X-Consul-KnownLeader"] == "true"
        assert resp.headers["X-Consul-LastContact"] == "0"
        (entry,) = await resp.json()
    assert set(entry) == {"Node", "Service", "Checks"}
    assert entry["Node"]["Node"] == "node-a" and entry["Node"]["Datacenter"] == "dc1"
    service = entry["Service"]
    assert {k: service[k] for k in ("ID", "Service", "Tags", "Address", "Port", "Meta")} == {
        "ID": "w",
        "Service": "imageview",
        "Tags": ["primary"],
        "Address": "127.0.0.1",
        "Port": 9100,
        "Meta": {"k": "v"},
    }
    serf, ttl_check = entry["Checks"]
    assert serf["CheckID"] == "serfHealth" and serf["Status"] == "passing"
    assert ttl_check["CheckID"] == "service:w" and ttl_check["Type"] == "ttl"
    assert ttl_check["ServiceID"] == "w" and ttl_check["Name"] == "Service 'imageview' check"
    assert ttl_check["Definition"]["DeregisterCriticalServiceAfter"] == "1m0s"

    async with http.get(f"{server.url}/v1/catalog/service/imageview?tag=PRIMARY") as resp:
        (row,) = await resp.json()
        assert "X-Consul-Index" in resp.headers
    assert (row["ServiceID"], row["ServicePort"], row["Node"]) == ("w", 9100, "node-a")
    async with http.get(f"{server.url}/v1/catalog/service/imageview?tag=other") as resp:
        assert await resp.json() == []
    async with http.get(f"{server.url}/v1/catalog/services") as resp:
        assert await resp.json() == {"imageview": ["primary"]}
    async with http.get(f"{server.url}/v1/status/leader") as resp:
        assert await resp.json() == "127.0.0.1:8300"
    async with http.get(f"{server.url}/v1/agent/services") as resp:
        agent = (await resp.json())["w"]
        assert agent["Datacenter"] == "dc1" and agent["Service"] == "imageview"


async def test_check_update_warn_and_the_passing_filter(
    server: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    body = {
        "Name": "ffmpeg",
        "ID": "ff-1",
        "Port": 9200,
        "Checks": [{"TTL": "10s"}, {"ttl": "10s", "Status": "passing"}],
    }
    async with http.put(f"{server.url}/v1/agent/service/register", json=body) as resp:
        assert resp.status == 200
    async with http.get(f"{server.url}/v1/agent/checks") as resp:
        checks = await resp.json()
    # Several checks are numbered; without a Status a check starts critical.
    assert checks["service:ff-1:1"]["Status"] == "critical"
    assert checks["service:ff-1:2"]["Status"] == "passing"

    update = {"Status": "passing", "Output": "load=2"}
    async with http.put(f"{server.url}/v1/agent/check/update/SERVICE:FF-1:1", json=update) as resp:
        assert resp.status == 200
    async with http.get(f"{server.url}/v1/health/service/ffmpeg?passing=1") as resp:
        assert len(await resp.json()) == 1
    async with http.put(f"{server.url}/v1/agent/check/warn/service:ff-1:2?note=slow") as resp:
        assert resp.status == 200
    async with http.get(f"{server.url}/v1/health/service/ffmpeg?passing") as resp:
        assert await resp.json() == []
    async with http.get(f"{server.url}/v1/health/service/ffmpeg") as resp:
        (entry,) = await resp.json()
        assert [c["Status"] for c in entry["Checks"]] == ["passing", "passing", "warning"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [
        ("GET", "/v1/health/service/x?index=1&wait=10", None, 400, "Invalid wait time"),
        ("GET", "/v1/health/service/x?index=abc", None, 400, "Invalid index"),
        ("GET", "/v1/health/service/x?dc=nowhere", None, 500, "No path to datacenter"),
        ("GET", "/v1/health/service/x?passing=maybe", None, 400, "Invalid value for ?passing"),
        ("PUT", "/v1/agent/service/register", {"Port": 1}, 400, "Missing service name"),
        ("PUT", "/v1/agent/service/register", {"Name": "a", "Check": {"HTTP": "x"}}, 400, "TTL"),
        ("PUT", "/v1/agent/service/register", {"Name": "a", "Meta": {"a b": "c"}}, 400, "Meta"),
        ("PUT", "/v1/agent/service/deregister/nope", None, 404, 'Unknown service ID "nope"'),
        ("PUT", "/v1/agent/check/pass/service:nope", None, 404, "Unknown check ID"),
        ("PUT", "/v1/agent/check/update/x", {"Status": "great"}, 400, "Invalid check status"),
    ],
)
async def test_consul_errors(
    server: EmbeddedRegistry,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    status: int,
    text: str,
) -> None:
    async with http.request(method, f"{server.url}{path}", json=body) as resp:
        assert resp.status == status
        assert text in await resp.text()


async def test_too_many_services_is_503(http: aiohttp.ClientSession) -> None:
    async with EmbeddedRegistry(max_services=2) as server:
        assert server.port is not None
        async with ConsulRegistry("127.0.0.1", server.port) as client:
            await client.register(inst("a"), ttl=10)
            await client.register(inst("b"), ttl=10)
            await client.register(inst("b", port=2), ttl=10)  # re-registering is fine
            with pytest.raises(ServiceUnavailable, match="too many services"):
                await client.register(inst("c"), ttl=10)


async def test_mounted_into_another_app(http: aiohttp.ClientSession) -> None:
    registry = EmbeddedRegistry("dc7")
    app = web.Application()
    registry.setup(app)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    try:
        async with http.get(f"http://127.0.0.1:{port}/hello") as resp:
            assert await resp.text() == "hi"
        async with ConsulRegistry("127.0.0.1", port) as client:
            await client.register(inst("m"), ttl=0.5)
            found = await client.healthy("imageview")
            assert [(i.id, i.datacenter) for i in found] == [("m", "dc7")]

            async def expired() -> bool:  # the reaper runs with the host app
                return await client.healthy("imageview") == []

            await wait_until(expired, 0.5 + MARGIN)
    finally:
        await runner.cleanup()


async def test_reregistration_keeps_check_state_unless_told(
    server: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    register = f"{server.url}/v1/agent/service/register"
    two = {"Name": "s", "ID": "s1", "Checks": [{"TTL": "10s"}, {"TTL": "10s"}]}
    async with http.put(register, json=two) as resp:
        assert resp.status == 200
    async with http.put(f"{server.url}/v1/agent/check/pass/service:s1:1?note=load=1") as resp:
        assert resp.status == 200
    one = {"name": "s", "id": "s1", "check": {"ttl": "10s", "check_id": "service:s1:1"}}
    async with http.put(register, json=one) as resp:  # no Status: state kept, s1:2 kept
        assert resp.status == 200
    async with http.get(f"{server.url}/v1/agent/checks") as resp:
        checks = await resp.json()
    assert sorted(checks) == ["service:s1:1", "service:s1:2"]
    assert (checks["service:s1:1"]["Status"], checks["service:s1:1"]["Output"]) == (
        "passing",
        "load=1",
    )
    async with http.put(f"{register}?replace-existing-checks=true", json=one) as resp:
        assert resp.status == 200
    async with http.get(f"{server.url}/v1/agent/checks") as resp:
        assert sorted(await resp.json()) == ["service:s1:1"]
    huge = {"Name": "s", "Tags": ["x" * 1000] * 300}
    async with http.put(register, json=huge) as resp:
        assert resp.status == 413
