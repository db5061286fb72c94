"""The worker's :class:`~dora.resources.ResourceResolver`: bucket objects and allowed URLs.

What a URL may name, in the order it is tried::

    dora://<bucket>/<key>                        an object of the local store
    http(s)://<own host>/<bucket>/<key>          the same, through this gateway's address
    http(s)://<bucket domain>/<key>              the same, through a bucket domain
    http(s)://<allow-listed host>/...            fetched over HTTP, past the SSRF guard

Objects are read straight from the local store's directory
(``<data_dir>/buckets/<bucket>/<key>``, see :mod:`dora.storage.local`), the
bucket name and key validated as the store validates them and the real path
confined to the bucket, so no URL reaches a file outside it. Other hosts
must be on the allow-list (``watermark_url_allow``; ``*.example.com`` takes
subdomains, ``*`` any host) and every address they resolve to must pass
the SSRF guard (:mod:`dora.ssrf`); the connection then goes to the
checked address itself (DNS is asked once, so it cannot answer differently
for the connect). Redirects are followed a few times, each hop checked anew.
Every fetch is bounded in bytes and in time. Results are kept in a small
in-process LRU: local objects by file identity (a replaced object is read
again), remote ones for a few minutes.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from dora.builtin_ops.http_fetch import FetchPolicy, fetch_url
from dora.config import Limits, Settings
from dora.errors import BadRequest, NotFound, PayloadTooLarge, ProcessingFailed
from dora.layout import buckets_root
from dora.resources import DORA_SCHEME
from dora.ssrf import allow_list
from dora.storage.keys import validate_bucket, validate_key

__all__ = ["DoraResolver", "FetchPolicy", "MarkCache"]

CACHE_ENTRIES = 64
CACHE_BYTES = 32 * 1024 * 1024
REMOTE_TTL = 300.0  # seconds a fetched URL is reused without asking its origin again


class MarkCache:
    """A thread-safe LRU of fetched bytes, bounded in entries and in total bytes."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[object, ...], tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        """The cached bytes for ``key`` if present and not expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, data = entry
            if expires < time.monotonic():
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return data

    def put(self, key: tuple[object, ...], data: bytes, ttl: float) -> None:
        """Keep ``data`` for ``ttl`` seconds; entries above a quarter of the budget are not kept."""
        if len(data) > self._max_bytes // 4 or self._max_entries < 1:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (time.monotonic() + ttl, data)
            self._bytes += len(data)
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: tuple[object, ...]) -> None:
        _, data = self._entries.pop(key)
        self._bytes -= len(data)


def _host_port(parts: SplitResult) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"invalid port in URL {parts.geturl()!r}") from exc
    host = (parts.hostname or "").rstrip(".")
    return host, port if port is not None else (443 if parts.scheme == "https" else 80)


def _refuse_processing_query(query: str, url: str) -> None:
    """A mark URL may carry download parameters (``e``, ``token``) but no fops."""
    for element in query.split("&"):
        name, sep, _ = element.partition("=")
        if element and (not sep or "/" in unquote(name) or "|" in unquote(name)):
            raise BadRequest(f"the resource {url!r} asks for processing; give the plain object")


class DoraResolver:
    """Resolves ``dora://`` and HTTP(S) URLs for ops (thread-safe, synchronous)."""

    def __init__(
        self,
        buckets_root: Path,
        *,
        local_hosts: Iterable[str] = (),
        bucket_domains: Mapping[str, str] | None = None,
        policy: FetchPolicy | None = None,
        max_key_bytes: int = Limits().max_key_bytes,
        cache: MarkCache | None = None,
    ) -> None:
        self._root = Path(buckets_root).absolute()
        self._local_hosts = frozenset(host.lower().rstrip(".") for host in local_hosts)
        self._bucket_domains = {k.lower(): v for k, v in (bucket_domains or {}).items()}
        self._policy = policy or FetchPolicy()
        self._max_key_bytes = max_key_bytes
        self._cache = cache if cache is not None else MarkCache()

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> DoraResolver:
        """The resolver of a worker started with ``settings``.

        The URL allow-list is ``Settings.watermark_url_allow``; the SSRF
        allow-list is ``Settings.ssrf_allow`` joined with ``DORA_SSRF_ALLOW``.
        """
        env = os.environ if env is None else env
        allow_text = settings.watermark_url_allow
        networks = allow_list(settings.ssrf_allow, env)
        hosts = [f"{settings.host}:{settings.port}"]
        if settings.host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost"):
            hosts.append(f"localhost:{settings.port}")
            hosts.append(f"127.0.0.1:{settings.port}")
        return cls(
            buckets_root(settings),
            local_hosts=hosts,
            bucket_domains=settings.bucket_domain_map(),
            policy=FetchPolicy(
                allow_hosts=tuple(h.strip().lower() for h in allow_text.split(",") if h.strip()),
                ssrf_allow=networks,
            ),
            max_key_bytes=settings.limits.max_key_bytes,
        )

    def fetch(self, url: str, max_bytes: int) -> bytes:
        """The bytes ``url`` names, at most ``max_bytes`` (see the module docstring)."""
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme == DORA_SCHEME:
            bucket = parts.netloc
            key = unquote(parts.path[1:])
            _refuse_processing_query(parts.query, url)
            return self.read_object(bucket, key, max_bytes)
        if scheme not in ("http", "https"):
            raise BadRequest(f"unsupported URL scheme in {url!r}: use dora, http or https")
        if parts.username is not None or parts.password is not None:
            raise BadRequest("credentials in a resource URL are not supported")
        host, port = _host_port(parts)
        if not host:
            raise BadRequest(f"no host in URL {url!r}")
        path = unquote(parts.path)
        if f"{host}:{port}" in self._local_hosts or host in self._local_hosts:
            bucket, _, key = path[1:].partition("/")
            _refuse_processing_query(parts.query, url)
            return self.read_object(bucket, key, max_bytes)
        domain_bucket = self._bucket_domains.get(host)
        if domain_bucket is not None:
            _refuse_processing_query(parts.query, url)
            return self.read_object(domain_bucket, path[1:], max_bytes)
        return self._fetch_remote(parts.geturl(), max_bytes)

    def read_object(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """An object of the local store, confined to its bucket's directory."""
        validate_bucket(bucket)
        validate_key(key, self._max_key_bytes)
        bucket_dir = self._root / bucket
        path = bucket_dir.joinpath(*key.split("/"))
        real, real_dir = os.path.realpath(path), os.path.realpath(bucket_dir)
        if os.path.commonpath((real, real_dir)) != real_dir:
            raise BadRequest(f"key {key!r} leads outside its bucket")
        try:
            with open(real, "rb") as handle:
                info = os.fstat(handle.fileno())
                cache_key = ("object", real, info.st_ino, info.st_size, info.st_mtime_ns)
                cached = self._cache.get(cache_key)
                if cached is not None:
                    return _bounded(cached, max_bytes, f"{bucket}:{key}")
                if info.st_size > max_bytes:
                    raise PayloadTooLarge(
                        f"{bucket}:{key} is {info.st_size} bytes; the limit is {max_bytes}"
                    )
                data = handle.read(max_bytes + 1)  # the file may grow while we read
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"no such object {bucket}:{key}") from exc
        except IsADirectoryError as exc:
            raise NotFound(f"no such object {bucket}:{key} (a folder)") from exc
        except OSError as exc:
            raise ProcessingFailed(f"cannot read {bucket}:{key}: {exc.strerror}") from exc
        data = _bounded(data, max_bytes, f"{bucket}:{key}")
        self._cache.put(cache_key, data, ttl=REMOTE_TTL)
        return data

    def _fetch_remote(self, url: str, max_bytes: int) -> bytes:
        cache_key = ("url", url)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return _bounded(cached, max_bytes, url)
        data = fetch_url(url, max_bytes, self._policy)
        self._cache.put(cache_key, data, ttl=REMOTE_TTL)
        return data


def _bounded(data: bytes, max_bytes: int, what: str) -> bytes:
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{what} is larger than {max_bytes} bytes")
    return data
