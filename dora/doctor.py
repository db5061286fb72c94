"""``dora doctor``: what this installation can do, and what it is missing.

It reports Python and Pillow with their codecs, every image format Dora
knows with whether it can be read and written here (AVIF and HEIC depend on
the codecs installed), ffmpeg and ffprobe for the video ops, the fonts text
watermarks are drawn with, and the state of the data directory. Exit code 0
when everything essential is there (JPEG and PNG both ways, a usable data
directory), 1 otherwise; what is merely missing (ffmpeg, AVIF) is a warning.

This module lives in the dependency-free core, so the imaging library and
the format table are imported when the command runs, not when it loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from dora.config import Settings
from dora.layout import BUCKETS_DIR, JOBS_DB, SERVE_STATE

TOOL_TIMEOUT = 5.0  # seconds for one `ffmpeg -version` or `fc-list`
ESSENTIAL_FORMATS = ("jpg", "png")
# The files a running installation keeps under its data directory.


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One line of the report."""

    section: str
    name: str
    ok: bool
    detail: str
    essential: bool = False

    @property
    def failed(self) -> bool:
        """True when an essential check is not met."""
        return self.essential and not self.ok


def _run(args: list[str]) -> str | None:
    """The first line a tool prints, or None when it cannot run in time."""
    try:
        done = subprocess.run(
            args, capture_output=True, timeout=TOOL_TIMEOUT, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.decode(errors="replace").splitlines()
    return lines[0].strip() if lines else ""


def python_checks() -> list[Check]:
    """Python and Pillow, with the libraries Pillow was built with."""
    version = f"{platform.python_version()} ({sys.executable})"
    checks = [Check("runtime", "python", sys.version_info >= (3, 11), version, essential=True)]
    try:
        import PIL  # noqa: PLC0415
        from PIL import features  # noqa: PLC0415
    except ImportError as exc:
        return [*checks, Check("runtime", "pillow", False, str(exc), essential=True)]
    libraries = []
    for feature in ("jpg", "zlib", "libtiff", "webp", "avif", "littlecms2", "freetype2", "raqm"):
        built = features.version(feature)
        if built is not None:
            libraries.append(f"{feature} {built}")
    detail = f"{PIL.__version__}: {', '.join(libraries)}"
    checks.append(Check("runtime", "pillow", True, detail, essential=True))
    checks.append(
        Check(
            "runtime",
            "colour management",
            bool(features.check("littlecms2")),
            "LittleCMS (ICC profiles, CMYK to sRGB)"
            if features.check("littlecms2")
            else "LittleCMS missing: CMYK and profiled images keep their raw colours",
        )
    )
    return checks


def format_checks() -> list[Check]:
    """Every image format Dora knows: readable and writable here?"""
    from dora.builtin_ops.formats import supported_formats  # noqa: PLC0415

    checks = []
    for row in supported_formats():
        both = row.read and row.write
        if both:
            state = "read, write"
        elif row.read or row.write:
            state = "read only" if row.read else "write only"
        else:
            state = "not available"
        checks.append(
            Check(
                "formats",
                row.name,
                both,
                f"{state} ({row.codec})",
                essential=row.name in ESSENTIAL_FORMATS,
            )
        )
    return checks


def tool_checks() -> list[Check]:
    """ffmpeg and ffprobe, which the video and audio ops run."""
    checks = []
    for name in ("ffmpeg", "ffprobe"):
        path = shutil.which(name)
        version = _run([path, "-hide_banner", "-version"]) if path else None
        if path is None:
            checks.append(Check("tools", name, False, "not found on PATH: video ops unavailable"))
        elif version is None:
            checks.append(Check("tools", name, False, f"{path} does not run"))
        else:
            words = version.split()
            number = words[2] if len(words) > 2 and words[1] == "version" else version
            checks.append(Check("tools", name, True, f"{number} ({path})"))
    return checks


def font_checks() -> list[Check]:
    """The fonts text watermarks can use (found through fontconfig)."""
    fc_list, fc_match = shutil.which("fc-list"), shutil.which("fc-match")
    if fc_list is None or fc_match is None:
        detail = "fontconfig not found: text marks use Pillow's built-in face"
        return [Check("fonts", "fontconfig", False, detail)]
    listing = subprocess.run(
        [fc_list, "--format", "%{file}\n"],
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    files = {line for line in listing.stdout.decode(errors="replace").splitlines() if line}
    checks = [Check("fonts", "installed", bool(files), f"{len(files)} font files")]
    for name, pattern in (("latin", "sans-serif"), ("chinese", "sans-serif:lang=zh-cn")):
        found = _run([fc_match, "--format", "%{file}", pattern])
        ok = bool(found) and (name != "chinese" or _covers_chinese(fc_match, pattern))
        detail = found or "none"
        if name == "chinese" and not ok:
            detail = f"no font covers Chinese (fallback {detail}): install fonts-wqy-zenhei"
        checks.append(Check("fonts", name, ok, detail))
    return checks


def _covers_chinese(fc_match: str, pattern: str) -> bool:
    # "中" (U+4E2D) in the matched font's character set
    return _run([fc_match, "--format", "%{charset}", pattern + ":charset=4e2d"]) not in (None, "")


def data_dir_checks(settings: Settings) -> list[Check]:
    """The data directory: present, writable, free space, what it holds."""
    root = settings.data_dir.resolve()
    if not root.exists():
        parent = next((p for p in root.parents if p.exists()), Path("/"))
        creatable = os.access(parent, os.W_OK)
        fate = "dora serve creates it" if creatable else "cannot be created"
        detail = f"{root} does not exist yet ({fate})"
        return [Check("data", "directory", creatable, detail, essential=True)]
    writable = root.is_dir() and os.access(root, os.W_OK | os.X_OK)
    free = shutil.disk_usage(root).free
    access = "writable" if writable else "NOT writable"
    checks = [
        Check("data", "directory", writable, f"{root} ({access})", essential=True),
        Check("data", "free space", free > 1024**3, f"{free / 1024**3:.1f} GiB free"),
    ]
    buckets = root / BUCKETS_DIR
    count = sum(1 for entry in buckets.iterdir() if entry.is_dir()) if buckets.is_dir() else 0
    checks.append(Check("data", "buckets", True, f"{count} in {buckets}"))
    jobs = root / JOBS_DB
    present = "present" if jobs.exists() else "not created yet"
    checks.append(Check("data", "job store", True, f"{jobs} ({present})"))
    state = root / SERVE_STATE
    running = "running (see serve.json)" if state.exists() else "not running"
    checks.append(Check("data", "dora serve", True, running))
    return checks


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in report order."""
    checks = python_checks()
    if any(check.name == "pillow" and check.ok for check in checks):
        checks += format_checks()
    checks += tool_checks() + font_checks() + data_dir_checks(settings)
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    """The report as JSON: ``{"ok": bool, "sections": {section: {name: {...}}}}``."""
    sections: dict[str, dict[str, Any]] = {}
    for check in checks:
        sections.setdefault(check.section, {})[check.name] = {
            "ok": check.ok,
            "detail": check.detail,
            "essential": check.essential,
        }
    return {"ok": not any(check.failed for check in checks), "sections": sections}


def as_text(checks: list[Check]) -> str:
    """The report for people: one line a check, grouped by section."""
    lines = []
    section = None
    for check in checks:
        if check.section != section:
            section = check.section
            lines.append(f"{section}:")
        mark = "ok" if check.ok else ("FAIL" if check.essential else "warn")
        lines.append(f"  {mark:<4} {check.name:<18} {check.detail}")
    failed = [check.name for check in checks if check.failed]
    lines.append("essential checks failed: " + ", ".join(failed) if failed else "all essentials ok")
    return "\n".join(lines)


def run_doctor(settings: Settings, *, json_output: bool = False) -> int:
    """Print the report; 0 when every essential check passes, 1 otherwise."""
    checks = run_checks(settings)
    if json_output:
        print(json.dumps(as_json(checks), ensure_ascii=False, indent=2))
    else:
        print(as_text(checks))
    return 1 if any(check.failed for check in checks) else 0
