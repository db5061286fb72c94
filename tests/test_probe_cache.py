"""The worker's probe cache: one ffprobe per version of a file, bounded, thread-safe.

Probes run the real ffprobe on real clips (lavfi, 1 s); ffprobe runs are
counted by wrapping the probe module's ``run_process``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dora.builtin_ops.av import AV_SPECS, probe, run_av
from dora.builtin_ops.av.context import AvContext
from dora.builtin_ops.av.probe import MediaInfo, ProbeCache, file_identity
from dora.builtin_ops.av.process import run_process
from dora.config import Limits
from dora.errors import BadRequest, ProcessingFailed
from dora.fop import parse_stage
from dora.scheduler.jobtesting import make_clip

LIMITS = Limits()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("probe-cache")
    return {
        "a": make_clip(base / "a.mp4", seconds=1.0),
        "b": make_clip(base / "b.mp4", seconds=1.0, size="160x120"),
        "c": make_clip(base / "c.mp4", seconds=2.0),
    }


class Counter:
    """Counts the ffprobe runs of the probe module (thread-safe)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._lock = threading.Lock()

    @property
    def runs(self) -> int:
        return len(self.paths)


@pytest.fixture
def ffprobes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    counter = Counter()
    real = run_process

    def counting(argv: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        if os.path.basename(argv[0]) == "ffprobe":
            with counter._lock:
                counter.paths.append(argv[-1])
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(probe, "run_process", counting)
    monkeypatch.setattr(probe, "PROBES", ProbeCache())  # empty, and this test's own
    yield counter


def ctx() -> AvContext:
    return AvContext.start("avinfo", LIMITS, 30.0)


def copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_the_same_file_is_probed_once(clips: dict[str, Path], ffprobes: Counter) -> None:
    first = probe.probe(str(clips["a"]), ctx())
    second = probe.probe(str(clips["a"]), ctx())
    assert ffprobes.runs == 1
    assert second is first
    assert first.video is not None and first.video.width == 320
    assert first.duration is not None and abs(first.duration - 1.0) < 0.1


def test_a_path_through_a_symlink_is_the_same_file(
    clips: dict[str, Path], ffprobes: Counter, tmp_path: Path
) -> None:
    link = tmp_path / "link.mp4"
    link.symlink_to(clips["a"])
    probe.probe(str(clips["a"]), ctx())
    probe.probe(str(link), ctx())
    assert ffprobes.runs == 1


def test_a_rewritten_file_is_probed_again(
    clips: dict[str, Path], ffprobes: Counter, tmp_path: Path
) -> None:
    path = copy(clips["a"], tmp_path / "source.mp4")
    before = probe.probe(str(path), ctx())
    # The same inode, other content (and size): a rewrite in place.
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(clips["b"].read_bytes())
    after = probe.probe(str(path), ctx())
    assert ffprobes.runs == 2
    assert before.video is not None and after.video is not None
    assert (before.video.width, after.video.width) == (320, 160)
    # Replaced by another file (a new inode), as the object store writes objects.
    copy(clips["c"], tmp_path / "next.mp4").replace(path)
    replaced = probe.probe(str(path), ctx())
    assert ffprobes.runs == 3
    assert replaced.duration is not None and abs(replaced.duration - 2.0) < 0.1
    # Touched only: the mtime is part of the identity too.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    probe.probe(str(path), ctx())
    assert ffprobes.runs == 4
    probe.probe(str(path), ctx())
    assert ffprobes.runs == 4


def test_failures_are_not_remembered(ffprobes: Counter, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not media at all" * 100)
    for _ in range(2):
        with pytest.raises(BadRequest, match="invalid media"):
            probe.probe(str(junk), ctx())
    assert ffprobes.runs == 2
    assert len(probe.PROBES) == 0


def test_the_cache_is_bounded_least_recently_used_first(
    clips: dict[str, Path], ffprobes: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe, "PROBES", ProbeCache(entries=2))
    a, b, c = (str(clips[name]) for name in "abc")
    probe.probe(a, ctx())
    probe.probe(b, ctx())
    probe.probe(a, ctx())  # a is now the most recent: b goes first
    probe.probe(c, ctx())
    assert ffprobes.runs == 3 and len(probe.PROBES) == 2
    probe.probe(a, ctx())
    probe.probe(c, ctx())
    assert ffprobes.runs == 3
    probe.probe(b, ctx())
    assert ffprobes.runs == 4 and len(probe.PROBES) == 2


def test_threads_share_the_cache(clips: dict[str, Path], ffprobes: Counter) -> None:
    path = str(clips["a"])
    probe.probe(path, ctx())
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda _: probe.probe(path, ctx()), range(32)))
    assert ffprobes.runs == 1
    assert all(info is infos[0] for info in infos)


def test_cache_stays_within_its_bound_under_threads() -> None:
    cache = ProbeCache(entries=16)
    info = MediaInfo(raw={}, format_name="", duration=None, bit_rate=None, video=None, audio=None)

    def churn(worker: int) -> None:
        for n in range(2000):
            identity = (f"/f{worker}-{n % 40}", 1, n % 40, 1, 1)
            if cache.get(identity) is None:
                cache.put(identity, info)
            assert len(cache) <= 16

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(churn, range(8)))
    assert len(cache) == 16
    with pytest.raises(ValueError):
        ProbeCache(entries=0)


def test_chains_on_one_source_probe_it_once(
    clips: dict[str, Path], ffprobes: Counter, tmp_path: Path
) -> None:
    src = str(clips["a"])
    for n, fop in enumerate(("avinfo", "vframe/jpg/offset/0.5", "avthumb/mp4/s/160x120")):
        out = run_av(parse_stage(fop, AV_SPECS), src, str(tmp_path / f"out-{n}"), LIMITS)
        assert out.body or out.path
    assert ffprobes.paths == [f"file:{src}"]


def test_file_identity(clips: dict[str, Path], tmp_path: Path) -> None:
    identity = file_identity(str(clips["a"]))
    assert identity is not None
    real, _dev, ino, size, _mtime = identity
    assert real == os.path.realpath(clips["a"])
    assert (ino, size) == (clips["a"].stat().st_ino, clips["a"].stat().st_size)
    assert file_identity(str(tmp_path / "missing.mp4")) is None


def test_a_remembered_probe_still_honours_cancel_and_deadline(
    clips: dict[str, Path], ffprobes: Counter
) -> None:
    path = str(clips["a"])
    probe.probe(path, ctx())
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProcessingFailed, match="cancelled"):
        probe.probe(path, AvContext.start("avinfo", LIMITS, 30.0, cancel=cancel))
    with pytest.raises(ProcessingFailed, match="timed out"):
        probe.probe(path, AvContext.start("avinfo", LIMITS, -1.0))
    assert ffprobes.runs == 1
