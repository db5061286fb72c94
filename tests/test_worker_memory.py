"""The worker's malloc thresholds: image buffers stay in the heap between calls.

Each measurement runs in a fresh interpreter (``mallopt`` is process-wide),
doing what a worker's op thread does per call — read a path source, run
``imageView2`` on a 1920×1080 JPEG — and counting that thread's minor page
faults once warmed up. Untuned, glibc hands the buffers back to the kernel
and faults them in again on every call; tuned, it does not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dora.workers.testing import sample_jpeg

_CALLS = """
import resource, sys, threading
from pathlib import Path
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.fop import parse_stage
from dora.workers.calls import read_source_file
from dora.workers.memory import tune_malloc

if sys.argv[2] == "tuned":
    assert tune_malloc()
src, limits = sys.argv[1], Limits()
stages = [parse_stage("imageView2/1/w/300/h/200", BUILTIN_CATALOG)]
faults = []

def calls():
    for index in range(40):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        data = read_source_file(src, Path(src).parent, limits.max_source_bytes)
        run_chain(stages, data, limits)
        if index >= 10:  # warmed up
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

thread = threading.Thread(target=calls)
thread.start()
thread.join()
print(sum(faults) / len(faults))
"""


def _faults_per_call(source: Path, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-P", "-c", _CALLS, str(source), mode],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return float(done.stdout)


def test_tuned_malloc_stops_the_page_faults_of_every_call(tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    source.write_bytes(sample_jpeg(1920, 1080))
    untuned = _faults_per_call(source, "untuned")
    tuned = _faults_per_call(source, "tuned")
    assert untuned > 50  # the cost being removed is there (~100+ faults a call)
    assert tuned < 5
