"""Reading an object URL: which bucket and key, which fops, which parameters.

``GET /<bucket>/<key>?<fops>&attname=<name>&e=<deadline>&token=<AK>:<sign>``,
or ``GET /<key>?...`` on a bucket domain (a Host that the settings map to a
bucket). The fop string is the first ``&``-separated query element that is
not a ``name=value`` parameter; fops may themselves hold ``=`` (base64
padding), so an element is a parameter only when the text before its first
``=`` has no ``/`` or ``|``. Everything is percent-decoded here, once; the
raw path and query stay available for signature checks, because that is
what the client signed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import unquote

from aiohttp import web

from dora.errors import BadRequest, NotFound
from dora.storage.keys import validate_bucket

MAX_QUERY_CHARS = 16 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The object a GET names, and what the query asks of it."""

    bucket: str
    key: str
    fops: str | None  # decoded fop text, None for a plain download
    params: Mapping[str, str]  # decoded name=value parameters (first of each)
    raw_path: str  # the path exactly as sent, without the query
    raw_query: str  # the query exactly as sent, without '?'

    @property
    def is_signed_download(self) -> bool:
        return "e" in self.params or "token" in self.params


def _is_parameter(element: str) -> bool:
    name, sep, _ = element.partition("=")
    if not sep:
        return False
    name = unquote(name)
    return "/" not in name and "|" not in name


def split_query(raw_query: str) -> tuple[str | None, dict[str, str]]:
    """The decoded fop text (or None) and the decoded parameters of a raw query."""
    if len(raw_query) > MAX_QUERY_CHARS:
        raise BadRequest(f"query longer than {MAX_QUERY_CHARS} characters")
    fops: str | None = None
    params: dict[str, str] = {}
    for element in raw_query.split("&"):
        if not element:
            continue
        if _is_parameter(element):
            name, _, value = element.partition("=")
            params.setdefault(unquote(name), unquote(value))
        elif fops is None:
            fops = unquote(element)
    return fops, params


def host_without_port(request: web.Request) -> str:
    """The request's Host, lowercased, without its port."""
    return (request.url.host or "").lower().rstrip(".")


def resolve_target(request: web.Request, bucket_domains: Mapping[str, str]) -> Target:
    """Read bucket, key, fops and parameters off a GET or HEAD request."""
    raw_path, _, raw_query = request.raw_path.partition("?")
    path = unquote(raw_path)
    fops, params = split_query(raw_query)
    domain_bucket = bucket_domains.get(host_without_port(request))
    if domain_bucket is not None:
        bucket, key = domain_bucket, path[1:]
    else:
        bucket, _, key = path[1:].partition("/")
        if not bucket or not key:
            raise NotFound("no such object: want /<bucket>/<key>")
        validate_bucket(bucket)
    if not key:
        raise NotFound("no such object: want /<key> on a bucket domain")
    return Target(bucket, key, fops, MappingProxyType(params), raw_path, raw_query)


def full_url(request: web.Request) -> str:
    """The URL as the client sent it (scheme, Host, raw path and query): what a
    private download token signs."""
    return f"{request.scheme}://{request.host}{request.raw_path}"
