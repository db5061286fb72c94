"""The seam through which ops read resources other than their input.

A watermark names its mark image by URL: an object of a bucket
(``dora://<bucket>/<key>``, or an address of the gateway itself) or an image
on another web server. Ops never open files or sockets themselves; the
runtime hands them a :class:`ResourceResolver` that knows where buckets live
and which hosts may be fetched from (past the SSRF guard of
:mod:`dora.ssrf`). The worker's implementation is
:class:`dora.builtin_ops.resolver.DoraResolver`.

Standard library only: this sits at the bottom of the import graph.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["DORA_SCHEME", "ResourceResolver"]

DORA_SCHEME = "dora"  # dora://<bucket>/<key>: an object of this Dora's own store


class ResourceResolver(Protocol):
    """Reads the bytes a URL names, for an op running in a worker thread.

    Implementations are synchronous (ops run in threads) and thread-safe.
    Every failure is a :class:`~dora.errors.DoraError`: 400 for a malformed
    or unsupported URL, 403 for a host or address that is not allowed, 404
    for a missing object, 413 beyond ``max_bytes``, 599 when the origin
    fails or does not answer in time.
    """

    def fetch(self, url: str, max_bytes: int) -> bytes:
        """The resource's bytes, at most ``max_bytes`` of them."""
        ...
