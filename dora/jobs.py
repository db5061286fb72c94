"""The asynchronous job model (pfop), shaped like Qiniu's prefop status.

A :class:`Job` is one ``POST /pfop``: a source object (``bucket``, ``key``)
and one or more fop chains (``fops`` split on ``;``), each chain an
:class:`JobItem` that records its own result, so a job re-leased after its
runner died does not redo finished chains. Jobs wait in named
:class:`Pipeline` queues; the shared one is :data:`DEFAULT_PIPELINE`.

Status codes, as Qiniu's ``/status/get/prefop`` reports them
(:class:`JobCode`): 0 done, 1 waiting, 2 processing, 3 failed, 4 the
notify callback could not be delivered. :meth:`Job.status_json` gives the
exact wire shape, which is also the body POSTed to ``notifyURL``.

Errors added here (``dora.errors`` has no 409 yet)::

    DoraError
    └── Conflict (409)         the request contradicts the job's state
        └── LeaseLost (409)    the caller no longer holds the job's lease
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dora.errors import BadRequest, Conflict
from dora.storage.keys import validate_bucket, validate_key

__all__ = [
    "DEFAULT_PIPELINE",
    "PIPELINE_NAME_RULE",
    "Conflict",
    "Job",
    "JobCode",
    "JobItem",
    "JobPage",
    "JobSpec",
    "JobState",
    "JobStoreOptions",
    "LeaseLost",
    "NotifyState",
    "Pipeline",
    "new_job_id",
    "pipeline_name",
    "split_chains",
]

DEFAULT_PIPELINE = "default"
# What Qiniu calls its shared queue in status answers; accepted as an alias.
_DEFAULT_ALIASES = frozenset({"", DEFAULT_PIPELINE, "0.default"})
PIPELINE_NAME_RULE = "1-64 characters of A-Z, a-z, 0-9, '_' and '-'"
_PIPELINE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")


class LeaseLost(Conflict):
    """The job is no longer leased by the caller (expired, taken over or finished)."""

    default_message = "lease lost"


class JobCode(enum.IntEnum):
    """Qiniu's prefop status codes; :attr:`desc` is Qiniu's text for each."""

    DONE = 0
    WAITING = 1
    PROCESSING = 2
    FAILED = 3
    NOTIFY_FAILED = 4

    @property
    def desc(self) -> str:
        return _DESCS[self]


_DESCS: Mapping[JobCode, str] = MappingProxyType(
    {
        JobCode.DONE: "The fop was completed successfully",
        JobCode.WAITING: "The fop is waiting for execution",
        JobCode.PROCESSING: "The fop is executing now",
        JobCode.FAILED: "The fop is failed",
        JobCode.NOTIFY_FAILED: "Callback failed",
    }
)


class JobState(enum.StrEnum):
    """Where a job is in its life; the last two are final."""

    QUEUED = "queued"
    RUNNING = "running"  # leased by a runner
    DONE = "done"
    FAILED = "failed"  # a chain failed, the job failed as a whole, or it was cancelled

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


class NotifyState(enum.StrEnum):
    """The notify callback's bookkeeping (the outbox)."""

    NONE = "none"  # no notifyURL, or the job has not finished yet
    PENDING = "pending"  # finished, callback not yet delivered
    SENT = "sent"
    FAILED = "failed"  # gave up: the job reports code 4


@dataclasses.dataclass(frozen=True, slots=True)
class JobStoreOptions:
    """Bounds and defaults of a job store."""

    max_attempts: int = 5  # leases of one job before it fails for good
    default_concurrency: int = 4  # of new pipelines, and of "default" when first created
    default_max_queued: int = 10_000
    max_concurrency: int = 1000
    max_queued_limit: int = 1_000_000
    max_pipelines: int = 1000
    max_chains: int = 100  # fop chains in one job
    max_fops_bytes: int = 32 * 1024
    max_key_bytes: int = 750
    max_url_bytes: int = 2048
    max_error_chars: int = 2048  # longer error texts are truncated
    max_item_keys: int = 10_000  # output keys of one item (HLS segments)
    max_meta_bytes: int = 64 * 1024  # an item's outputs meta, as JSON
    max_batch: int = 1000  # largest lease / list / pending_notifies batch
    max_lease_seconds: float = 24 * 3600.0
    busy_timeout: float = 10.0  # seconds SQLite waits for another writer
    durable: bool = True  # fsync every commit that records a result

    def check_spec(self, spec: JobSpec) -> tuple[str, ...]:
        """The spec's fop chains, once its sizes are within bounds."""
        validate_bucket(spec.bucket)
        validate_key(spec.key, self.max_key_bytes)
        if len(spec.fops.encode()) > self.max_fops_bytes:
            raise BadRequest(f"fops is longer than {self.max_fops_bytes} bytes")
        chains = spec.chains
        if not chains:
            raise BadRequest("fops is empty")
        if len(chains) > self.max_chains:
            raise BadRequest(f"fops has {len(chains)} chains; at most {self.max_chains}")
        if len(spec.notify_url.encode()) > self.max_url_bytes:
            raise BadRequest(f"notifyURL is longer than {self.max_url_bytes} bytes")
        if len(spec.reqid) > 128:
            raise BadRequest("reqid is longer than 128 characters")
        return chains

    def check_item(self, item: JobItem) -> JobItem:
        """``item`` with its error clipped, once its outputs are within bounds."""
        if len(item.keys) > self.max_item_keys:
            raise BadRequest(f"an item lists {len(item.keys)} keys; at most {self.max_item_keys}")
        try:
            meta_size = len(json.dumps(dict(item.meta)))
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"item meta is not JSON-serialisable: {exc}") from exc
        if meta_size > self.max_meta_bytes:
            raise BadRequest(f"item meta is {meta_size} bytes; at most {self.max_meta_bytes}")
        return dataclasses.replace(item, error=self.clip(item.error))

    def check_lease(self, owner: str, lease_seconds: float) -> None:
        if not owner or len(owner) > 200:
            raise BadRequest("a lease owner is 1-200 characters")
        if not 0 < lease_seconds <= self.max_lease_seconds:
            raise BadRequest(f"lease_seconds must be in (0, {self.max_lease_seconds}]")

    def check_limit(self, limit: int) -> int:
        if not 1 <= limit <= self.max_batch:
            raise BadRequest(f"limit must be 1-{self.max_batch}, not {limit}")
        return limit

    def clip(self, text: str) -> str:
        """``text`` cut to :attr:`max_error_chars`."""
        cap = self.max_error_chars
        return text if len(text) <= cap else text[: cap - 1] + "…"


def pipeline_name(name: str | None) -> str:
    """Normalise a pipeline name: empty (Qiniu's shared queue) → ``default``.

    Raises :class:`BadRequest` for a name outside :data:`PIPELINE_NAME_RULE`.
    """
    if name is None or name in _DEFAULT_ALIASES:
        return DEFAULT_PIPELINE
    if _PIPELINE_RE.fullmatch(name) is None:
        raise BadRequest(f"invalid pipeline name {name!r}: use {PIPELINE_NAME_RULE}")
    return name


def new_job_id(zone: str = "z0") -> str:
    """A fresh Qiniu-like persistentId, ``<zone>.<24 hex>``, ordered by time."""
    return f"{zone}.{int(time.time()):08x}{os.urandom(8).hex()}"


def split_chains(fops: str) -> tuple[str, ...]:
    """The fop chains of a pfop ``fops`` field (``;``-separated, blanks dropped)."""
    return tuple(chunk.strip() for chunk in fops.split(";") if chunk.strip())


def _empty_meta() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class JobItem:
    """One fop chain of a job and its own result.

    ``desc`` defaults to Qiniu's text for ``code``; ``keys`` lists several
    outputs (HLS segments); ``return_old`` is Qiniu's ``returnOld`` (the
    saveas target existed and was kept); ``progress`` is 0-100 while the
    item runs; ``meta`` is the outputs' metadata (JSON-serialisable).
    """

    index: int
    cmd: str
    code: JobCode = JobCode.WAITING
    desc: str = ""
    error: str = ""
    key: str = ""
    keys: tuple[str, ...] = ()
    hash: str = ""
    return_old: bool = False
    progress: float | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=_empty_meta, hash=False)

    def __post_init__(self) -> None:
        code = JobCode(self.code)
        if code is JobCode.NOTIFY_FAILED:
            raise BadRequest("an item's code is 0-3; code 4 belongs to the whole job")
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "desc", self.desc or code.desc)
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        if self.progress is not None and not 0.0 <= self.progress <= 100.0:
            raise BadRequest(f"item progress {self.progress} is outside 0-100")

    @property
    def finished(self) -> bool:
        return self.code in (JobCode.DONE, JobCode.FAILED)

    def status_json(self) -> dict[str, Any]:
        """The item as Qiniu's prefop lists it (empty optional fields omitted)."""
        out: dict[str, Any] = {"cmd": self.cmd, "code": int(self.code), "desc": self.desc}
        if self.error:
            out["error"] = self.error
        if self.hash:
            out["hash"] = self.hash
        if self.key:
            out["key"] = self.key
        if self.keys:
            out["keys"] = list(self.keys)
        out["returnOld"] = 1 if self.return_old else 0
        if self.code is JobCode.PROCESSING and self.progress is not None:
            out["progress"] = self.progress
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """What ``POST /pfop`` asks for; the input of ``JobStore.enqueue``.

    ``id`` is an optional client-chosen persistentId: enqueueing the same
    spec twice under one id returns the first job (idempotent enqueue).
    """

    bucket: str
    key: str
    fops: str
    notify_url: str = ""
    force: bool = False
    pipeline: str = ""
    type: int = 0  # Qiniu's pfop ``type``: 1 asks for an idle-time job
    reqid: str = ""
    id: str | None = None

    def __post_init__(self) -> None:
        if self.id is not None and _JOB_ID_RE.fullmatch(self.id) is None:
            raise BadRequest(f"invalid job id {self.id!r}: 1-100 of A-Z a-z 0-9 . _ -")
        if self.type not in (0, 1):
            raise BadRequest(f"invalid type {self.type!r}: 0 or 1")

    @property
    def chains(self) -> tuple[str, ...]:
        return split_chains(self.fops)


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job as the store holds it."""

    id: str
    bucket: str
    key: str
    fops: str
    chains: tuple[str, ...]
    notify_url: str
    force: bool
    pipeline: str
    type: int
    reqid: str
    created: float
    updated: float
    state: JobState
    attempts: int
    items: tuple[JobItem, ...]
    error: str = ""  # why the job failed as a whole (fail(), cancel, give-up)
    lease_owner: str | None = None
    lease_expires: float | None = None
    cancel_requested: bool = False
    notify_state: NotifyState = NotifyState.NONE
    notify_attempts: int = 0
    finished: float | None = None

    @property
    def code(self) -> JobCode:
        """The job's overall prefop code."""
        if self.state is JobState.QUEUED:
            return JobCode.WAITING
        if self.state is JobState.RUNNING:
            return JobCode.PROCESSING
        if self.notify_state is NotifyState.FAILED:
            return JobCode.NOTIFY_FAILED
        return JobCode.DONE if self.state is JobState.DONE else JobCode.FAILED

    @property
    def desc(self) -> str:
        return self.code.desc

    def pending_items(self) -> list[JobItem]:
        """The items a runner still has to run (neither done nor failed)."""
        return [item for item in self.items if not item.finished]

    def status_json(self) -> dict[str, Any]:
        """Exactly what ``GET /status/get/prefop`` answers (and notify POSTs)."""
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "code": int(self.code),
            "desc": self.desc,
            "reqid": self.reqid,
            "inputBucket": self.bucket,
            "inputKey": self.key,
            "items": [item.status_json() for item in self.items],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Pipeline:
    """A named queue with its own concurrency (jobs running at once)."""

    name: str
    concurrency: int
    max_queued: int
    paused: bool
    created: float


@dataclasses.dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``JobStore.list``; pass ``marker`` back for the next ('' at the end)."""

    jobs: tuple[Job, ...]
    marker: str
