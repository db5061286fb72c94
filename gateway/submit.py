"""Submitting asynchronous jobs: everything checked before a job is queued.

Both ways a job starts go through :class:`JobSubmitter`: ``POST /pfop``
(:mod:`dora.gateway.pfop`) and an upload whose policy carries
``persistentOps`` (:func:`persistent_ops_hook`, the gateway's after-upload
hook). A job that is queued can run: a bad request is refused at submit
time, never discovered by the dispatcher later.

Checks, in order, each a precise error:

1. ``bucket`` and ``key`` are well-formed, ``type`` is 0 or 1 (400);
2. every ``;``-separated chain parses against the op catalog: an unknown op
   or a bad argument is a 400 naming it; raw ops (``avconcat``) run their
   own validator; ``saveas`` targets are valid bucket/key names (400);
3. ``pipeline`` exists (400 ``no such pipeline: <name>``);
4. ``notifyURL`` is an absolute ``http(s)`` URL (400); the SSRF guard, when
   the gateway has one, runs here too (it runs again at delivery, since
   DNS can change in between);
5. the source object exists (404, as a download of it would answer).
   Qiniu accepts a pfop on a missing key and fails the job later; refusing
   early tells the caller at once and keeps dead jobs out of the queue.
   After an upload the source was just stored, so this check is skipped;
6. the pipeline has room: a full one is 429 with ``Retry-After`` (from the
   store).

Once queued, the job's dispatcher is woken (``wake``, a
:class:`dora.wakeup.Waker`: one datagram, never blocking, never failing).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from dora.builtin_ops.av import validate_av_stage
from dora.config import Limits
from dora.errors import BadRequest, NotFound
from dora.fop import Catalog, FopChain, parse_pfop
from dora.gateway.context import AfterUpload, BeforeUpload, UploadedObject
from dora.jobs import Job, JobSpec, JobStoreOptions, pipeline_name
from dora.jobstore import JobStore
from dora.storage.base import ObjectStore
from dora.storage.keys import validate_bucket, validate_key
from dora.tokens import UploadPolicy

__all__ = [
    "JobSubmitter",
    "PfopRequest",
    "UrlGuard",
    "check_notify_url",
    "parse_flag",
    "parse_type",
    "persistent_ops_check",
    "persistent_ops_hook",
]

# An extra check on notify URLs (the SSRF guard): raise a DoraError to refuse.
UrlGuard = Callable[[str], Awaitable[None]]

_URL_FORBIDDEN = frozenset(string.whitespace) | {chr(c) for c in range(32)} | {"\x7f"}
_DEFAULTS = JobStoreOptions()


@dataclasses.dataclass(frozen=True, slots=True)
class PfopRequest:
    """The fields of one pfop, as the form (or an upload policy) gave them."""

    bucket: str
    key: str
    fops: str
    notify_url: str = ""
    force: bool = False
    pipeline: str = ""
    type: int = 0
    reqid: str = ""


def parse_flag(name: str, text: str) -> bool:
    """A form flag: ``1``/``true`` or ``0``/``false``/empty."""
    lowered = text.strip().lower()
    if lowered in ("", "0", "false"):
        return False
    if lowered in ("1", "true"):
        return True
    raise BadRequest(f"invalid {name} {text!r}: 0 or 1")


def parse_type(text: str) -> int:
    """pfop's ``type``: 0 (default) or 1 (an idle-time job)."""
    stripped = text.strip()
    if stripped in ("", "0"):
        return 0
    if stripped == "1":
        return 1
    raise BadRequest(f"invalid type {text!r}: 0 or 1")


def check_notify_url(url: str, max_bytes: int = _DEFAULTS.max_url_bytes) -> str:
    """``url`` once it is an absolute http(s) URL with a host (``''`` passes)."""
    if not url:
        return url
    if len(url.encode()) > max_bytes:
        raise BadRequest(f"notifyURL is longer than {max_bytes} bytes")
    if any(c in _URL_FORBIDDEN for c in url):
        raise BadRequest("notifyURL holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises on a bad one
    except ValueError as exc:
        raise BadRequest(f"invalid notifyURL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise BadRequest("invalid notifyURL: want an http:// or https:// URL")
    if not host:
        raise BadRequest("invalid notifyURL: no host")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("invalid notifyURL: credentials in the URL are not allowed")
    return url


class JobSubmitter:
    """Validates pfop requests (see the module doc) and queues them in ``jobs``."""

    def __init__(
        self,
        jobs: JobStore,
        store: ObjectStore,
        catalog: Catalog,
        limits: Limits,
        *,
        url_guard: UrlGuard | None = None,
        wake: Callable[[], object] | None = None,
    ) -> None:
        self.jobs = jobs
        self._wake = wake  # tells the dispatcher a job was queued (see the module doc)
        self._store = store
        self._catalog = catalog
        self._limits = limits
        self._url_guard = url_guard

    def check_fops(self, fops: str) -> list[FopChain]:
        """Parse every chain of ``fops``; 400 naming the first bad op or target."""
        if len(fops.encode()) > _DEFAULTS.max_fops_bytes:
            raise BadRequest(f"fops is longer than {_DEFAULTS.max_fops_bytes} bytes")
        if not fops.strip():
            raise BadRequest("fops is empty")
        chains = parse_pfop(fops, self._catalog)
        if len(chains) > _DEFAULTS.max_chains:
            raise BadRequest(f"fops has {len(chains)} chains; at most {_DEFAULTS.max_chains}")
        for chain in chains:
            for stage in chain.stages:
                if self._catalog[stage.op].kind == "av":
                    validate_av_stage(stage)
            if chain.saveas is not None:
                try:
                    validate_bucket(chain.saveas.bucket)
                    if chain.saveas.key is not None:
                        validate_key(chain.saveas.key, self._limits.max_key_bytes)
                except BadRequest as exc:
                    raise BadRequest(f"saveas: {exc.message}") from exc
        return chains

    async def check_pipeline(self, name: str) -> str:
        """The pipeline's normalised name, once it is known to exist."""
        normalised = pipeline_name(name)
        try:
            await self.jobs.get_pipeline(normalised)
        except NotFound as exc:
            raise BadRequest(f"no such pipeline: {normalised}") from exc
        return normalised

    async def check(self, req: PfopRequest) -> None:
        """Everything but the source and the queue's room (steps 1-4)."""
        validate_bucket(req.bucket)
        validate_key(req.key, self._limits.max_key_bytes)
        self.check_fops(req.fops)
        await self.check_pipeline(req.pipeline)
        await self.check_notify(req.notify_url)

    async def check_notify(self, url: str) -> None:
        """A notify URL is well-formed and, when a guard is set, allowed."""
        check_notify_url(url)
        if url and self._url_guard is not None:
            await self._url_guard(url)

    async def submit(self, req: PfopRequest, *, check_source: bool = True) -> Job:
        """Check ``req`` (the module doc's steps) and queue it; the queued job."""
        await self.check(req)
        if check_source:
            await self._store.stat(req.bucket, req.key)
        spec = JobSpec(
            bucket=req.bucket,
            key=req.key,
            fops=req.fops,
            notify_url=req.notify_url,
            force=req.force,
            pipeline=req.pipeline,
            type=req.type,
            reqid=req.reqid,
        )
        job = await self.jobs.enqueue(spec)
        if self._wake is not None:
            self._wake()
        return job


def persistent_ops_check(submitter: JobSubmitter) -> BeforeUpload:
    """The before-upload hook: bad ``persistentOps`` (unknown op, no such
    pipeline, a refused notify URL) fail the upload before anything is stored."""

    async def before_upload(policy: UploadPolicy) -> None:
        if not policy.persistent_ops:
            return
        submitter.check_fops(policy.persistent_ops)
        await submitter.check_pipeline(policy.persistent_pipeline or "")
        await submitter.check_notify(policy.persistent_notify_url or "")

    return before_upload


def persistent_ops_hook(submitter: JobSubmitter) -> AfterUpload:
    """The after-upload hook: an upload policy's ``persistentOps`` becomes a job.

    The answer gains ``persistentId``; the policy was vetted by
    :func:`persistent_ops_check` before the file was read.
    """

    async def after_upload(uploaded: UploadedObject) -> Mapping[str, Any] | None:
        policy = uploaded.policy
        if not policy.persistent_ops:
            return None
        job = await submitter.submit(
            PfopRequest(
                bucket=uploaded.meta.bucket,
                key=uploaded.meta.key,
                fops=policy.persistent_ops,
                notify_url=policy.persistent_notify_url or "",
                pipeline=policy.persistent_pipeline or "",
                reqid=uploaded.reqid,
            ),
            check_source=False,
        )
        return {"persistentId": job.id}

    return after_upload
