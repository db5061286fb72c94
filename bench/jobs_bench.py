"""Asynchronous jobs through a real ``dora serve``: image jobs per minute, transcode overhead.

(a) ``--images N`` small photo-like JPEGs (640×480) are uploaded with the
official qiniu SDK, then one pfop per object (``imageView2/2/w/200|saveas``)
is submitted; jobs/minute = N / (first submit → last job done) × 60, where
"done" is the job's notify POST reaching a receiver on 127.0.0.1 (each
notice is checked code 0; the status API is read once at the end).

(b) The wall-time overhead of an ``avthumb/mp4`` job over the ffmpeg command
it runs: a 30 s 640×360 clip (lavfi ``testsrc2`` + ``sine``) is uploaded and
the job timed from submit to the arrival of its notify POST (code 0; the
receiver stamps each POST as it arrives) — how a user of async jobs learns
that one ended. The status API is polled every ``STATUS_POLL`` s meanwhile,
as a secondary figure (submit → status code 0, which carries up to one poll
of detection lag). The direct figure runs the exact ffmpeg argv Dora builds —
captured by running Dora's av runner once in this process with
:func:`dora.builtin_ops.av.process.run_process` wrapped — on a local copy of
the clip. overhead = (job − direct) / direct; target < 5 %. Every measured
job runs on a fresh upload of the clip under a new key, so no cache of the
worker (its probes) helps: the overhead is the cold one.

(c) The same for one job of two chains on one source (``avthumb/mp4`` and
``vframe/jpg/offset/1``) against both ffmpeg argvs run one after the other,
as Dora runs the chains: here the second chain may reuse the first's probe.

Each figure is the median of ``--runs`` runs. Run from the repository root::

    .venv/bin/python bench/jobs_bench.py [--images 60] [--runs 3] [--json bench/results/jobs.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qiniu
from images import make_photo_jpeg
from serving import Served, dora_serve

from dora.b64 import encode_entry
from dora.builtin_ops.av import process as av_process
from dora.builtin_ops.av.run import run_av
from dora.builtin_ops.av.specs import AV_SPECS
from dora.config import Limits
from dora.fop import parse_stage
from dora.scheduler.jobtesting import NotifyReceiver, make_clip

ENV = {"DORA_SSRF_ALLOW": "127.0.0.1/32"}
IMAGE_FOP = "imageView2/2/w/200"
AV_FOP = "avthumb/mp4"
FRAME_FOP = "vframe/jpg/offset/1"  # the second chain of the two-chain job
CLIP_SECONDS = 30.0
CLIP_SIZE = "640x360"
OVERHEAD_TARGET = 0.05
STATUS_POLL = 0.25  # seconds between status reads while timing one job (more often
# and the polling client itself slows the ffmpeg it is timing: 2 cores)
JOB_WITHIN = 600.0  # seconds any batch may take before the bench gives up


def upload(srv: Served, bucket: str, key: str, data: bytes) -> None:
    """Upload with the qiniu SDK's form upload, to the served up host."""
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    region = qiniu.Region(up_host=srv.url)
    _, info = qiniu.put_data(auth.upload_token(bucket, key), key, data, regions=[region])
    if info.status_code != 200:
        raise RuntimeError(f"upload of {key} failed: {info}")


async def run_jobs(srv: Served, bucket: str, keys: Sequence[str], fops: Sequence[str]) -> float:
    """Submit ``fops[i]`` on ``keys[i]`` (in parallel) and wait for every notice:
    the seconds from the first submit to the last job done."""
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    async with NotifyReceiver() as receiver:
        pfop = qiniu.PersistentFop(auth, bucket, notify_url=receiver.url)

        def submit(key: str, fop: str) -> str:
            ret, info = pfop.execute(key, [fop], 1)
            if info.status_code != 200:
                raise RuntimeError(f"pfop on {key} failed: {info}")
            return str(ret["persistentId"])

        start = time.perf_counter()
        ids = await asyncio.gather(
            *(asyncio.to_thread(submit, key, fop) for key, fop in zip(keys, fops, strict=True))
        )
        notices = await receiver.wait_for(len(keys), within=JOB_WITHIN)
        elapsed = time.perf_counter() - start
    failed = [n.body for n in notices if n.body.get("code") != 0]
    if failed or {n.body["id"] for n in notices} != set(ids):
        raise RuntimeError(f"jobs did not all succeed: {failed[:3]}")
    ret, info = qiniu.PersistentFop(auth, bucket).get_status(ids[-1])
    if info.status_code != 200 or ret["code"] != 0:
        raise RuntimeError(f"status of {ids[-1]}: {info}")
    return elapsed


@dataclasses.dataclass(frozen=True, slots=True)
class JobTiming:
    """Seconds from submitting one job to..."""

    notified: float  # ...its notify POST arriving (the job's end, as its user sees it)
    status_done: float  # ...the status API first answering code 0 (polled)
    picked: float | None  # ...the status first answering 2, processing (None: never seen)


async def time_one_job(srv: Served, bucket: str, key: str, fop: str) -> JobTiming:
    """Submit one job and time it (see :class:`JobTiming`); the status API is
    polled every ``STATUS_POLL`` seconds until code 0."""
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    status = qiniu.PersistentFop(auth, bucket)
    async with NotifyReceiver() as receiver:
        pfop = qiniu.PersistentFop(auth, bucket, notify_url=receiver.url)
        start = time.perf_counter()
        ret, info = await asyncio.to_thread(pfop.execute, key, [fop], 1)
        if info.status_code != 200:
            raise RuntimeError(f"pfop on {key} failed: {info}")
        persistent_id = ret["persistentId"]
        deadline = start + JOB_WITHIN
        picked: float | None = None
        while True:
            got, info = await asyncio.to_thread(status.get_status, persistent_id)
            if info.status_code == 200 and got["code"] == 0:
                status_done = time.perf_counter() - start
                break
            if info.status_code != 200 or got["code"] not in (1, 2):
                raise RuntimeError(f"job {persistent_id} failed: {got or info}")
            if got["code"] == 2 and picked is None:
                picked = time.perf_counter() - start
            if time.perf_counter() > deadline:
                raise RuntimeError(f"job {persistent_id} still running after {JOB_WITHIN} s")
            await asyncio.sleep(STATUS_POLL)
        [notice] = await receiver.wait_for(1, within=JOB_WITHIN)
    if notice.body.get("code") != 0:
        raise RuntimeError(f"job {persistent_id} notified {notice.body}")
    return JobTiming(notice.at - start, status_done, picked)


def image_batch(srv: Served, count: int, runs: int) -> dict[str, Any]:
    """Jobs/minute for ``count`` small image jobs, ``runs`` times (fresh saveas keys)."""
    keys = [f"small/{index}.jpg" for index in range(count)]
    for index, key in enumerate(keys):
        upload(srv, "pics", key, make_photo_jpeg(640, 480, seed=index))
    rates = []
    for run in range(runs):
        fops = [f"{IMAGE_FOP}|saveas/{encode_entry('thumbs', f'r{run}/{key}')}" for key in keys]
        elapsed = asyncio.run(run_jobs(srv, "pics", keys, fops))
        rates.append(count / elapsed * 60)
        print(f"  image batch run {run + 1}: {count} jobs in {elapsed:.2f} s", flush=True)
    return {
        "jobs": count,
        "fop": f"{IMAGE_FOP}|saveas/<entry>",
        "source": "640x480 JPEG",
        "jobs_per_minute_runs": [round(r, 1) for r in rates],
        "jobs_per_minute": round(statistics.median(rates), 1),
    }


def dora_ffmpeg_argvs(clip: Path, work: Path, fop: str) -> list[list[str]]:
    """The ffmpeg argvs Dora runs for ``fop`` on ``clip`` (each with its output file last)."""
    captured: list[list[str]] = []
    original = av_process.run_process

    def recording(argv: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        captured.append(list(argv))
        return original(argv, *args, **kwargs)

    av_process.run_process = recording
    try:
        out_dir = Path(tempfile.mkdtemp(prefix="captured-", dir=work))
        run_av(parse_stage(fop, AV_SPECS), str(clip), str(out_dir), Limits())
    finally:
        av_process.run_process = original
    argvs = [a for a in captured if os.path.basename(a[0]) == "ffmpeg"]
    if not argvs:
        raise RuntimeError(f"{fop} ran no ffmpeg")
    return argvs


def time_direct(argvs: Sequence[Sequence[str]], work: Path, tag: str) -> float:
    """Seconds of the argvs run directly one after the other, each writing a file
    of its own (with the extension of Dora's output) instead of Dora's output."""
    start = time.perf_counter()
    for index, argv in enumerate(argvs):
        suffix = Path(argv[-1].removeprefix("file:")).suffix
        command = [*argv[:-1], f"file:{work / f'direct-{tag}-{index}{suffix}'}"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def av_overhead(
    srv: Served, work: Path, clip: Path, runs: int, name: str, chains: Sequence[str]
) -> dict[str, Any]:
    """Median job wall time (submit → notify) vs the median direct ffmpeg time
    for one job of ``chains`` on a fresh upload of ``clip`` per run."""
    argvs = [argv for chain in chains for argv in dora_ffmpeg_argvs(clip, work, chain)]
    data = clip.read_bytes()
    jobs: list[float] = []
    status_done: list[float] = []
    pickups: list[float] = []
    direct: list[float] = []
    for run in range(runs):  # alternate, and swap the order, so load drift hits both alike
        key = f"{name}/r{run}.mp4"  # a new object: nothing about it is cached anywhere
        upload(srv, "media", key, data)
        fop = ";".join(
            f"{chain}|saveas/{encode_entry('out', f'{name}/r{run}-{index}')}"
            for index, chain in enumerate(chains)
        )
        if run % 2:
            direct.append(time_direct(argvs, work, f"{name}-{run}"))
        timing = asyncio.run(time_one_job(srv, "media", key, fop))
        jobs.append(timing.notified)
        status_done.append(timing.status_done)
        if timing.picked is not None:
            pickups.append(timing.picked)
        if not run % 2:
            direct.append(time_direct(argvs, work, f"{name}-{run}"))
        print(
            f"  {name} run {run + 1}: job {timing.notified:.3f} s (status 0 after "
            f"{timing.status_done:.3f} s), direct {direct[-1]:.3f} s",
            flush=True,
        )
    job, bare, polled = (statistics.median(v) for v in (jobs, direct, status_done))
    overhead = (job - bare) / bare
    return {
        "fop": ";".join(f"{chain}|saveas/<entry>" for chain in chains),
        "ffmpeg_argvs": argvs,
        # submit → notify POST arrival: the job's end as its user learns it
        "job_seconds_runs": [round(s, 3) for s in jobs],
        "job_seconds": round(job, 3),
        # submit → status API first answering code 0, polled every STATUS_POLL s
        "status_seconds_runs": [round(s, 3) for s in status_done],
        "status_seconds": round(polled, 3),
        # submit → first status "processing" (code 2), as seen polling
        "pickup_seconds_runs": [round(s, 3) for s in pickups],
        "direct_seconds_runs": [round(s, 3) for s in direct],
        "direct_seconds": round(bare, 3),
        "overhead": round(overhead, 4),
        "overhead_status": round((polled - bare) / bare, 4),
        # the best runs: the least disturbed by other work on a shared machine
        "overhead_of_minima": round((min(jobs) - min(direct)) / min(direct), 4),
        "verdict": "PASS" if overhead < OVERHEAD_TARGET else "FAIL",
    }


def transcode_overhead(
    srv: Served, work: Path, runs: int, seconds: float = CLIP_SECONDS
) -> dict[str, dict[str, Any]]:
    """The single-chain (``avthumb/mp4``) and two-chain figures on one clip."""
    clip = make_clip(work / "clip.mp4", size=CLIP_SIZE, seconds=seconds)
    clip_text = f"{seconds:g} s {CLIP_SIZE} testsrc2 + sine, H.264/AAC"
    single = av_overhead(srv, work, clip, runs, "single", [AV_FOP])
    double = av_overhead(srv, work, clip, runs, "double", [AV_FOP, FRAME_FOP])
    return {"transcode": {**single, "clip": clip_text}, "two_chains": {**double, "clip": clip_text}}


def _av_rows(av: dict[str, Any], what: str, target: bool) -> list[str]:
    fop = av["fop"].replace("|", "\\|")  # in a table
    verdict = f"< 5 %: {av['verdict']}" if target else "—"
    return [
        f"| {what}: `{fop}`, {av['clip']}: job, submit → notify POST received "
        f"| {av['job_seconds']} s | {av['job_seconds_runs']} | |",
        f"| same job, submit → status code 0 (polled every {STATUS_POLL} s) "
        f"| {av['status_seconds']} s | {av['status_seconds_runs']} | |",
        f"| same ffmpeg argv{'s' if len(av['ffmpeg_argvs']) > 1 else ''} run directly "
        f"| {av['direct_seconds']} s | {av['direct_seconds_runs']} | |",
        f"| {what} job overhead (notify) | **{av['overhead'] * 100:.1f} %** | | {verdict} |",
        f"| {what} job overhead (status poll) | {av['overhead_status'] * 100:.1f} % | | |",
        f"| submit → status first 2 (processing), per run | {av['pickup_seconds_runs']} s | | |",
        f"| overhead of the fastest runs (min job vs min direct) "
        f"| {av['overhead_of_minima'] * 100:.1f} % | | |",
    ]


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown."""
    batch, av, two = report["image_batch"], report["transcode"], report["two_chains"]
    batch_fop = batch["fop"].replace("|", "\\|")  # in a table
    argvs = [*av["ffmpeg_argvs"], *two["ffmpeg_argvs"][len(av["ffmpeg_argvs"]) :]]
    return "\n".join(
        [
            "# Dora asynchronous jobs",
            "",
            f"Date {report['started']}; {report['cores']} cores, `dora serve` with "
            f"{report['workers']} workers; median of {report['runs']} runs; load average "
            f"{report['loadavg_start']} → {report['loadavg_end']} (shared machine). "
            "Every measured job runs on a fresh upload of the clip (no cached probe).",
            "",
            "| benchmark | result | runs | target |",
            "|---|---|---|---|",
            f"| {batch['jobs']} × `{batch_fop}` on {batch['source']} "
            f"| **{batch['jobs_per_minute']} jobs/min** | {batch['jobs_per_minute_runs']} | — |",
            *_av_rows(av, "transcode", target=True),
            *_av_rows(two, "two-chain", target=False),
            "",
            "ffmpeg argvs Dora runs (output paths elided):",
            "",
            "```",
            *(" ".join([*argv[:-1], "file:<out>"]) for argv in argvs),
            "```",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS)
    parser.add_argument("--json", type=Path, default=Path("bench/results/jobs.json"))
    parser.add_argument("--markdown", type=Path, default=Path("bench/results/jobs.md"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "benchmark": "jobs",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": cores,
        "workers": cores,
        "runs": args.runs,
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="dora-jobs-bench-") as tmp:
        work = Path(tmp)
        with dora_serve(work / "data", workers=cores, env=ENV) as srv:
            qiniu.config.set_default(default_api_host=srv.url)
            report["image_batch"] = image_batch(srv, args.images, args.runs)
            report.update(transcode_overhead(srv, work, args.runs, args.clip_seconds))
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    batch = report["image_batch"]
    print(f"image jobs: {batch['jobs_per_minute']} jobs/min (runs {batch['jobs_per_minute_runs']})")
    for name in ("transcode", "two_chains"):
        av = report[name]
        print(
            f"{name}: job {av['job_seconds']} s (status {av['status_seconds']} s), "
            f"direct {av['direct_seconds']} s, overhead {av['overhead'] * 100:.1f} % "
            f"(status poll {av['overhead_status'] * 100:.1f} %)"
            + (f" ({av['verdict']}, target < 5 %)" if name == "transcode" else "")
        )
    print(f"load average {report['loadavg_start']} -> {report['loadavg_end']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.markdown.write_text(markdown(report))


if __name__ == "__main__":
    main()
