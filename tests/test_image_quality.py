"""The JPEG quality estimate and the effective-quality rule of imageView2 (API.md):
without ``!``, quality = min(q, source quality × sqrt(source area / target area), 90)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, JpegImagePlugin

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image.quality import (
    STANDARD_CHROMINANCE,
    STANDARD_LUMINANCE,
    effective_quality,
    estimate_quality,
    scaled_table,
)
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.fop import parse_fops

LIMITS = Limits()


def jpeg(image: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **options)
    return buf.getvalue()


def quality_of(data: bytes) -> int | None:
    image = Image.open(io.BytesIO(data))
    assert isinstance(image, JpegImagePlugin.JpegImageFile)
    return estimate_quality(image.quantization)


def run(fop: str, src: bytes) -> bytes:
    body = run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, LIMITS).body
    assert body is not None
    return body


@pytest.fixture(scope="module")
def texture() -> Image.Image:
    fractal = Image.effect_mandelbrot((320, 240), (-2.0, -1.2, 1.0, 1.2), 64)
    return Image.merge(
        "RGB", (fractal, fractal.rotate(180), fractal.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )


def test_the_estimate_gives_back_every_libjpeg_quality(texture: Image.Image) -> None:
    small, grey = texture.resize((32, 24)), texture.resize((32, 24)).convert("L")
    for quality in range(1, 101):
        assert quality_of(jpeg(small, quality=quality)) == quality
        assert quality_of(jpeg(grey, quality=quality)) == quality  # one table only


def test_custom_tables_get_the_nearest_equivalent_quality(texture: Image.Image) -> None:
    standard = [scaled_table(STANDARD_LUMINANCE, 40), scaled_table(STANDARD_CHROMINANCE, 40)]
    nudged = [[value + 2 for value in table] for table in standard]
    finer = [[max(1, value // 4) for value in table] for table in standard]
    assert quality_of(jpeg(texture, qtables=standard)) == 40
    q_nudged = quality_of(jpeg(texture, qtables=nudged))
    q_finer = quality_of(jpeg(texture, qtables=finer))
    assert q_nudged is not None and q_finer is not None
    assert 34 <= q_nudged < 40 and q_finer > 75
    assert estimate_quality({}) is None


@pytest.mark.parametrize(
    ("requested", "forced", "source_q", "source", "target", "expected"),
    [
        (75, False, 60, (640, 480), (640, 480), 60),  # same size: never above the source
        (75, False, 60, (640, 480), (320, 240), 75),  # 60 × 2 = 120 → q
        (95, False, 60, (640, 480), (320, 240), 90),  # capped at 90 without "!"
        (95, True, 60, (640, 480), (640, 480), 95),  # "!" forces
        (75, False, 30, (640, 480), (320, 240), 60),  # 30 × sqrt(4)
        (75, False, 30, (640, 480), (640, 240), 42),  # 30 × sqrt(2) = 42.4
        (75, False, 50, (100, 100), (200, 200), 25),  # enlarged: lower
        (95, False, None, (640, 480), (640, 480), 95),  # not a JPEG source: q as given
        (75, False, 1, (100, 100), (10000, 10000), 1),  # never below 1
    ],
)
def test_the_effective_quality_rule(
    requested: int,
    forced: bool,
    source_q: int | None,
    source: tuple[int, int],
    target: tuple[int, int],
    expected: int,
) -> None:
    assert effective_quality(requested, forced, source_q, source, target) == expected


@given(
    requested=st.integers(1, 100),
    source_q=st.integers(1, 100),
    source=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
    target=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
)
def test_the_rule_never_exceeds_q_or_90_and_forced_is_exact(
    requested: int, source_q: int, source: tuple[int, int], target: tuple[int, int]
) -> None:
    quality = effective_quality(requested, False, source_q, source, target)
    assert 1 <= quality <= min(requested, 90)
    if target[0] * target[1] >= source[0] * source[1]:
        assert quality <= max(1, source_q)
    assert effective_quality(requested, True, source_q, source, target) == requested


@pytest.mark.parametrize(
    ("source_q", "fop", "expected"),
    [
        (60, "imageView2/2/w/320", 60),  # nothing to resize: the source's quality
        (60, "imageView2/2/w/160", 75),  # 60 × 2 → the default 75
        (60, "imageView2/2/w/160/q/95", 90),
        (60, "imageView2/2/w/320/q/95!", 95),
        (30, "imageView2/2/w/160", 60),
        (30, "imageView2/2/w/80/q/50", 50),
        (90, "imageView2/2/w/320/q/85", 85),
    ],
)
def test_imageview2_writes_at_the_effective_quality(
    texture: Image.Image, source_q: int, fop: str, expected: int
) -> None:
    src = jpeg(texture, quality=source_q)
    assert quality_of(run(fop, src)) == expected


def test_a_png_source_takes_q_as_given(texture: Image.Image) -> None:
    buf = io.BytesIO()
    texture.save(buf, "PNG")
    assert quality_of(run("imageView2/2/w/320/format/jpg/q/95", buf.getvalue())) == 95
    assert quality_of(run("imageView2/2/w/320/format/jpg", buf.getvalue())) == 75


def test_the_rule_decides_the_webp_quality_too(texture: Image.Image) -> None:
    src = jpeg(texture, quality=20)
    limited = run("imageView2/2/w/320/format/webp/q/90", src)  # min(90, 20, 90) = 20
    forced = run("imageView2/2/w/320/format/webp/q/90!", src)
    assert len(limited) < len(forced) * 0.7
