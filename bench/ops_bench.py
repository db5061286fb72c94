"""Per-op throughput of Dora's op runner against a pure-Pillow lower bound, one core.

For photo-like 1920×1080 and 4000×3000 JPEGs (:func:`images.make_photo_jpeg`)
and each fop of :data:`OPS`, this times in one process, single-threaded:

- ``dora``: :func:`dora.builtin_ops.runner.run_chain` on the parsed stages
  (decode, limits, orientation, op table, quality rule, encode: all of it);
- ``bound``: the same output written directly against Pillow. Shrinking ops:
  DCT-scaled decode (``Image.draft``) to the smallest size still ≥ the
  target, one ``resize`` with a source box and Dora's filter and reducing
  gap, q75 encode. The watermark: full decode, the same text drawn with
  ``ImageDraw`` in the same font file at the same place, q75 encode.

Each case runs ``--runs`` runs of ``--seconds`` in which Dora and the bound
are called alternately (so load on a shared machine hits both alike); the
median img/s of each is reported with the median of the runs' Dora/bound
ratios. Shrinking ops PASS at a ratio ≥ 0.8
(target: every shrinking op within 20 % of the bound per core). Output
sizes and formats are checked equal between the two.

Run from the repository root::

    .venv/bin/python bench/ops_bench.py [--seconds 6] [--runs 3] [--json bench/results/ops.json]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL
from images import make_photo_jpeg
from PIL import Image, ImageDraw, ImageFont
from pillow_bound import chain_transform

from dora.builtin_ops.image import text as dora_text
from dora.builtin_ops.image.resample import REDUCING_GAP, RESAMPLE

QUALITY = 75
TARGET_RATIO = 0.8
SIZES = ((1920, 1080), (4000, 3000))
WM_TEXT = "Dora 水印"
WM_TWIPS = 500
WM_FILL = "#FFFFFF"
WM_OFFSET = 10  # Dora's default dx/dy


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@dataclasses.dataclass(frozen=True)
class OpCase:
    """One fop: its text, whether it shrinks, and how the bound makes its output."""

    name: str
    fop: str
    shrinking: bool
    kind: str  # "cover", "fit", "scale" or "watermark"
    out_format: str  # Pillow format name
    box: tuple[int, int] = (0, 0)  # cover/fit target; scale: unused


OPS = (
    OpCase("view2/1 300x200", "imageView2/1/w/300/h/200", True, "cover", "JPEG", (300, 200)),
    OpCase("view2/2 300x200", "imageView2/2/w/300/h/200", True, "fit", "JPEG", (300, 200)),
    OpCase("mogr !50p", "imageMogr2/auto-orient/thumbnail/!50p", True, "scale", "JPEG"),
    OpCase(
        "mogr !50p webp",
        "imageMogr2/auto-orient/thumbnail/!50p/format/webp",
        True,
        "scale",
        "WEBP",
    ),
    OpCase(
        "watermark text",
        f"watermark/2/text/{_b64(WM_TEXT)}/fontsize/{WM_TWIPS}/fill/{_b64(WM_FILL)}"
        "/gravity/SouthEast",
        False,
        "watermark",
        "JPEG",
    ),
)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    options: dict[str, Any] = {"quality": QUALITY}
    if fmt == "JPEG":
        options.update(progressive=False, optimize=False)
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _shrink(
    src: bytes, out: tuple[int, int], crop: tuple[float, float, float, float], fmt: str
) -> bytes:
    """Draft-decode to ≥ the scaled size, one boxed resize, encode: the floor."""
    image = Image.open(io.BytesIO(src))
    full_w, full_h = image.size
    crop_w, crop_h = crop[2] - crop[0], crop[3] - crop[1]
    # the whole source scaled as the output scales its crop
    scaled = (max(1, round(full_w * out[0] / crop_w)), max(1, round(full_h * out[1] / crop_h)))
    image.draft("RGB", scaled)
    image.load()
    fx, fy = image.size[0] / full_w, image.size[1] / full_h
    box = (crop[0] * fx, crop[1] * fy, crop[2] * fx, crop[3] * fy)
    result: Image.Image = image
    if image.size != out or box != (0, 0, *image.size):
        result = image.resize(out, RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    return _encode(result, fmt)


def _shrink_plan(
    case: OpCase, size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
    """The output size and the source box it shows, for the bound's shrinking ops."""
    width, height = size
    if case.kind == "scale":
        return (round(width / 2), round(height / 2)), (0.0, 0.0, float(width), float(height))
    tw, th = case.box
    if case.kind == "fit":
        scale = min(tw / width, th / height)
        return (round(width * scale), round(height * scale)), (
            0.0,
            0.0,
            float(width),
            float(height),
        )
    scale = max(tw / width, th / height)  # cover, then a centred crop
    cw, ch = tw / scale, th / scale
    left, top = (width - cw) / 2, (height - ch) / 2
    return (tw, th), (left, top, left + cw, top + ch)


def _watermark_bound(src: bytes, font: ImageFont.FreeTypeFont) -> bytes:
    """Full decode, the text drawn in place at SouthEast, encode."""
    image = Image.open(io.BytesIO(src))
    image.load()
    line = dora_text.clean_text(WM_TEXT)
    width, height = dora_text.measure(line, font)
    x = image.width - width - WM_OFFSET
    y = image.height - height - WM_OFFSET
    ImageDraw.Draw(image).text((x, y), line, font=font, fill=dora_text.parse_colour(WM_FILL))
    return _encode(image, "JPEG")


def bound_runner(case: OpCase, size: tuple[int, int]) -> Callable[[bytes], bytes]:
    """The pure-Pillow function making ``case``'s output for a source of ``size``."""
    if case.kind == "watermark":
        found = dora_text.find_font(None, dora_text.clean_text(WM_TEXT))
        pixels = dora_text.twips_to_pixels(WM_TWIPS)
        font = (
            ImageFont.truetype(found.path, pixels, index=found.index)
            if found is not None
            else ImageFont.load_default(pixels)
        )
        assert isinstance(font, ImageFont.FreeTypeFont)
        return lambda src: _watermark_bound(src, font)
    out, crop = _shrink_plan(case, size)
    return lambda src: _shrink(src, out, crop, case.out_format)


def dora_runner(case: OpCase) -> Callable[[bytes], bytes]:
    """Dora's op runner on ``case``'s fop."""
    return chain_transform(case.fop)


def time_paired(
    first: Callable[[bytes], bytes], second: Callable[[bytes], bytes], src: bytes, seconds: float
) -> tuple[float, float]:
    """Images per second of ``first`` and of ``second``, called alternately for at
    least ``seconds`` in all (and 3 calls each): on a shared machine, load that
    comes and goes hits both alike, so their ratio stays meaningful."""
    first(src), second(src)  # warm: font caches, fontconfig, codecs
    spent = [0.0, 0.0]
    count = 0
    while sum(spent) < seconds or count < 3:
        for index, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn(src)
            spent[index] += time.perf_counter() - start
        count += 1
    return count / spent[0], count / spent[1]


def _describe(body: bytes) -> tuple[str, int, int]:
    with Image.open(io.BytesIO(body)) as image:
        return str(image.format), image.size[0], image.size[1]


def _size_of(fn: Callable[[bytes], bytes], src: bytes) -> tuple[tuple[str, int, int], int]:
    body = fn(src)
    return _describe(body), len(body)


def measure_case(case: OpCase, size: tuple[int, int], seconds: float, runs: int) -> dict[str, Any]:
    """Median img/s of Dora and the bound for one op on one photo, runs interleaved."""
    src = make_photo_jpeg(*size, seed=1)
    dora_fn, bound_fn = dora_runner(case), bound_runner(case, size)
    (dora_out, dora_bytes), (bound_out, bound_bytes) = (
        _size_of(dora_fn, src),
        _size_of(bound_fn, src),
    )
    dora_rates: list[float] = []
    bound_rates: list[float] = []
    for _ in range(runs):
        dora_rate, bound_rate = time_paired(dora_fn, bound_fn, src, seconds)
        dora_rates.append(dora_rate)
        bound_rates.append(bound_rate)
    dora, bound = statistics.median(dora_rates), statistics.median(bound_rates)
    # the median of the paired runs' ratios: each run's pair saw the same load
    ratio = statistics.median(d / b for d, b in zip(dora_rates, bound_rates, strict=True))
    verdict = ("PASS" if ratio >= TARGET_RATIO else "FAIL") if case.shrinking else "n/a"
    return {
        "op": case.name,
        "fop": case.fop,
        "source": f"{size[0]}x{size[1]}",
        "shrinking": case.shrinking,
        "dora_img_s": round(dora, 2),
        "bound_img_s": round(bound, 2),
        "dora_runs": [round(r, 2) for r in dora_rates],
        "bound_runs": [round(r, 2) for r in bound_rates],
        "ratio": round(ratio, 3),
        "verdict": verdict,
        "dora_output": "{} {}x{}".format(*dora_out),
        "bound_output": "{} {}x{}".format(*bound_out),
        "outputs_equal": dora_out == bound_out,
        "dora_bytes": dora_bytes,
        "bound_bytes": bound_bytes,
    }


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table with a short header."""
    lines = [
        "# Dora op runner vs pure-Pillow bound (one core)",
        "",
        f"Date {report['started']}; {report['machine']}; Pillow {report['pillow']}; "
        f"{report['runs']} runs per case of {report['seconds']} s, Dora and the bound "
        "called alternately; medians; "
        f"load average {report['loadavg_start']} → {report['loadavg_end']} "
        "(shared machine: absolute figures are noisy, ratios less so).",
        "",
        "| source | op | Dora img/s | bound img/s | Dora/bound | target ≥ 0.8 | output |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in report["results"]:
        output = (
            row["dora_output"]
            if row["outputs_equal"]
            else (f"MISMATCH {row['dora_output']} vs {row['bound_output']}")
        )
        lines.append(
            f"| {row['source']} | `{row['fop']}` | {row['dora_img_s']} | {row['bound_img_s']} "
            f"| {row['ratio']:.2f} | {row['verdict']} | {output} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per run, both sides")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("bench/results/ops.json"))
    parser.add_argument("--markdown", type=Path, default=Path("bench/results/ops.md"))
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "ops",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "pillow": PIL.__version__,
        "quality": QUALITY,
        "seconds": args.seconds,
        "runs": args.runs,
        "loadavg_start": _load(),
        "results": [],
    }
    print(f"{'source':>9} {'op':<16} {'dora/s':>8} {'bound/s':>8} {'ratio':>6}  verdict  output")
    for size in SIZES:
        for case in OPS:
            row = measure_case(case, size, args.seconds, args.runs)
            report["results"].append(row)
            same = "" if row["outputs_equal"] else f"  MISMATCH bound {row['bound_output']}"
            print(
                f"{row['source']:>9} {case.name:<16} {row['dora_img_s']:>8.1f} "
                f"{row['bound_img_s']:>8.1f} {row['ratio']:>6.2f}  {row['verdict']:<7}  "
                f"{row['dora_output']}{same}",
                flush=True,
            )
    report["loadavg_end"] = _load()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    args.markdown.write_text(markdown(report))
    print(f"load average {report['loadavg_start']} -> {report['loadavg_end']}")


if __name__ == "__main__":
    main()
