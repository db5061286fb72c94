"""One bounded HTTP(S) GET past the SSRF guard, for resources ops need (watermark images).

The host must be on the policy's allow-list; the name is resolved once and
every address it resolves to must pass :func:`dora.ssrf.check_address`;
the connection then goes to the checked address (TLS still verifies the
certificate against the host name), so a second DNS answer cannot point the
request somewhere else. Redirects are followed up to
:attr:`FetchPolicy.max_redirects` times, each target checked like the first.
The whole fetch, name lookup to last byte, is bounded by
:attr:`FetchPolicy.timeout` (a watchdog shuts the socket down when it runs
out, so no trickle of bytes can hold a thread longer) and the body by
``max_bytes``. Synchronous: it runs in a worker's op thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from dora.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, ProcessingFailed
from dora.ssrf import IPAddress, IPNetwork, check_address

__all__ = ["FetchPolicy", "fetch_url"]

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
USER_AGENT = "dora-resource-fetch/1"


@dataclasses.dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Which URLs may be fetched, and how long and how far a fetch may go."""

    allow_hosts: tuple[str, ...] = ()  # "img.example.com", "*.example.com", "*"
    ssrf_allow: tuple[IPNetwork, ...] = ()  # networks exempt from the address guard
    timeout: float = 10.0  # seconds for the whole fetch
    max_redirects: int = 3

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (lower case, no port) is on the allow-list."""
        for pattern in self.allow_hosts:
            if pattern in ("*", host):
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False


class _Watchdog:
    """Shuts down the sockets of one fetch when its time is up."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self.fired:
            raise TimeoutError
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a fixed, already checked address."""

    def __init__(self, host: str, port: int, address: str, watchdog: _Watchdog) -> None:
        super().__init__(host, port, timeout=watchdog.remaining())
        self._address = address
        self._watchdog = watchdog

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self._watchdog.watch(sock)
        self.sock = sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """As :class:`_PinnedHTTPConnection`, with TLS verified against the host name."""

    def connect(self) -> None:
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)


def _bounded_call(func: Callable[[], list[IPAddress]], watchdog: _Watchdog) -> list[IPAddress]:
    """Run a blocking lookup in a helper thread, waiting no longer than the fetch may."""
    box: list[list[IPAddress] | BaseException] = []

    def target() -> None:
        try:
            box.append(func())
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=target, name="dora-resolve", daemon=True)
    thread.start()
    thread.join(watchdog.remaining())
    if not box:
        raise TimeoutError
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _resolve(host: str, port: int, policy: FetchPolicy, watchdog: _Watchdog) -> str:
    """The address to connect to: every address of ``host`` must be allowed."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:

        def lookup() -> list[IPAddress]:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return [ipaddress.ip_address(info[4][0]) for info in infos]

        try:
            addresses = _bounded_call(lookup, watchdog)
        except (socket.gaierror, UnicodeError) as exc:
            raise BadRequest(f"cannot resolve host {host!r}: {exc}") from exc
        if not addresses:
            raise BadRequest(f"host {host!r} has no address")
    for address in addresses:
        check_address(address, policy.ssrf_allow)
    return str(addresses[0])


def _open(
    url: str, policy: FetchPolicy, watchdog: _Watchdog
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadRequest(f"unsupported URL scheme in {url!r}")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("credentials in a resource URL are not supported")
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise BadRequest(f"invalid port in URL {url!r}") from exc
    if not host:
        raise BadRequest(f"no host in URL {url!r}")
    if not policy.host_allowed(host):
        raise Forbidden(f"host {host!r} is not on the resource allow-list")
    address = _resolve(host, port, policy, watchdog)
    kind = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = kind(host, port, address, watchdog)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        connection.request(
            "GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*, */*"}
        )
        return connection, connection.getresponse()
    except BaseException:
        connection.close()
        raise


def _read_body(response: http.client.HTTPResponse, max_bytes: int, watchdog: _Watchdog) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the resource is {declared} bytes; the limit is {max_bytes}")
    parts: list[bytes] = []
    size = 0
    while True:
        watchdog.remaining()
        chunk = response.read1(_CHUNK)
        if not chunk:
            watchdog.remaining()  # an end caused by the watchdog is no end of the body
            return b"".join(parts)
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the resource is larger than {max_bytes} bytes")
        parts.append(chunk)


def fetch_url(url: str, max_bytes: int, policy: FetchPolicy) -> bytes:
    """GET ``url`` under ``policy``: its body, at most ``max_bytes`` of it."""
    watchdog = _Watchdog(policy.timeout)
    current = url
    try:
        for _ in range(policy.max_redirects + 1):
            connection, response = _open(current, policy, watchdog)
            try:
                location = response.getheader("Location")
                if response.status in _REDIRECTS and location:
                    current = urljoin(current, location)
                    continue
                if response.status == 404:
                    raise NotFound(f"the resource {current!r} does not exist (HTTP 404)")
                if response.status != 200:
                    raise ProcessingFailed(
                        f"fetching {current!r}: the origin answered HTTP {response.status}"
                    )
                return _read_body(response, max_bytes, watchdog)
            finally:
                response.close()
                connection.close()
    except (OSError, http.client.HTTPException) as exc:
        if watchdog.fired or isinstance(exc, TimeoutError):
            raise ProcessingFailed(
                f"fetching {current!r}: no complete answer within {policy.timeout:g}s"
            ) from exc
        if isinstance(exc, ssl.SSLError):
            raise ProcessingFailed(f"fetching {current!r}: TLS failed: {exc.reason}") from exc
        raise ProcessingFailed(f"fetching {current!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        watchdog.cancel()
    raise BadRequest(f"fetching {url!r}: more than {policy.max_redirects} redirects")
