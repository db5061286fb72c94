"""The SSRF guard: every non-public address kind refused, allow lists, real resolution."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dora import ssrf
from dora.errors import BadRequest, Forbidden

LOOPBACK = ssrf.parse_allow("127.0.0.1/32")

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # the cloud metadata endpoint
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "private",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "198.18.0.1": "private",  # benchmarking
    "192.0.2.1": "private",  # documentation
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local",
    "::7f00:1": "loopback (embedded 127.0.0.1)",  # IPv4-compatible
    "64:ff9b::a00:1": "private (embedded 10.0.0.1)",  # NAT64
    "2002:7f00:1::": "loopback (embedded 127.0.0.1)",  # 6to4
    "2002:a9fe:a9fe::1": "link-local (embedded 169.254.169.254)",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "private (embedded 192.0.2.45)",  # Teredo
    "2001:db8::1": "private",  # documentation
}


@pytest.mark.parametrize(("address", "kind"), sorted(REFUSED.items()))
def test_non_public_addresses_are_refused_with_their_kind(address: str, kind: str) -> None:
    assert ssrf.address_problem(address) == kind
    with pytest.raises(Forbidden, match="not allowed as a destination"):
        ssrf.check_address(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_public_addresses_pass(address: str) -> None:
    assert ssrf.address_problem(address) is None
    ssrf.check_address(address)


def test_an_allow_list_admits_exactly_its_networks() -> None:
    allow = ssrf.parse_allow(" 127.0.0.1/32 , 10.0.0.0/8,fd00::/8")
    assert ssrf.address_problem("127.0.0.1", allow) is None
    assert ssrf.address_problem("127.0.0.2", allow) == "loopback"
    assert ssrf.address_problem("10.200.1.1", allow) is None
    assert ssrf.address_problem("192.168.0.1", allow) == "private"
    assert ssrf.address_problem("fd00::5", allow) is None
    # The IPv4 host inside a mapped or 6to4 address is what the list is about.
    assert ssrf.address_problem("::ffff:127.0.0.1", allow) is None
    assert ssrf.address_problem("2002:7f00:1::", allow) is None
    assert ssrf.address_problem("::ffff:127.0.0.2", allow) == "loopback"


def test_allow_list_reads_config_and_environment() -> None:
    allow = ssrf.allow_list("10.0.0.0/8", {ssrf.ALLOW_ENV: "127.0.0.1/32,::1"})
    assert allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert ssrf.allow_list("", {}) == ()
    with pytest.raises(BadRequest, match="not an address or a CIDR"):
        ssrf.parse_allow("127.0.0.1/33")
    with pytest.raises(BadRequest, match="not an address or a CIDR"):
        ssrf.allow_list("", {ssrf.ALLOW_ENV: "localhost"})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:25/", "scheme 'gopher' is not allowed"),
        ("http:///path", "no host"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com:99999/", "malformed URL"),
        ("http://" + "a" * 3000, "longer than"),
    ],
)
def test_malformed_or_foreign_urls_are_bad_requests(url: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        ssrf.check_url(url)


def test_split_url_defaults_ports_and_strips_brackets() -> None:
    assert ssrf.split_url("https://Example.COM/x?y") == ("https", "example.com", 443)
    assert ssrf.split_url("http://[::1]:8080/") == ("http", "::1", 8080)
    assert ssrf.split_url("HTTP://h/") == ("http", "h", 80)


def test_names_are_resolved_and_every_address_checked() -> None:
    # "localhost" resolves (through the real resolver) to loopback only.
    with pytest.raises(Forbidden, match=r"localhost \(127\.0\.0\.1\) is loopback"):
        ssrf.check_url("http://localhost:8080/notify")
    ssrf.check_url("http://localhost:8080/notify", ssrf.parse_allow("127.0.0.1/32,::1"))
    with pytest.raises(Forbidden, match=r"127\.0\.0\.1 is loopback"):
        ssrf.check_url("http://127.0.0.1/")
    with pytest.raises(Forbidden, match="is loopback"):
        ssrf.check_url("http://[::ffff:127.0.0.1]/")
    with pytest.raises(Forbidden, match="link-local"):
        ssrf.check_url("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(BadRequest, match="cannot resolve host"):
        ssrf.check_url("http://no-such-host.invalid/")


async def test_resolve_checked_pins_the_addresses_it_checked() -> None:
    checked = await ssrf.resolve_checked("http://localhost:9/x", LOOPBACK)
    assert checked.host == "localhost"
    assert checked.port == 9
    assert checked.addresses == ("127.0.0.1",)
    with pytest.raises(Forbidden):
        await ssrf.resolve_checked("https://localhost/x")


_PRIVATE_V4 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


@given(st.sampled_from(_PRIVATE_V4), st.integers(min_value=0, max_value=2**24 - 1))
def test_private_addresses_refused_in_every_spelling(
    net: ipaddress.IPv4Network, offset: int
) -> None:
    ip = net[offset % net.num_addresses]
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80))
    for spelling in (ip, mapped, sixtofour):
        assert ssrf.address_problem(spelling) is not None
        assert ssrf.address_problem(spelling, (net,)) is None
