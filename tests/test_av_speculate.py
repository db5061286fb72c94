"""ffmpeg starting while the source is probed: the outcome is always the real plan's.

Every run records the tools it started (through ``run_process``), when, and
with which arguments, so a test can tell a guess that held (ffmpeg started
before ffprobe ended, once) from one that did not (a second ffmpeg with the
real arguments). Outputs are checked with an independent ffprobe.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dora.builtin_ops.av import AV_SPECS, process, run_av
from dora.builtin_ops.av.probe import PROBES
from dora.config import Limits
from dora.errors import BadRequest, ProcessingFailed
from dora.fop import parse_stage
from dora.scheduler.jobtesting import ffmpeg, ffprobe, make_clip

LIMITS = Limits()


@dataclass
class Started:
    tool: str
    argv: list[str]
    start: float
    end: float = 0.0
    returncode: int | None = None


@pytest.fixture()
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Started]]:
    """Every tool the ops start, in order; the probe cache is emptied first."""
    PROBES.clear()
    seen: list[Started] = []
    lock = threading.Lock()
    original = process.run_process

    def recording(argv: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        entry = Started(os.path.basename(argv[0]), list(argv), time.monotonic())
        with lock:
            seen.append(entry)
        try:
            done = original(argv, *args, **kwargs)
            entry.returncode = done.returncode
            return done
        finally:
            entry.end = time.monotonic()

    monkeypatch.setattr(process, "run_process", recording)
    monkeypatch.setattr("dora.builtin_ops.av.probe.run_process", recording)
    yield seen
    PROBES.clear()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Video first, audio second: what the guess expects."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=3.0)


@pytest.fixture(scope="module")
def audio_first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Audio first, video second: the guess is wrong."""
    path = tmp_path_factory.mktemp("clips") / "audio-first.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "sine=f=440:sample_rate=44100:d=3"),
        *("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=3"),
        *("-map", "0:a", "-map", "1:v", "-c:v", "libx264", "-preset", "ultrafast"),
        *("-pix_fmt", "yuv420p", "-c:a", "aac", str(path)),
    )
    return path


def _run(fop: str, src: Path, out: Path, **kwargs: Any) -> Any:
    out.mkdir(exist_ok=True)
    return run_av(parse_stage(fop, AV_SPECS), str(src), str(out), LIMITS, **kwargs)


def _streams(path: str | Path) -> list[tuple[str, str]]:
    return [(s["codec_type"], s["codec_name"]) for s in ffprobe(path)["streams"]]


def test_a_guess_that_holds_starts_ffmpeg_before_the_probe_ends(
    clip: Path, tmp_path: Path, runs: list[Started]
) -> None:
    output = _run("avthumb/mp4", clip, tmp_path / "out")
    assert [r.tool for r in runs] == ["ffprobe", "ffmpeg"] or [r.tool for r in runs] == [
        "ffmpeg",
        "ffprobe",
    ]
    probe_run = next(r for r in runs if r.tool == "ffprobe")
    ffmpeg_run = next(r for r in runs if r.tool == "ffmpeg")
    assert ffmpeg_run.start < probe_run.end  # overlapped
    assert _streams(output.path) == [("video", "h264"), ("audio", "aac")]
    assert float(ffprobe(output.path)["format"]["duration"]) == pytest.approx(3.0, abs=0.1)
    assert output.meta["vcodec"] == "libx264"


def test_a_wrong_guess_runs_the_real_plan_and_leaves_only_its_output(
    audio_first: Path, tmp_path: Path, runs: list[Started]
) -> None:
    out = tmp_path / "out"
    output = _run("avthumb/mp4", audio_first, out)
    ffmpegs = [r for r in runs if r.tool == "ffmpeg"]
    assert len(ffmpegs) == 2  # the guess, stopped, then the real arguments
    assert ffmpegs[0].argv != ffmpegs[1].argv
    assert "0:1" in " ".join(ffmpegs[1].argv)  # the real video stream is the second
    assert _streams(output.path) == [("video", "h264"), ("audio", "aac")]
    assert sorted(os.listdir(out)) == ["avthumb.mp4"]


def test_a_wrong_guess_in_hls_leaves_no_stray_segments(
    audio_first: Path, tmp_path: Path, runs: list[Started]
) -> None:
    out = tmp_path / "out"
    output = _run("avthumb/m3u8/segtime/2", audio_first, out)
    assert len([r for r in runs if r.tool == "ffmpeg"]) == 2
    assert sorted(os.listdir(out)) == sorted(output.meta["files"])
    for name in output.meta["segments"]:
        assert ("video", "h264") in _streams(out / name)


def test_a_file_that_is_not_media_fails_as_the_probe_says(
    tmp_path: Path, runs: list[Started]
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    with pytest.raises(BadRequest, match="invalid media"):
        _run("avthumb/mp4", junk, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_ss_past_the_end_is_a_400_even_with_ffmpeg_started(
    clip: Path, tmp_path: Path, runs: list[Started]
) -> None:
    with pytest.raises(BadRequest, match="past the end"):
        _run("avthumb/mp4/ss/60", clip, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_stages_planned_from_the_source_probe_first(
    clip: Path, tmp_path: Path, runs: list[Started]
) -> None:
    _run("avthumb/mp4/vb/64k", clip, tmp_path / "vb")
    _run("avthumb/mp4/wmText/ZG9yYQ", clip, tmp_path / "text")
    probes = [r for r in runs if r.tool == "ffprobe"]
    ffmpegs = [r for r in runs if r.tool == "ffmpeg"]
    assert len(probes) == 1  # the second op used the remembered probe
    assert all(f.start >= probes[0].end for f in ffmpegs)


def test_a_remembered_source_runs_its_real_plan_at_once(
    audio_first: Path, tmp_path: Path, runs: list[Started]
) -> None:
    _run("avinfo", audio_first, tmp_path / "info")  # probes and remembers it
    _run("avthumb/mp4", audio_first, tmp_path / "out")
    assert [r.tool for r in runs] == ["ffprobe", "ffmpeg"]  # no guess, no second ffmpeg


def test_cancelling_a_speculative_run_stops_ffmpeg_and_the_probe(
    tmp_path: Path, runs: list[Started]
) -> None:
    long_clip = make_clip(tmp_path / "long.mp4", seconds=20.0)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(ProcessingFailed, match="cancelled"):
        _run("avthumb/webm", long_clip, tmp_path / "out", cancel=cancel)
    assert time.monotonic() - started < 5.0
    assert all(r.end > 0 for r in runs)  # every tool it started has ended


def test_vframe_starts_before_the_probe_ends_and_checks_the_offset(
    clip: Path, tmp_path: Path, runs: list[Started]
) -> None:
    output = _run("vframe/jpg/offset/1/w/160", clip, tmp_path / "out")
    probe_run = next(r for r in runs if r.tool == "ffprobe")
    ffmpeg_run = next(r for r in runs if r.tool == "ffmpeg")
    assert ffmpeg_run.start < probe_run.end
    assert output.body[:2] == b"\xff\xd8" and output.mime == "image/jpeg"
    with pytest.raises(BadRequest, match="past the end"):
        _run("vframe/jpg/offset/30", clip, tmp_path / "late")
    assert os.listdir(tmp_path / "late") == []
