"""ffmpeg as a child process: deadlines, cancel, process groups, progress, errors.

Real processes throughout: ffmpeg on lavfi clips, and ``/bin/sh`` where a
tool that starts children of its own is needed.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dora.builtin_ops.av import AV_SPECS, JOB_TIMEOUT, run_av
from dora.builtin_ops.av.context import AvContext
from dora.builtin_ops.av.process import STDERR_TAIL, failure, run_ffmpeg, run_process
from dora.config import Limits
from dora.errors import BadRequest, ProcessingFailed
from dora.fop import Stage, parse_stage

LIMITS = Limits()
# Upscaling to 1080p VP9 takes seconds on any machine: long enough to interrupt.
SLOW = "avthumb/webm/s/1920x1080"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("av-proc") / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x240:r=25:d=3",
            "-f",
            "lavfi",
            "-i",
            "sine=d=3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def context(timeout: float = 10.0, cancel: threading.Event | None = None) -> AvContext:
    return AvContext.start("test", LIMITS, timeout, cancel=cancel)


def ffmpeg_children() -> list[int]:
    """Pids of live (not zombie) ffmpeg processes whose parent is this test process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if name == "ffmpeg" and int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_timeout_kills_ffmpeg(clip: Path, tmp_path: Path) -> None:
    heard: list[float] = []
    started = time.monotonic()
    with pytest.raises(ProcessingFailed, match=r"avthumb: timed out after 1 s") as caught:
        run_av(
            parse_stage(SLOW, AV_SPECS),
            str(clip),
            str(tmp_path),
            LIMITS,
            timeout=1.0,  # the whole run takes ~1.5 s on a quiet 2-core machine
            progress=heard.append,
        )
    assert caught.value.status == 599
    # ffmpeg was under way, not finished, when the deadline struck (on a loaded
    # machine it may not have reported any progress yet)
    assert not heard or heard[-1] < 100
    assert time.monotonic() - started < 4.0
    assert ffmpeg_children() == []


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A tool that starts a child of its own, then hangs.
    script = f"sleep 30 & echo $! > {pids}; echo $$ >> {pids}; wait"
    started = time.monotonic()
    with pytest.raises(ProcessingFailed, match="timed out"):
        run_process(["/bin/sh", "-c", script], context(timeout=0.5))
    assert time.monotonic() - started < 1.5
    child, shell = (int(line) for line in pids.read_text().split())
    deadline = time.monotonic() + 2.0
    while (alive(child) or alive(shell)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child) and not alive(shell)


def test_a_leader_that_exits_does_not_leave_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The background child keeps stdout open: without the group kill this would
    # hang until the deadline.
    script = f"sleep 30 & echo $! > {pids}; echo done; exit 3"
    started = time.monotonic()
    done = run_process(["/bin/sh", "-c", script], context(timeout=10.0))
    assert (done.returncode, done.stdout) == (3, b"done\n")
    assert time.monotonic() - started < 2.0
    child = int(pids.read_text())
    deadline = time.monotonic() + 2.0
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)


def test_cancel_kills_ffmpeg(clip: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    heard: list[float] = []

    def progress(percent: float) -> None:
        heard.append(percent)
        cancel.set()  # as a client going away would, once work is under way

    started = time.monotonic()
    with pytest.raises(ProcessingFailed, match="avthumb: cancelled"):
        run_av(
            parse_stage(SLOW, AV_SPECS),
            str(clip),
            str(tmp_path),
            LIMITS,
            progress=progress,
            cancel=cancel,
        )
    assert heard and heard[-1] < 100
    assert time.monotonic() - started < 5.0
    assert ffmpeg_children() == []


def test_cancel_from_another_thread(clip: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_av(parse_stage(SLOW, AV_SPECS), str(clip), str(tmp_path), LIMITS, cancel=cancel)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(0.5)
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert time.monotonic() - cancelled_at < 1.0
    assert len(errors) == 1 and isinstance(errors[0], ProcessingFailed)
    assert ffmpeg_children() == []


def test_an_already_cancelled_op_starts_nothing(clip: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProcessingFailed, match="cancelled"):
        run_av(parse_stage("avinfo", AV_SPECS), str(clip), str(tmp_path), LIMITS, cancel=cancel)


def test_progress_climbs_to_100(clip: Path, tmp_path: Path) -> None:
    heard: list[float] = []
    run_av(
        parse_stage("avthumb/mp4/s/640x480", AV_SPECS),
        str(clip),
        str(tmp_path),
        LIMITS,
        progress=heard.append,
    )
    assert heard == sorted(heard)
    assert heard[-1] == 100.0
    assert any(90 <= p < 100 for p in heard)  # ffmpeg's own reports, before the end


def test_progress_of_a_two_pass_gif(clip: Path, tmp_path: Path) -> None:
    heard: list[float] = []
    run_av(
        parse_stage("avthumb/gif", AV_SPECS),
        str(clip),
        str(tmp_path),
        LIMITS,
        progress=heard.append,
    )
    assert heard == sorted(heard) and heard[-1] == 100.0
    assert any(p <= 30 for p in heard) and any(30 < p < 100 for p in heard)


def test_sync_ops_default_to_the_op_timeout(clip: Path, tmp_path: Path) -> None:
    tight = Limits(op_timeout=0.001)
    with pytest.raises(ProcessingFailed, match=r"vframe: timed out after 0\.001 s"):
        run_av(parse_stage("vframe/jpg/offset/1", AV_SPECS), str(clip), str(tmp_path), tight)
    # ...job-only ops have their own budget, not the synchronous one.
    out = run_av(parse_stage("avthumb/mp3", AV_SPECS), str(clip), str(tmp_path), tight)
    assert out.path is not None and tight.op_timeout < JOB_TIMEOUT


def test_stderr_is_bounded_and_summarised(tmp_path: Path) -> None:
    noisy = "i=0; while [ $i -lt 3000 ]; do echo 'padding line of noise' >&2; i=$((i+1)); done;"
    script = noisy + " echo 'file:/srv/data/x.mp4: Invalid data found when processing input' >&2"
    ctx = AvContext.start("avthumb", LIMITS, 10.0, scrub=(("/srv/data/x.mp4", "input"),))
    done = run_process(["/bin/sh", "-c", script + "; exit 1"], ctx)
    assert len(done.stderr) == STDERR_TAIL
    error = failure(ctx, "ffmpeg", done)
    assert isinstance(error, BadRequest) and error.status == 400
    assert error.message.endswith("input: Invalid data found when processing input")
    assert "/srv/data" not in error.message


def test_other_ffmpeg_failures_are_599(tmp_path: Path) -> None:
    with pytest.raises(ProcessingFailed, match="ffmpeg failed") as caught:
        # A valid input, but an output ffmpeg cannot write.
        run_ffmpeg(
            [
                "-f",
                "lavfi",
                "-i",
                "testsrc2=d=0.1",
                "-f",
                "mp4",
                str(tmp_path / "missing-dir" / "x.mp4"),
            ],
            context(),
        )
    assert caught.value.status == 599


def test_a_stage_from_the_wire_is_revalidated(clip: Path, tmp_path: Path) -> None:
    # The worker may hand over a Stage that carries only its text.
    out = run_av(
        Stage("vframe", {}, (), "vframe/png/offset/1/w/32"), str(clip), str(tmp_path), LIMITS
    )
    assert out.mime == "image/png" and out.body is not None
    with pytest.raises(BadRequest, match="offset"):
        run_av(Stage("vframe", {}, (), "vframe/png/w/32"), str(clip), str(tmp_path), LIMITS)


def test_a_missing_source_file_is_599(tmp_path: Path) -> None:
    with pytest.raises(ProcessingFailed, match="source file is missing"):
        run_av(parse_stage("avinfo", AV_SPECS), str(tmp_path / "nope.mp4"), str(tmp_path), LIMITS)
