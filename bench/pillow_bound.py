"""How fast can Pillow make a thumbnail, and how close does Dora's op runner get?

For photo-like 1920×1080 and 4000×3000 JPEGs (deterministic, see
:mod:`bench.images`), this measures in one process (so: per core):

- ``bound``: the same transformation written directly against Pillow, the
  floor for any Pillow-based server: JPEG DCT-scaled decode (``draft``), one
  ``resize`` with a source box, q75 encode (JPEG, or WebP for ``format/webp``);
- ``thumbnail``: what plain ``Image.thumbnail`` does (mode 2 only), a peer;
- ``run_chain``: :func:`dora.builtin_ops.runner.run_chain` on the wire form
  of the same fop (parsing, limits, orientation, the op table included).

Run from the repository root (the script's folder is its import path)::

    .venv/bin/python bench/pillow_bound.py [--seconds 2] [--procs 2] [--study] [--json out.json]

``--procs N`` also measures N processes side by side (aggregate img/s);
``--study`` compares filters and draft scales (speed and PSNR).
:func:`measure_bound` gives other benchmarks the bound of one fop on one photo.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import PIL
from images import make_photo_jpeg
from PIL import Image, ImageChops

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.fop import parse_fops

FILTER = Image.Resampling.BICUBIC
REDUCING_GAP = 2.0
QUALITY = 75
INPUTS = {"1920x1080": (1920, 1080, 1), "4000x3000": (4000, 3000, 2)}
FOPS = ("imageView2/1/w/300/h/200", "imageView2/2/w/300/h/200")

Transform = Callable[[bytes], bytes]
PIL_FORMATS = {"jpg": "JPEG", "webp": "WEBP"}


def _encode(image: Image.Image, fmt: str = "jpg") -> bytes:
    buf = io.BytesIO()
    image.save(buf, PIL_FORMATS[fmt], quality=QUALITY)
    return buf.getvalue()


def bound_cover_crop(box_w: int, box_h: int, src: bytes, fmt: str = "jpg") -> bytes:
    """imageView2/1: cover ``box_w``×``box_h`` then centre-crop, straight on Pillow."""
    image = Image.open(io.BytesIO(src))
    width, height = image.size
    scale = min(1.0, max(box_w / width, box_h / height))
    scaled_w, scaled_h = max(1, round(width * scale)), max(1, round(height * scale))
    crop_w, crop_h = min(box_w, scaled_w), min(box_h, scaled_h)
    drafted = image.draft("RGB", (scaled_w, scaled_h))
    divisor = width / drafted[1][2] if drafted else 1.0
    left, top = (scaled_w - crop_w) // 2, (scaled_h - crop_h) // 2
    sx, sy = scaled_w * divisor, scaled_h * divisor
    box = (
        left * width / sx,
        top * height / sy,
        (left + crop_w) * width / sx,
        (top + crop_h) * height / sy,
    )
    return _encode(image.resize((crop_w, crop_h), FILTER, box=box, reducing_gap=REDUCING_GAP), fmt)


def bound_fit(box_w: int, box_h: int, src: bytes, fmt: str = "jpg") -> bytes:
    """imageView2/2: fit inside ``box_w``×``box_h``, straight on Pillow."""
    image = Image.open(io.BytesIO(src))
    width, height = image.size
    scale = min(1.0, box_w / width, box_h / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image.draft("RGB", size)
    return _encode(image.resize(size, FILTER, reducing_gap=REDUCING_GAP), fmt)


def thumbnail_fit(box_w: int, box_h: int, src: bytes) -> bytes:
    """Pillow's own ``thumbnail`` (LANCZOS, draft to ≥ 2× the target): a peer."""
    image = Image.open(io.BytesIO(src))
    image.thumbnail((box_w, box_h))
    return _encode(image)


def _view2_args(fop: str) -> tuple[int, int, int]:
    """``imageView2/<mode>/w/<W>/h/<H>[/format/<jpg|webp>]`` → (mode, W, H)."""
    parts = fop.split("/")
    args = dict(zip(parts[2::2], parts[3::2], strict=False))
    if parts[0] != "imageView2" or len(parts) < 2 or "w" not in args or "h" not in args:
        raise ValueError(f"the bound is written for imageView2/<mode>/w/<W>/h/<H>, not {fop!r}")
    if set(args) - {"w", "h", "format"} or args.get("format", "jpg") not in PIL_FORMATS:
        raise ValueError(f"the bound knows w, h and format/<jpg|webp> only, not {fop!r}")
    return int(parts[1]), int(args["w"]), int(args["h"])


def _view2_format(fop: str) -> str:
    parts = fop.split("/")
    return dict(zip(parts[2::2], parts[3::2], strict=False)).get("format", "jpg")


def bound_transform(fop: str) -> Transform:
    """The pure-Pillow version of an imageView2 mode 1 or 2 fop (JPEG or WebP out)."""
    mode, box_w, box_h = _view2_args(fop)
    fmt = _view2_format(fop)
    if mode == 1:
        return functools.partial(bound_cover_crop, box_w, box_h, fmt=fmt)
    if mode == 2:
        return functools.partial(bound_fit, box_w, box_h, fmt=fmt)
    raise ValueError(f"the bound is written for imageView2 modes 1 and 2, not {fop!r}")


def chain_transform(fop: str) -> Transform:
    """Dora's :func:`run_chain` on ``fop`` (parsed once, as a worker's cache would)."""
    stages = parse_fops(fop, BUILTIN_CATALOG).stages
    limits = Limits()

    def run(src: bytes) -> bytes:
        body = run_chain(stages, src, limits).body
        assert body is not None
        return body

    return run


def transforms(fop: str) -> dict[str, Transform]:
    chosen: dict[str, Transform] = {"bound": bound_transform(fop)}
    mode, box_w, box_h = _view2_args(fop)
    if mode == 2 and _view2_format(fop) == "jpg":
        chosen["thumbnail"] = functools.partial(thumbnail_fit, box_w, box_h)
    chosen["run_chain"] = chain_transform(fop)
    return chosen


def rate(transform: Transform, src: bytes, seconds: float) -> float:
    """Images per second of ``transform`` in this process, after a warm-up."""
    for _ in range(3):
        transform(src)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        transform(src)
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def measure_bound(photo: bytes, fop: str, seconds: float = 2.0) -> dict[str, Any]:
    """The pure-Pillow rate of ``fop`` (imageView2 mode 1 or 2) on ``photo``, one core."""
    per_s = rate(bound_transform(fop), photo, seconds)
    return {
        "fop": fop,
        "images_per_s_per_core": round(per_s, 1),
        "ms_per_image": round(1000 / per_s, 3),
        "filter": FILTER.name,
        "quality": QUALITY,
    }


def rate_round_robin(fop: str, photos: list[bytes], seconds: float) -> tuple[float, float]:
    """(images/s, CPU share) of the bound of ``fop`` over ``photos`` in turn, one process.

    The CPU share (process CPU time ÷ wall time) shows whether anything else
    took this core during the measurement: 1.0 means it ran undisturbed.
    """
    transform = bound_transform(fop)
    for photo in photos[:3]:
        transform(photo)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    deadline = start + seconds
    while True:
        transform(photos[count % len(photos)])
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start), (time.process_time() - cpu_start) / (now - start)


def _rate_in_child(args: tuple[str, str, str, float]) -> float:
    input_name, fop, kind, seconds = args
    width, height, seed = INPUTS[input_name]
    return rate(transforms(fop)[kind], make_photo_jpeg(width, height, seed), seconds)


def psnr_images(first: Image.Image, second: Image.Image) -> float:
    """PSNR in dB of two images of the same size (99 when identical)."""
    if first.size != second.size:
        return 0.0
    histogram = ImageChops.difference(first.convert("RGB"), second.convert("RGB")).histogram()
    squared = sum(count * (index % 256) ** 2 for index, count in enumerate(histogram))
    mse = squared / (first.size[0] * first.size[1] * 3)
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def psnr(a: bytes, b: bytes) -> float:
    """PSNR of two encoded images (to show the outputs agree)."""
    return psnr_images(Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b)))


def filter_study(seconds: float) -> list[dict[str, Any]]:
    """Why BICUBIC on a draft ≥ 1× the target: speed and fidelity of the choices.

    Cover-crop 1920×1080 → 300×200 without encoding, against a reference made
    the slow way (full decode, LANCZOS from full size).
    """
    box_w, box_h = 300, 200
    src = make_photo_jpeg(1920, 1080, 1)
    full = Image.open(io.BytesIO(src))
    scale = max(box_w / full.size[0], box_h / full.size[1])
    scaled_w, scaled_h = round(full.size[0] * scale), round(full.size[1] * scale)
    left, top = (scaled_w - box_w) // 2, (scaled_h - box_h) // 2
    box = (left / scale, top / scale, (left + box_w) / scale, (top + box_h) / scale)
    reference = full.resize((box_w, box_h), Image.Resampling.LANCZOS, box=box)
    rows: list[dict[str, Any]] = []
    for resample in (Image.Resampling.BICUBIC, Image.Resampling.LANCZOS):
        for gap in (1, 2):

            def thumb(data: bytes, resample: Image.Resampling = resample, gap: int = gap) -> bytes:
                image = Image.open(io.BytesIO(data))
                stored_w = image.size[0]
                drafted = image.draft("RGB", (scaled_w * gap, scaled_h * gap))
                divisor = stored_w / drafted[1][2] if drafted else 1.0
                x0, y0, x1, y1 = (v / divisor for v in box)
                drafted_w, drafted_h = image.size
                scaled_box = (x0, y0, min(x1, drafted_w), min(y1, drafted_h))
                out = image.resize((box_w, box_h), resample, box=scaled_box, reducing_gap=2.0)
                return out.tobytes()

            per_s = rate(thumb, src, seconds)
            result = Image.frombytes("RGB", (box_w, box_h), thumb(src))
            rows.append(
                {
                    "filter": resample.name,
                    "draft_at_least": f"{gap}x target",
                    "img_per_s": round(per_s, 1),
                    "psnr_vs_full_lanczos_db": round(psnr_images(result, reference), 1),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--procs", type=int, default=0, help="also run N processes at once")
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--study", action="store_true", help="also compare filters and drafts")
    options = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    print(
        f"Pillow {PIL.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; img/s in one process (= per core)"
    )
    print(f"{'input':10} {'fop':26} {'impl':10} {'img/s':>8} {'ms/img':>8} {'vs bound':>9}")
    for input_name, (width, height, seed) in INPUTS.items():
        src = make_photo_jpeg(width, height, seed)
        for fop in FOPS:
            chosen = transforms(fop)
            bound = rate(chosen["bound"], src, options.seconds)
            reference = chosen["bound"](src)
            for kind, transform in chosen.items():
                per_s = bound if kind == "bound" else rate(transform, src, options.seconds)
                row: dict[str, Any] = {
                    "input": input_name,
                    "source_bytes": len(src),
                    "fop": fop,
                    "impl": kind,
                    "img_per_s": round(per_s, 1),
                    "ms_per_img": round(1000 / per_s, 3),
                    "ratio_to_bound": round(per_s / bound, 3),
                    "psnr_vs_bound_db": round(psnr(transform(src), reference), 1),
                }
                if options.procs > 0:
                    with ProcessPoolExecutor(options.procs) as pool:
                        rates = pool.map(
                            _rate_in_child,
                            [(input_name, fop, kind, options.seconds)] * options.procs,
                        )
                        row[f"img_per_s_{options.procs}_procs"] = round(sum(rates), 1)
                results.append(row)
                extra = (
                    f"  {row[f'img_per_s_{options.procs}_procs']:8.1f} with {options.procs} procs"
                    if options.procs > 0
                    else ""
                )
                print(
                    f"{input_name:10} {fop:26} {kind:10} {per_s:8.1f} {1000 / per_s:8.2f} "
                    f"{per_s / bound:8.0%}{extra}"
                )
    study: list[dict[str, Any]] = []
    if options.study:
        print("\nfilter study, cover-crop 1920x1080 -> 300x200, decode + resample only:")
        for study_row in filter_study(options.seconds):
            study.append(study_row)
            print(
                f"  {study_row['filter']:8} draft {study_row['draft_at_least']:13} "
                f"{study_row['img_per_s']:7.1f} img/s  {study_row['psnr_vs_full_lanczos_db']} dB"
            )
    if options.json is not None:
        document = {
            "benchmark": "pillow_bound",
            "pillow": PIL.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "seconds_per_measurement": options.seconds,
            "filter": FILTER.name,
            "quality": QUALITY,
            "results": results,
            "filter_study": study,
        }
        options.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {options.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
