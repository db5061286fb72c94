"""The SSRF guard: outbound URLs (notify callbacks, URL sources) reach only public hosts.

A URL passes when its scheme is ``http`` or ``https`` and *every* address its
host resolves to is public. Refused, unless allow-listed: loopback, private
(RFC 1918), link-local, CGNAT (100.64.0.0/10), multicast, unspecified,
reserved and every other range that is not globally routable (documentation,
benchmarking, 0.0.0.0/8, ...), IPv6 unique-local (fc00::/7) and site-local,
and IPv6 addresses that embed an IPv4 address which would be refused itself
(IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``).

An address inside an allow-listed network passes whatever its kind: the list
comes from the configuration and from ``DORA_SSRF_ALLOW``, comma-separated
CIDRs (tests allow-list ``127.0.0.1/32``).

Checking a name and then letting a client library resolve it again leaves a
window for DNS rebinding; callers connect only to the addresses returned by
:func:`resolve_checked` (or check again in their client's resolver, with
:func:`check_address`, as :mod:`dora.scheduler.notify` does).

Errors: :class:`~dora.errors.BadRequest` for a URL that is malformed, of
another scheme or whose host does not resolve; :class:`~dora.errors.Forbidden`
for a refused address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from dora.errors import BadRequest, Forbidden

__all__ = [
    "ALLOW_ENV",
    "CheckedUrl",
    "IPAddress",
    "IPNetwork",
    "address_problem",
    "allow_list",
    "check_address",
    "check_url",
    "parse_allow",
    "resolve_checked",
    "split_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_ENV = "DORA_SSRF_ALLOW"
MAX_URL_CHARS = 2048
MAX_ALLOW_ENTRIES = 256
SCHEMES = {"http": 80, "https": 443}

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")


@dataclasses.dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A URL whose host resolved to ``addresses``, every one of them allowed."""

    url: str
    scheme: str
    host: str  # as written in the URL (a name or an address), without brackets
    port: int
    addresses: tuple[str, ...]


def parse_allow(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (``127.0.0.1/32,10.0.0.0/8``; a bare address is a /32 or /128)."""
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise BadRequest(f"SSRF allow list: {item!r} is not an address or a CIDR") from exc
        if len(networks) > MAX_ALLOW_ENTRIES:
            raise BadRequest(f"SSRF allow list: more than {MAX_ALLOW_ENTRIES} entries")
    return tuple(networks)


def allow_list(config: str = "", env: Mapping[str, str] | None = None) -> tuple[IPNetwork, ...]:
    """The allow list of ``config`` (a setting's text) joined with ``DORA_SSRF_ALLOW``."""
    env = os.environ if env is None else env
    return parse_allow(",".join((config, env.get(ALLOW_ENV, ""))))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries inside it (mapped, 6to4, ...)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    value = int(ip)
    if value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        found.append(ipaddress.IPv4Address(value))
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return found


def _kind(ip: IPAddress) -> str | None:
    """What makes ``ip`` unfit for outbound calls, ignoring what it embeds."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "CGNAT"
    if isinstance(ip, ipaddress.IPv6Address) and (ip in _SITE_LOCAL or ip.is_site_local):
        return "site-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


def _allowed(ip: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in allow)


def address_problem(address: str | IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``address`` is refused (a short phrase), or ``None`` when it may be reached."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return "link-local (scoped)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped, allow)  # the IPv4 host it really is
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
    if _allowed(ip, allow) or any(_allowed(inner, allow) for inner in embedded):
        return None
    for inner in embedded:
        kind = _kind(inner)
        if kind is not None:
            return f"{kind} (embedded {inner})"
    return _kind(ip)


def check_address(address: str | IPAddress, allow: Sequence[IPNetwork] = ()) -> None:
    """Raise :class:`Forbidden` unless ``address`` may be reached."""
    problem = address_problem(address, allow)
    if problem is not None:
        raise Forbidden(f"address {address} is {problem}: not allowed as a destination")


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL; :class:`BadRequest` otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise BadRequest(f"URL longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise BadRequest("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BadRequest(f"URL scheme {parts.scheme!r} is not allowed: use http or https")
    host = parts.hostname
    if not host:
        raise BadRequest("URL has no host")
    return scheme, host, port if port is not None else SCHEMES[scheme]


def _addresses(infos: Iterable[tuple[object, ...]]) -> tuple[str, ...]:
    found: list[str] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        address = str(sockaddr[0])
        if len(sockaddr) >= 4 and sockaddr[3]:
            address = f"{address}%{sockaddr[3]}"  # keep the scope: it is refused
        if address not in found:
            found.append(address)
    return tuple(found)


def _checked(
    url: str, parts: tuple[str, str, int], addresses: tuple[str, ...], allow: Sequence[IPNetwork]
) -> CheckedUrl:
    scheme, host, port = parts
    if not addresses:
        raise BadRequest(f"host {host!r} has no address")
    for address in addresses:
        problem = address_problem(address, allow)
        if problem is not None:
            shown = address if address == host else f"{host} ({address})"
            raise Forbidden(f"{shown} is {problem}: not allowed as a destination")
    return CheckedUrl(url, scheme, host, port, addresses)


def check_url(url: str, allow: Sequence[IPNetwork] = ()) -> None:
    """Raise unless ``url`` is http(s) to a host whose every address may be reached.

    Blocking (``getaddrinfo``): from async code use :func:`resolve_checked`.
    """
    parts = split_url(url)
    _, host, port = parts
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadRequest(f"cannot resolve host {host!r}: {exc}") from exc
    _checked(url, parts, _addresses(infos), allow)


async def resolve_checked(url: str, allow: Sequence[IPNetwork] = ()) -> CheckedUrl:
    """Check ``url`` (see :func:`check_url`) on the event loop's resolver and
    return the addresses to connect to: connect to these, not to the name."""
    parts = split_url(url)
    _, host, port = parts
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadRequest(f"cannot resolve host {host!r}: {exc}") from exc
    return _checked(url, parts, _addresses(infos), allow)
