"""The ResourceProvider seam: where instances of services get CPUs and memory.

A provider turns cluster resources into a stream of events — offers of
resources and status updates of launched tasks — and takes launch, kill and
decline commands. ``LocalProvider`` offers this machine; ``MesosProvider``
offers what a Mesos master offers. The states are Mesos's task states, so the
scheduler reasons the same way about both.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Literal, Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Resources:
    cpus: float
    mem_mb: float

    def fits(self, need: Resources) -> bool:
        return self.cpus + 1e-9 >= need.cpus and self.mem_mb + 1e-9 >= need.mem_mb

    def minus(self, used: Resources) -> Resources:
        return Resources(self.cpus - used.cpus, self.mem_mb - used.mem_mb)


@dataclasses.dataclass(frozen=True, slots=True)
class Offer:
    id: str
    agent_id: str
    hostname: str
    resources: Resources
    datacenter: str = "dc1"


Network = Literal["host", "bridge"]


@dataclasses.dataclass(frozen=True, slots=True)
class TaskSpec:
    """One instance of a service to launch."""

    task_id: str
    service: str
    command: tuple[str, ...]
    resources: Resources
    network: Network = "host"
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    image: str | None = None  # a container image, for bridged tasks


class TaskState(enum.Enum):
    STAGING = "TASK_STAGING"
    STARTING = "TASK_STARTING"
    RUNNING = "TASK_RUNNING"
    FINISHED = "TASK_FINISHED"
    FAILED = "TASK_FAILED"
    KILLED = "TASK_KILLED"
    LOST = "TASK_LOST"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.FINISHED, TaskState.FAILED, TaskState.KILLED, TaskState.LOST)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskStatus:
    task_id: str
    state: TaskState
    message: str = ""
    agent_id: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class OffersEvent:
    offers: tuple[Offer, ...]


ProviderEvent = OffersEvent | TaskStatus


class ResourceProvider(Protocol):
    """Offers resources, launches and kills tasks, reports their states."""

    async def next_event(self) -> ProviderEvent:
        """Wait for the next offer batch or task status update."""
        ...

    async def launch(self, offer: Offer, tasks: list[TaskSpec]) -> None: ...

    async def decline(self, offer: Offer, refuse_seconds: float = 5.0) -> None: ...

    async def kill(self, task_id: str) -> None: ...

    async def reconcile(self) -> None:
        """Ask for the current state of every known task (after a restart)."""
        ...

    async def close(self) -> None: ...
