"""What the machine and a server's process tree are doing, read from ``/proc``.

The benchmark runs on a machine it may share, so every measurement carries
its context: the machine's CPU model and cores, the load average, how much
CPU the whole machine spent (``/proc/stat``) against what the server and the
load generator spent, and the server's memory: the resident set (VmRSS) of
every process in its tree, sampled in a background thread.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory and kernel of this machine."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_mib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in (PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mib = int(line.split()[1]) // 1024
    return {
        "cores": os.cpu_count() or 1,
        "cpu_model": model,
        "mem_total_mib": mem_mib,
        "kernel": platform.release(),
        "arch": platform.machine(),
    }


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (as ``uptime`` shows them)."""
    return [round(value, 2) for value in os.getloadavg()]


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks over all CPUs since boot, from ``/proc/stat``."""
    fields = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user time
    return total - idle, total


def _stat_fields(pid: int) -> list[str]:
    text = (PROC / str(pid) / "stat").read_text()
    # the command name is in parentheses and may hold spaces
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in (PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if (PROC / str(pid)).exists():
            out.append(pid)
            todo.extend(children(pid))
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    """User + system clock ticks one process has spent (0 if it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


Classifier = Callable[[int, int], str]  # (pid, root) -> role name


def by_root(pid: int, root: int) -> str:
    """Default roles: the root process and its descendants."""
    return "parent" if pid == root else "children"


@dataclass
class Sample:
    """One look at the tree: seconds since the sampler started, KiB by role."""

    t: float
    rss_kib: dict[str, int]

    @property
    def total_kib(self) -> int:
        return sum(self.rss_kib.values())


@dataclass
class TreeSampler:
    """Sample a process tree's RSS (by role) and CPU ticks in a thread."""

    root: int
    interval: float = 0.5
    classify: Classifier = by_root
    samples: list[Sample] = field(default_factory=list)
    _first_ticks: dict[int, int] = field(default_factory=dict)
    _last_ticks: dict[int, int] = field(default_factory=dict)
    _roles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: float = 0.0

    def sample_now(self) -> Sample:
        by_role: dict[str, int] = {}
        for pid in tree(self.root):
            role = self._roles.get(pid)
            if role is None:
                role = self._roles[pid] = self.classify(pid, self.root)
            by_role[role] = by_role.get(role, 0) + rss_kib(pid)
            ticks = cpu_ticks(pid)
            self._first_ticks.setdefault(pid, ticks)
            self._last_ticks[pid] = ticks
        sample = Sample(round(time.monotonic() - self._start, 2), by_role)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_now()

    def __enter__(self) -> TreeSampler:
        self._start = time.monotonic()
        self.sample_now()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample_now()

    def cpu_seconds(self) -> float:
        """CPU the tree spent between the first and the last sample."""
        ticks = sum(self._last_ticks[p] - self._first_ticks[p] for p in self._last_ticks)
        return ticks / TICKS_PER_S

    def cpu_seconds_by_role(self) -> dict[str, float]:
        """The same, split by the processes' roles."""
        out: dict[str, float] = {}
        for pid, last in self._last_ticks.items():
            role = self._roles[pid]
            out[role] = out.get(role, 0.0) + (last - self._first_ticks[pid]) / TICKS_PER_S
        return out

    def peak_mib(self) -> float:
        return round(max((s.total_kib for s in self.samples), default=0) / 1024, 1)


def wait_idle(
    root: int, *, below: float = 0.1, window: float = 0.5, timeout: float = 60.0
) -> float:
    """Wait until a process tree uses less than ``below`` of a core; return the seconds waited.

    A load generator that stops does not stop the server: requests it gave up
    on may still be computing (no server can cancel CPU-bound work), and they
    must not spill into the next measurement.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = sum(cpu_ticks(pid) for pid in tree(root))
        time.sleep(window)
        used = (sum(cpu_ticks(pid) for pid in tree(root)) - before) / TICKS_PER_S
        if used < below * window:
            break
    return round(time.monotonic() - start, 2)


@contextlib.contextmanager
def machine_cpu() -> Iterator[dict[str, float]]:
    """Measure the whole machine's busy CPU seconds over the ``with`` block."""
    out: dict[str, float] = {}
    busy0, total0 = machine_cpu_ticks()
    start = time.monotonic()
    try:
        yield out
    finally:
        busy1, total1 = machine_cpu_ticks()
        out["busy_s"] = (busy1 - busy0) / TICKS_PER_S
        out["capacity_s"] = (total1 - total0) / TICKS_PER_S  # about wall time × cores
        out["wall_s"] = time.monotonic() - start
