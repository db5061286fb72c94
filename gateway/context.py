"""What a gateway needs from the rest of Dora, passed in explicitly.

:class:`GatewayContext` holds the injected dependencies (settings, store,
keys, the processor and the op catalog); :func:`dora.gateway.app.build_app`
turns one into an aiohttp application. Tests build a context around a real
:class:`~dora.storage.local.LocalStore` and a processor of their choice;
``run_gateway`` builds one around the worker pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dora.auth import KeyRing
from dora.config import Settings
from dora.fop import Catalog, Stage
from dora.jobstore import JobStore
from dora.ops import Output
from dora.storage.base import ObjectMeta, ObjectStore
from dora.tokens import UploadPolicy


class Processor(Protocol):
    """Runs a fused chain of builtin stages on a source (the worker pool's ``call``)."""

    async def call(self, stages: Sequence[Stage], src: bytes | str, *, deadline: float) -> Output:
        """Run ``stages`` on ``src`` (bytes, or a local file path) before the
        unix time ``deadline``; raise a :class:`~dora.errors.DoraError` on failure."""
        ...


@runtime_checkable
class ReportsHealth(Protocol):
    """A processor that can tell which workers are ready to take calls (the pool)."""

    def instances(self) -> Sequence[object]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class UploadedObject:
    """What a form upload stored: handed to the after-upload hook."""

    meta: ObjectMeta
    policy: UploadPolicy
    custom_vars: Mapping[str, str]
    fname: str
    reqid: str = ""


# Called after a successful upload, before the answer is written: the seam for
# ``persistentOps`` (enqueue a job). It returns extra fields for the answer
# (``{"persistentId": ...}``) or None.
AfterUpload = Callable[[UploadedObject], Awaitable[Mapping[str, Any] | None]]

# Called once the upload token is verified, before the file is read: a policy
# whose follow-up cannot run (bad ``persistentOps``) fails before anything is
# stored.
BeforeUpload = Callable[[UploadPolicy], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayContext:
    """The dependencies of one gateway application."""

    settings: Settings
    store: ObjectStore
    keyring: KeyRing
    processor: Processor
    catalog: Catalog
    after_upload: AfterUpload | None = None
    before_upload: BeforeUpload | None = None
    # Where uploads whose key depends on their content are spooled (None: the
    # system's temporary directory).
    spool_dir: Path | None = None
    # The asynchronous job store (pfop, prefop, management API); None: jobs are off.
    jobs: JobStore | None = None
