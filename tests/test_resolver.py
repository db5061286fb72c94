"""DoraResolver: bucket objects from the local store, allowed URLs past the SSRF guard,
every fetch bounded in bytes and in time (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import http.server
import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from dora.builtin_ops.http_fetch import FetchPolicy
from dora.builtin_ops.resolver import DoraResolver, MarkCache
from dora.config import Limits, Settings
from dora.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, ProcessingFailed
from dora.storage.local import LocalStore

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
MARK = b"\x89PNG\r\n\x1a\n" + b"mark-bytes" * 10


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def log_message(self, format: str, *args: object) -> None:  # quiet tests
        pass

    def do_GET(self) -> None:
        type(self).hits[self.path] = type(self).hits.get(self.path, 0) + 1
        route = self.path.partition("?")[0]
        if route == "/mark.png":
            self._answer(200, MARK, {"Content-Length": str(len(MARK))})
        elif route == "/declared-big":
            self._answer(200, b"x" * 10, {"Content-Length": str(10_000_000)})
        elif route == "/undeclared-big":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"y" * 1024)
        elif route == "/slow":
            time.sleep(3)
            self._answer(200, MARK, {"Content-Length": str(len(MARK))})
        elif route == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"z")
                self.wfile.flush()
                time.sleep(0.05)
        elif route == "/to-mark":
            self._answer(302, b"", {"Location": "/mark.png", "Content-Length": "0"})
        elif route == "/to-elsewhere":
            self._answer(302, b"", {"Location": "http://example.com/x.png", "Content-Length": "0"})
        elif route == "/loop":
            self._answer(302, b"", {"Location": "/loop", "Content-Length": "0"})
        elif route == "/broken":
            self._answer(500, b"oops", {"Content-Length": "4"})
        else:
            self._answer(404, b"", {"Content-Length": "0"})

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (a size or time bound): expected here


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def buckets(tmp_path: Path) -> Path:
    root = tmp_path / "buckets"
    async with LocalStore(root, Limits()) as store:
        await store.put("marks", "logo/dora.png", MARK)
        await store.put("marks", "big.bin", b"b" * 5000)
        await store.put("secret", "inside.txt", b"secret")
    return root


def resolver(root: Path, *, hosts: tuple[str, ...] = (), allow: bool = True) -> DoraResolver:
    return DoraResolver(
        root,
        local_hosts=("dora.test:9000",),
        bucket_domains={"img.example.com": "marks"},
        policy=FetchPolicy(allow_hosts=hosts, ssrf_allow=LOOPBACK if allow else (), timeout=1.0),
    )


def test_dora_urls_read_the_local_object(buckets: Path) -> None:
    assert resolver(buckets).fetch("dora://marks/logo/dora.png", 1000) == MARK


def test_own_host_and_bucket_domain_urls_read_the_local_object(buckets: Path) -> None:
    res = resolver(buckets)
    assert res.fetch("http://dora.test:9000/marks/logo/dora.png", 1000) == MARK
    assert res.fetch("https://img.example.com/logo/dora.png?e=1&token=a:b", 1000) == MARK
    assert res.fetch("dora://marks/logo%2Fdora.png", 1000) == MARK  # percent-decoded once


@pytest.mark.parametrize(
    "url",
    [
        "dora://marks/../secret/inside.txt",
        "dora://marks/logo/../../secret/inside.txt",
        "dora://marks/logo/%2e%2e/%2e%2e/secret/inside.txt",
        "http://dora.test:9000/marks/..%2Fsecret%2Finside.txt",
        "dora://../buckets/secret/inside.txt",
        "dora://marks//etc/passwd",
        "dora://marks/logo/dora.png?imageView2/2/w/10",
        "ftp://example.com/x.png",
        "file:///etc/passwd",
    ],
)
def test_traversal_and_odd_urls_are_refused(buckets: Path, url: str) -> None:
    with pytest.raises(BadRequest):
        resolver(buckets).fetch(url, 1000)


def test_a_symlink_out_of_the_bucket_is_refused(buckets: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not yours")
    os.symlink(outside, buckets / "marks" / "link.png")
    with pytest.raises(BadRequest, match="outside"):
        resolver(buckets).fetch("dora://marks/link.png", 1000)


def test_missing_and_oversized_objects(buckets: Path) -> None:
    res = resolver(buckets)
    with pytest.raises(NotFound):
        res.fetch("dora://marks/nothing.png", 1000)
    with pytest.raises(NotFound):
        res.fetch("dora://nobucket/x.png", 1000)
    with pytest.raises(PayloadTooLarge):
        res.fetch("dora://marks/big.bin", 4999)
    assert len(res.fetch("dora://marks/big.bin", 5000)) == 5000


def test_a_replaced_object_is_read_again(buckets: Path) -> None:
    res = resolver(buckets)
    assert res.fetch("dora://marks/logo/dora.png", 1000) == MARK
    path = buckets / "marks" / "logo" / "dora.png"
    path.write_bytes(b"new bytes, new size")
    assert res.fetch("dora://marks/logo/dora.png", 1000) == b"new bytes, new size"


def test_hosts_off_the_allow_list_are_forbidden(buckets: Path, origin: str) -> None:
    with pytest.raises(Forbidden, match="allow-list"):
        resolver(buckets).fetch("http://example.com/x.png", 1000)
    with pytest.raises(Forbidden, match="allow-list"):
        resolver(buckets).fetch(f"{origin}/mark.png", 1000)


def test_loopback_needs_both_the_host_and_the_address_allowed(buckets: Path, origin: str) -> None:
    url = f"{origin}/mark.png?v=guard"
    with pytest.raises(Forbidden, match="loopback"):
        resolver(buckets, hosts=("127.0.0.1",), allow=False).fetch(url, 1000)
    with pytest.raises(Forbidden, match="allow-list"):
        resolver(buckets, hosts=("other.example",), allow=True).fetch(url, 1000)
    assert _Handler.hits.get("/mark.png?v=guard", 0) == 0  # refused before connecting
    assert resolver(buckets, hosts=("127.0.0.1",)).fetch(url, 1000) == MARK
    assert resolver(buckets, hosts=("*",)).fetch(url, 1000) == MARK


def test_remote_fetches_are_cached(buckets: Path, origin: str) -> None:
    res = resolver(buckets, hosts=("127.0.0.1",))
    url = f"{origin}/mark.png?v=cached"
    before = _Handler.hits.get("/mark.png?v=cached", 0)
    assert res.fetch(url, 1000) == MARK
    assert res.fetch(url, 1000) == MARK
    assert _Handler.hits["/mark.png?v=cached"] == before + 1
    with pytest.raises(PayloadTooLarge):  # the cache honours each caller's bound
        res.fetch(url, 10)


def test_size_bounds_are_413(buckets: Path, origin: str) -> None:
    res = resolver(buckets, hosts=("127.0.0.1",))
    with pytest.raises(PayloadTooLarge):
        res.fetch(f"{origin}/declared-big", 1_000_000)
    with pytest.raises(PayloadTooLarge):
        res.fetch(f"{origin}/undeclared-big", 32 * 1024)


def test_slow_and_dripping_origins_are_cut_at_the_timeout(buckets: Path, origin: str) -> None:
    res = resolver(buckets, hosts=("127.0.0.1",))
    for path in ("/slow", "/drip"):
        started = time.monotonic()
        with pytest.raises(ProcessingFailed, match="within 1s"):
            res.fetch(f"{origin}{path}", 1_000_000)
        assert time.monotonic() - started < 2.0


def test_redirects_are_followed_and_checked(buckets: Path, origin: str) -> None:
    res = resolver(buckets, hosts=("127.0.0.1",))
    assert res.fetch(f"{origin}/to-mark", 1000) == MARK
    with pytest.raises(Forbidden):
        res.fetch(f"{origin}/to-elsewhere", 1000)
    with pytest.raises(BadRequest, match="redirects"):
        res.fetch(f"{origin}/loop", 1000)


def test_origin_errors(buckets: Path, origin: str) -> None:
    res = resolver(buckets, hosts=("127.0.0.1",))
    with pytest.raises(NotFound):
        res.fetch(f"{origin}/nothing-here", 1000)
    with pytest.raises(ProcessingFailed, match="HTTP 500"):
        res.fetch(f"{origin}/broken", 1000)


def test_private_literals_and_mapped_addresses_are_refused(buckets: Path) -> None:
    res = resolver(buckets, hosts=("*",), allow=False)
    for url in (
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://[fd00::1]/x.png",
    ):
        with pytest.raises(Forbidden):
            res.fetch(url, 1000)


def test_from_settings_reads_the_allow_lists(tmp_path: Path, origin: str) -> None:
    settings = Settings(
        data_dir=tmp_path, port=9123, watermark_url_allow="127.0.0.1, *.example.org"
    )
    (tmp_path / "buckets" / "b").mkdir(parents=True)
    (tmp_path / "buckets" / "b" / "k.png").write_bytes(MARK)
    env = {"DORA_SSRF_ALLOW": ""}
    res = DoraResolver.from_settings(settings, env)
    assert res.fetch("http://localhost:9123/b/k.png", 1000) == MARK
    with pytest.raises(Forbidden, match="loopback"):
        res.fetch(f"{origin}/mark.png", 1000)
    env["DORA_SSRF_ALLOW"] = "127.0.0.1/32"
    assert DoraResolver.from_settings(settings, env).fetch(f"{origin}/mark.png", 1000) == MARK


def test_the_cache_is_bounded() -> None:
    cache = MarkCache(max_entries=3, max_bytes=400)
    for index in range(5):
        cache.put(("k", index), bytes(50), ttl=60)
    assert len(cache) == 3
    assert cache.get(("k", 0)) is None and cache.get(("k", 4)) is not None
    cache.put(("big",), bytes(101), ttl=60)  # above a quarter of the budget: not kept
    assert cache.get(("big",)) is None
    cache.put(("old",), b"x", ttl=-1)
    assert cache.get(("old",)) is None
