"""Start one server at a time, with the bench's photos in place, as a :class:`Target`.

Dora runs as ``dora serve`` (supervisor, one worker per core, N gateways);
its photos are uploaded once through its own API (the official qiniu SDK)
into a data directory that outlives each server start. thumbor reads the
same files from the directory its file loader points at.
"""

from __future__ import annotations

import contextlib
import io
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import qiniu
from images import make_photo_jpeg
from measure import Target
from PIL import Image
from procs import cmdline
from scenarios import BUCKET, SOURCES, noop_dora_paths, source_name, tiny_name
from serving import Served, dora_serve
from thumbor_peer import thumbor_serve


def dora_role(pid: int, root: int) -> str:
    """Which part of ``dora serve`` a process is."""
    text = cmdline(pid)
    if "dora.gateway" in text:
        return "gateway"
    if "dora.workers" in text:
        return "workers"
    return "supervisor" if pid == root else "other"


def thumbor_role(pid: int, root: int) -> str:
    """thumbor's forking parent, or one of its serving processes."""
    return "parent" if pid == root else "processes"


def _make_one(job: tuple[Path, int, int, int]) -> None:
    path, width, height, seed = job
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(make_photo_jpeg(width, height, seed=seed))
    tmp.rename(path)


def ensure_photos(images: Path, objects: int, procs: int) -> list[Path]:
    """The distinct photo-like JPEGs of every size (made once, then reused) and the tiny PNG."""
    images.mkdir(parents=True, exist_ok=True)
    jobs = []
    for source, (width, height) in SOURCES.items():
        for index in range(objects):
            path = images / source_name(source, index)
            if not path.exists():
                jobs.append((path, width, height, index + 1))
    if jobs:
        print(f"making {len(jobs)} photo-like JPEGs in {images} (once)", flush=True)
        with ProcessPoolExecutor(max(1, procs)) as pool:
            list(pool.map(_make_one, jobs))
    for index in range(objects):
        tiny = images / tiny_name(index)
        if not tiny.exists():
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (index * 3 % 256, 120, 40)).save(buf, "PNG")
            tiny.write_bytes(buf.getvalue())
    names = [source_name(s, i) for s in SOURCES for i in range(objects)]
    return [images / name for name in names + [tiny_name(i) for i in range(objects)]]


def upload(srv: Served, files: list[Path]) -> None:
    """Put the files into Dora's bench bucket through its upload API."""
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    region = qiniu.Region(up_host=srv.url, up_host_backup=srv.url, io_host=srv.url)
    for path in files:
        token = auth.upload_token(BUCKET, path.name)
        _, info = qiniu.put_data(token, path.name, path.read_bytes(), regions=[region])
        if info.status_code != 200:
            raise RuntimeError(f"upload of {path.name} failed: {info}")


def wait_dora_ready(srv: Served, timeout: float = 60.0) -> None:
    """Until a worker answers: the gateway may be up before any worker registered."""
    url = srv.url + noop_dora_paths(1)[0]
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=5) as resp,
        ):
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"dora serve answers no processing request in {timeout}s")
        time.sleep(0.2)


@dataclass
class Servers:
    """How to start each server for this suite run."""

    work: Path
    images: Path
    files: list[Path]
    thumbor_venv: Path
    cores: int
    dora_gateways: int = 1
    thumbor_threadpool: int = 0
    _uploaded: bool = field(default=False)

    @contextlib.contextmanager
    def dora(self, *, cache: bool, gateways: int | None = None) -> Iterator[tuple[Target, Served]]:
        """``dora serve`` with one worker per core; the result cache on or off."""
        env = {"DORA_LOG_LEVEL": "WARNING"}
        if not cache:
            env["DORA_RESULT_CACHE_BYTES"] = "0"
        data = self.work / "dora-data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "serve.json").unlink(missing_ok=True)  # stale if a run was killed
        with dora_serve(
            data,
            workers=self.cores,
            gateways=gateways or self.dora_gateways,
            env=env,
            timeout=120,
        ) as srv:
            if not self._uploaded:
                upload(srv, self.files)
                self._uploaded = True
            wait_dora_ready(srv)
            yield Target(srv.url, srv.proc.pid, dora_role), srv

    @contextlib.contextmanager
    def thumbor(
        self, *, threadpool: int | None = None, overrides: dict[str, str] | None = None
    ) -> Iterator[Target]:
        """thumbor with one process per core and the file loader on the photos."""
        pool = self.thumbor_threadpool if threadpool is None else threadpool
        with thumbor_serve(
            self.thumbor_venv,
            self.images,
            self.work / "thumbor",
            processes=self.cores,
            threadpool=pool,
            overrides=overrides,
        ) as srv:
            yield Target(srv.url, srv.proc.pid, thumbor_role)
