"""Run thumbor, the peer, from its own virtualenv with its fastest honest setup.

thumbor's best configuration on a small machine: one process per core
(``--processes``), the file loader reading the same photos Dora serves, no
storage, no result storage, unsafe URLs, quality 75 (Dora's default). Two of
its defaults are set to match Dora's output rather than to handicap it:
baseline JPEG (``PROGRESSIVE_JPEG = False``: Dora writes baseline unless
``interlace/1``, and progressive costs more) and the BICUBIC filter Dora
resamples with (thumbor's default LANCZOS is slower). Its JPEG encoder
always optimises Huffman tables (hard-coded in its PIL engine).
``ENGINE_THREADPOOL_SIZE`` (0 = transform on the event loop) is the one knob
without an obvious best value; the suite tries several and keeps the best.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from serving import free_port

SETTINGS = {
    "LOADER": "'thumbor.loaders.file_loader'",
    "STORAGE": "'thumbor.storages.no_storage'",
    "RESULT_STORAGE": "None",
    "ALLOW_UNSAFE_URL": "True",
    "QUALITY": "75",
    "PROGRESSIVE_JPEG": "False",
    "PILLOW_RESAMPLING_FILTER": "'BICUBIC'",
    "RESPECT_ORIENTATION": "True",  # Dora auto-orients; the photos carry no EXIF anyway
    "MAX_AGE": "31536000",
}


@dataclass
class ThumborServed:
    """A running thumbor: its supervisor process and base URL."""

    proc: subprocess.Popen[bytes]
    url: str
    config: dict[str, str]


# thumbor's own defaults for the two settings matched to Dora's output
STOCK_OUTPUT = {"PROGRESSIVE_JPEG": "True", "PILLOW_RESAMPLING_FILTER": "'LANCZOS'"}


def thumbor_config(
    images: Path, threadpool: int, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """thumbor.conf settings (Python literals) for one run."""
    return {
        **SETTINGS,
        "FILE_LOADER_ROOT_PATH": repr(str(images.resolve())),
        "ENGINE_THREADPOOL_SIZE": str(threadpool),
        **(overrides or {}),
    }


def package_versions(venv: Path, *names: str) -> dict[str, str]:
    """Versions of packages installed in another virtualenv."""
    code = (
        "import importlib.metadata as m, sys\n"
        "for n in sys.argv[1:]:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: print(n, 'missing')\n"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *names],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"thumbor exited:\n{log.read_text(errors='replace')}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{url}/healthcheck", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"thumbor not ready in {timeout}s:\n{log.read_text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def thumbor_serve(
    venv: Path,
    images: Path,
    work: Path,
    *,
    processes: int,
    threadpool: int,
    overrides: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[ThumborServed]:
    """Start thumbor on a free port; stop the whole process group afterwards."""
    work.mkdir(parents=True, exist_ok=True)
    config = thumbor_config(images, threadpool, overrides)
    conf = work / "thumbor.conf"
    conf.write_text("".join(f"{k} = {v}\n" for k, v in config.items()))
    port = free_port()
    log_path = work / f"thumbor-{port}.log"
    cmd = [
        str(venv / "bin" / "thumbor"),
        "--conf",
        str(conf),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--processes",
        str(processes),
        "--log-level",
        "warning",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, url, timeout, log_path)
            yield ThumborServed(proc, url, config)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            # forked workers may outlive the parent for a moment
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
