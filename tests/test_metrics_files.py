"""The multiprocess metrics directory with real processes that come and go.

Child processes (``python -P``) count worker calls into a shared directory
with the real :class:`~dora.workers.metrics.CallObserver`, as workers under
``dora serve`` do; the test then merges the files as a gateway's
``/metrics`` does, and sweeps dead processes as the supervisor does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dora import metrics as m

CHILD = """
import sys
from dora.workers.metrics import CallObserver

observer = CallObserver()
for _ in range(int(sys.argv[2])):
    record = observer.begin(
        {"id": 1, "stages": [["imageView2", "2/w/10"]], "src": {"bytes": b"abcd"}, "deadline": 0.0}
    )
    observer.end(record, {"id": 1, "ok": True, "mime": "image/jpeg", "body": b"123456",
                          "meta": {}, "load": 0})
observer.publish(sys.argv[1], 3)
print("DONE", flush=True)
sys.stdin.read()  # stay alive until the test closes stdin
"""


class Child:
    """A process that counts ``calls`` worker calls as ``instance``, then waits."""

    def __init__(self, directory: Path, instance: str, calls: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", CHILD, instance, str(calls)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={m.MULTIPROC_ENV: str(directory), "PATH": "/usr/bin:/bin"},
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"DONE\n"

    def exit(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0
        self.proc.stdout.close()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    m.reset_metrics_dir(path)
    return path


def merged(directory: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in m.collect_files(directory)
        for s in family.samples
    }


def calls(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    key = ("dora_worker_calls_total", frozenset({("op", "imageView2"), ("status", "200")}))
    return samples.get(key, 0.0)


def inflight(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    return {
        dict(labels)["instance"]: v
        for (name, labels), v in samples.items()
        if name == "dora_worker_inflight"
    }


def test_dead_processes_keep_their_counts_and_lose_their_gauges(directory: Path) -> None:
    alive = Child(directory, "worker-a", 2)
    Child(directory, "worker-b", 3).exit()
    before = merged(directory)
    assert calls(before) == 5
    assert before[("dora_worker_bytes_total", frozenset({("direction", "in")}))] == 5 * 4
    assert before[("dora_worker_bytes_total", frozenset({("direction", "out")}))] == 5 * 6
    assert inflight(before) == {"worker-a": 3, "worker-b": 3}  # b's file is still there

    assert m.compact_dead(directory) == 1
    after = merged(directory)
    assert calls(after) == 5  # b's counts moved into the archive
    seconds = ("dora_worker_call_seconds_count", frozenset({("op", "imageView2")}))
    assert after[seconds] == 5
    assert inflight(after) == {"worker-a": 3}
    names = sorted(p.name for p in directory.glob("*.db"))
    assert "counter_archive.db" in names and "histogram_archive.db" in names
    assert any(n.endswith(f"_{alive.proc.pid}.db") for n in names)  # a's files stay

    # Again, with the archive already there: totals still add up.
    alive.exit()
    Child(directory, "worker-c", 1).exit()
    assert m.compact_dead(directory) == 2
    final = merged(directory)
    assert calls(final) == 6
    assert final[seconds] == 6
    assert inflight(final) == {}
    assert sorted(p.name for p in directory.glob("*.db")) == [
        "counter_archive.db",
        "histogram_archive.db",
    ]
    assert m.compact_dead(directory) == 0  # nothing left to sweep


def test_the_sweep_waits_for_readers(directory: Path) -> None:
    Child(directory, "worker-a", 1).exit()
    with (
        m.dir_lock(directory, exclusive=False),
        m.dir_lock(directory, exclusive=True, wait=0.05) as held,
    ):
        assert not held  # a reader holds the directory
    assert m.compact_dead(directory) == 1


def test_reset_empties_a_previous_runs_files(directory: Path) -> None:
    Child(directory, "worker-a", 1).exit()
    assert list(directory.glob("*.db"))
    m.reset_metrics_dir(directory)
    assert not list(directory.glob("*.db"))
    assert merged(directory) == {}
