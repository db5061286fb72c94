"""End to end through ``dora serve``: the official qiniu SDK uploads, processing
URLs run in real worker processes found through the registry, and a worker
killed mid-load costs no request."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import qiniu
from images import make_photo_jpeg
from PIL import Image
from qiniu.utils import etag_stream
from serving import Served, dora_command, dora_serve


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with dora_serve(tmp_path_factory.mktemp("e2e") / "data", workers=2) as srv:
        yield srv


def _sdk_upload(srv: Served, bucket: str, key: str, data: bytes) -> dict[str, str]:
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    token = auth.upload_token(bucket, key, 3600)
    region = qiniu.Region(up_host=srv.url, up_host_backup=srv.url, io_host=srv.url)
    ret, info = qiniu.put_data(token, key, data, regions=[region])
    assert info.status_code == 200, info
    assert isinstance(ret, dict)
    return ret


def test_sdk_upload_then_processing_urls_with_cache(served: Served) -> None:
    photo = make_photo_jpeg(1920, 1080, seed=7)
    ret = _sdk_upload(served, "photos", "cat.jpg", photo)
    assert ret["key"] == "cat.jpg"
    assert ret["hash"] == etag_stream(io.BytesIO(photo))

    async def fetch(query: str) -> tuple[int, bytes, dict[str, str]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{served.url}/photos/cat.jpg?{query}") as resp,
        ):
            return resp.status, await resp.read(), dict(resp.headers)

    for mode, size in (("1", (300, 200)), ("2", (300, 169))):
        query = f"imageView2/{mode}/w/300/h/200"
        status, body, headers = asyncio.run(fetch(query))
        assert status == 200, body
        assert headers["Content-Type"] == "image/jpeg"
        assert headers["X-Dora-Cache"] == "MISS"
        image = Image.open(io.BytesIO(body))
        assert image.format == "JPEG"
        assert image.size == size
        status2, body2, headers2 = asyncio.run(fetch(query))
        assert status2 == 200
        assert headers2["X-Dora-Cache"] == "HIT"
        assert body2 == body


def test_cli_put_and_get(served: Served, tmp_path: Path) -> None:
    src = tmp_path / "dog.png"
    Image.new("RGB", (640, 480), (200, 30, 30)).save(src)
    put = subprocess.run(
        dora_command(
            "put", "--data-dir", str(served.data_dir), "--url", served.url, "pets", str(src)
        ),
        capture_output=True,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    assert b'"key": "dog.png"' in put.stdout or b'"key":"dog.png"' in put.stdout
    out = tmp_path / "thumb.webp"
    get = subprocess.run(
        dora_command(
            "get", f"{served.url}/pets/dog.png?imageView2/2/w/100/format/webp", "-o", str(out)
        ),
        capture_output=True,
        check=False,
    )
    assert get.returncode == 0, get.stderr
    with Image.open(out) as image:
        assert image.format == "WEBP"
        assert image.size == (100, 75)
    missing = subprocess.run(
        dora_command("get", f"{served.url}/pets/nope.png?imageInfo"),
        capture_output=True,
        check=False,
    )
    assert missing.returncode == 1
    assert b'"code": 404' in missing.stderr or b'"code":404' in missing.stderr


def test_sigkill_a_worker_while_requests_flow(tmp_path: Path) -> None:
    env = {"DORA_RESULT_CACHE_BYTES": "0"}  # every request really reaches a worker
    with dora_serve(tmp_path / "data", workers=2, env=env) as srv:
        _sdk_upload(srv, "photos", "big.jpg", make_photo_jpeg(1920, 1080, seed=3))
        before = srv.healthy_instances()
        assert len(before) == 2
        victim = before[0]
        meta = victim["Meta"]
        assert isinstance(meta, dict)
        victim_pid = int(meta["pid"])

        async def load() -> list[int]:
            statuses: list[int] = []
            url = f"{srv.url}/photos/big.jpg?imageView2/1/w/300/h/200"
            async with aiohttp.ClientSession() as session:

                async def client(n: int) -> None:
                    for _ in range(n):
                        async with session.get(url) as resp:
                            await resp.read()
                            statuses.append(resp.status)

                async def killer() -> None:
                    await asyncio.sleep(0.5)
                    os.kill(victim_pid, signal.SIGKILL)

                await asyncio.gather(killer(), *(client(12) for _ in range(16)))
            return statuses

        killed_at = time.monotonic()
        statuses = asyncio.run(load())
        assert len(statuses) == 16 * 12
        assert set(statuses) == {200}
        # The replacement registers within 5 s of the kill.
        while True:
            now = [s for s in srv.healthy_instances() if s["ID"] != victim["ID"]]
            if len(now) == 2:
                break
            assert time.monotonic() - killed_at < 5.0, now
            time.sleep(0.05)


def test_several_gateway_processes_share_the_port(tmp_path: Path) -> None:
    with dora_serve(tmp_path / "data", workers=1, gateways=2) as srv:
        _sdk_upload(srv, "photos", "p.jpg", make_photo_jpeg(640, 480, seed=5))
        children = subprocess.run(
            ["pgrep", "-f", "-P", str(srv.proc.pid), "dora.gateway.main"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert len(children) == 2

        async def burst() -> list[int]:
            url = f"{srv.url}/photos/p.jpg?imageView2/2/w/64"
            connector = aiohttp.TCPConnector(force_close=True)  # new connections spread out
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one() -> int:
                    async with session.get(url) as resp:
                        await resp.read()
                        return resp.status

                return await asyncio.gather(*(one() for _ in range(40)))

        assert set(asyncio.run(burst())) == {200}
        # The other gateway keeps serving when one goes away (connections the
        # kernel had already queued on the dead one are lost with it).
        victim = int(children[0])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{victim}").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert set(asyncio.run(burst())) == {200}
