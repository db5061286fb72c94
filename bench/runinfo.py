"""The header every results file carries: when, where, how, and with what.

A benchmark figure is only worth what its context says: the date, the
machine (cores and CPU model from ``/proc/cpuinfo``), the machine's load when
the run started and ended (the machine may be shared), the exact command, and
the versions of everything measured.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import PIL
from loadgen import wrk_version
from procs import loadavg, machine_info
from thumbor_peer import package_versions

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def dora_version() -> str:
    """The package version and the commit (``+dirty`` when the tree has changes)."""
    try:
        version = importlib.metadata.version("dora")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = "+dirty" if _git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{version} ({commit}{dirty})" if commit else version


def command_line() -> str:
    """The command as the user typed it (``scripts/bench`` passes it on)."""
    return os.environ.get("DORA_BENCH_COMMAND") or shlex.join([sys.argv[0], *sys.argv[1:]])


def codecs(python: str) -> str:
    """The JPEG and WebP libraries a Python's Pillow was built with."""
    code = (
        "import PIL.features as f\n"
        'print(f\'libjpeg-turbo {f.version("libjpeg_turbo")}, libwebp {f.version("webp")}\')'
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def versions(thumbor_venv: Path | None) -> dict[str, str]:
    found = {
        "dora": dora_version(),
        "python": platform.python_version(),
        "pillow_dora": PIL.__version__,
        "codecs_dora": codecs(sys.executable),
        "wrk": wrk_version(),
    }
    if thumbor_venv is not None and (thumbor_venv / "bin" / "python").exists():
        peer = package_versions(thumbor_venv, "thumbor", "pillow", "tornado")
        found["thumbor"] = peer["thumbor"]
        found["pillow_thumbor"] = peer["pillow"]
        found["tornado_thumbor"] = peer["tornado"]
        found["codecs_thumbor"] = codecs(str(thumbor_venv / "bin" / "python"))
    return found


def header(kind: str, settings: dict[str, Any], thumbor_venv: Path | None) -> dict[str, Any]:
    """The start of a results document; :func:`finish` adds the end time and load."""
    return {
        "benchmark": kind,
        "date": time.strftime("%Y-%m-%d"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "loadavg_start": loadavg(),
        "command": command_line(),
        "versions": versions(thumbor_venv),
        "settings": settings,
    }


def finish(document: dict[str, Any], path: Path) -> None:
    """Stamp the end time and load, write the document as JSON."""
    document["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    document["loadavg_end"] = loadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}", flush=True)
