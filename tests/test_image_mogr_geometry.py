"""imageMogr2's pure geometry: the thumbnail and crop grammars, gravity, fused runs, plans."""

from __future__ import annotations

import contextlib
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.gravity import GRAVITIES
from dora.builtin_ops.image.mogr import Effect, Resample, plan
from dora.builtin_ops.image.mogr_geometry import (
    Crop,
    GeometryError,
    Region,
    Thumbnail,
    crop_box,
    parse_crop,
    parse_thumbnail,
    raw_region,
    rotated_size,
    rotation,
    thumbnail_size,
)
from dora.config import Limits
from dora.errors import InvalidArgument
from dora.fop import parse_stage

LIMITS = Limits()
sides = st.integers(1, 30000)
sizes = st.tuples(sides, sides).filter(lambda s: s[0] * s[1] <= LIMITS.max_source_pixels)
bounds = st.integers(1, 30000)


# --- grammar -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!50p", Thumbnail("scale", 50, 50)),
        ("50%", Thumbnail("scale", 50, 50)),
        ("!150px", Thumbnail("scale", 150, None)),
        ("!x25p", Thumbnail("scale", None, 25)),
        ("x25%", Thumbnail("scale", None, 25)),
        ("300x", Thumbnail("fit", 300, None)),
        ("x200", Thumbnail("fit", None, 200)),
        ("300x200", Thumbnail("fit", 300, 200)),
        ("!300x200r", Thumbnail("cover", 300, 200)),
        ("300x200^", Thumbnail("cover", 300, 200)),
        ("300x200!", Thumbnail("exact", 300, 200)),
        ("300x200>", Thumbnail("fit", 300, 200, "shrink")),
        ("300x200<", Thumbnail("fit", 300, 200, "enlarge")),
        ("300x>", Thumbnail("fit", 300, None, "shrink")),
        ("90000@", Thumbnail("area", area=90000)),
    ],
)
def test_thumbnail_forms_parse(text: str, expected: Thumbnail) -> None:
    assert parse_thumbnail(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "abc",
        "!300x200",
        "300x200r",
        "50p",
        "!0p",
        "!1000p",
        "0x10",
        "10x0",
        "300x200!!",
        "30001x",
        "!50pp",
        "0@",
        "-5x",
        "300 x 200",
        "300x200>>",
        "1e3x",
    ],
)
def test_bad_thumbnails_are_refused(text: str) -> None:
    with pytest.raises(GeometryError):
        parse_thumbnail(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300x", Crop(300, None)),
        ("x200", Crop(None, 200)),
        ("300x200", Crop(300, 200)),
        ("!300x200", Crop(300, 200)),
        ("!300x200a10a20", Crop(300, 200, 10, 20)),
        ("!300x200-10a20", Crop(300, 200, -10, 20)),
        ("!300x200a10-20", Crop(300, 200, 10, -20)),
        ("300x200+10+20", Crop(300, 200, 10, 20)),
        ("300x200-10-20", Crop(300, 200, -10, -20)),
        ("!x200a0a5", Crop(None, 200, 0, 5)),
    ],
)
def test_crop_forms_parse(text: str, expected: Crop) -> None:
    assert parse_crop(text) == expected


@pytest.mark.parametrize(
    "text", ["", "x", "300", "300x200a10a20", "!300x200a10", "0x10", "!300x200b1b2", "a1a2"]
)
def test_bad_crops_are_refused(text: str) -> None:
    with pytest.raises(GeometryError):
        parse_crop(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789x!pra@<>^%+-", max_size=12))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    for parse in (parse_thumbnail, parse_crop):
        with contextlib.suppress(GeometryError):
            parse(text)


# --- thumbnail sizes ---------------------------------------------------------------------------


def _proportional(size: tuple[int, int], result: tuple[int, int]) -> bool:
    """The aspect ratio kept, up to the rounding of one side (half a pixel each way)."""
    (w, h), (rw, rh) = size, result
    return abs(rw * h - rh * w) <= (w + h) / 2 + max(w, h)


@settings(max_examples=400, deadline=None)
@given(sizes, bounds, bounds, st.sampled_from(["", "shrink", "enlarge"]))
def test_fit_stays_inside_and_touches_a_bound(size: Any, w: int, h: int, only: Any) -> None:
    result = thumbnail_size(Thumbnail("fit", w, h, only), size)
    assert min(result) >= 1
    fits = Fraction(min(Fraction(w, size[0]), Fraction(h, size[1])))
    if (only == "shrink" and fits >= 1) or (only == "enlarge" and fits <= 1):
        assert result == size
        return
    assert result[0] <= w and result[1] <= h
    assert result[0] == w or result[1] == h or min(result) == 1
    assert _proportional(size, result)


@settings(max_examples=300, deadline=None)
@given(sizes, bounds)
def test_one_side_sets_that_side(size: Any, bound: int) -> None:
    width_first = thumbnail_size(parse_thumbnail(f"{bound}x"), size)
    height_first = thumbnail_size(parse_thumbnail(f"x{bound}"), size)
    assert width_first[0] == bound and _proportional(size, width_first)
    assert height_first[1] == bound and _proportional(size, height_first)
    assert min(width_first) >= 1 and min(height_first) >= 1


@settings(max_examples=300, deadline=None)
@given(sizes, bounds, bounds)
def test_cover_reaches_both_bounds(size: Any, w: int, h: int) -> None:
    result = thumbnail_size(parse_thumbnail(f"!{w}x{h}r"), size)
    assert result[0] >= w and result[1] >= h
    assert result[0] == w or result[1] == h
    assert _proportional(size, result)


@settings(max_examples=200, deadline=None)
@given(sizes, bounds, bounds)
def test_exact_ignores_the_aspect(size: Any, w: int, h: int) -> None:
    assert thumbnail_size(parse_thumbnail(f"{w}x{h}!"), size) == (w, h)


@settings(max_examples=300, deadline=None)
@given(sizes, st.integers(1, 999))
def test_percentages(size: Any, percent: int) -> None:
    def scaled(side: int) -> int:
        return max(1, math.floor(side * percent / 100 + 0.5))

    w, h = size
    assert thumbnail_size(parse_thumbnail(f"!{percent}p"), size) == (scaled(w), scaled(h))
    assert thumbnail_size(parse_thumbnail(f"!{percent}px"), size) == (scaled(w), h)
    assert thumbnail_size(parse_thumbnail(f"!x{percent}p"), size) == (w, scaled(h))


@settings(max_examples=400, deadline=None)
@given(sizes, st.integers(1, 150_000_000))
def test_area_is_at_most_the_area_and_nearly_fills_it(size: Any, area: int) -> None:
    result = thumbnail_size(parse_thumbnail(f"{area}@"), size)
    w, h = size
    if w * h <= area:
        assert result == size
        return
    assert min(result) >= 1
    assert result[0] * result[1] <= area
    if min(result) > 1 and result[0] < area:
        assert (result[0] + 1) * (result[1] + 1) > area
        assert _proportional(size, result)


# --- crop and gravity ---------------------------------------------------------------------------


def _anchor(gravity: str, w: int, h: int, bw: int, bh: int) -> tuple[int, int]:
    """Where an unmoved box of (bw, bh) starts in a (w, h) image, gravity by gravity."""
    column = {"West": 0, "": w // 2 - bw // 2, "East": w - bw}
    row = {"North": 0, "": h // 2 - bh // 2, "South": h - bh}
    vertical = next((part for part in ("North", "South") if gravity.startswith(part)), "")
    horizontal = next((part for part in ("West", "East") if gravity.endswith(part)), "")
    return column[horizontal], row[vertical]


@settings(max_examples=500, deadline=None)
@given(
    sizes,
    st.one_of(st.none(), bounds),
    st.one_of(st.none(), bounds),
    st.integers(-2000, 2000),
    st.integers(-2000, 2000),
    st.sampled_from(GRAVITIES),
)
def test_crop_box_follows_gravity_and_clips(
    size: Any, bw: int | None, bh: int | None, dx: int, dy: int, gravity: str
) -> None:
    if bw is None and bh is None:
        bw = 1
    w, h = size
    box_w, box_h = bw or w, bh or h
    x, y = _anchor(gravity, w, h, box_w, box_h)
    x += -dx if gravity.endswith("East") else dx  # inwards from the east and south edges
    y += -dy if gravity.startswith("South") else dy
    expected = (max(0, x), max(0, y), min(w, x + box_w), min(h, y + box_h))
    crop = Crop(bw, bh, dx, dy)
    if expected[2] <= expected[0] or expected[3] <= expected[1]:
        with pytest.raises(GeometryError):
            crop_box(crop, gravity, size)
        return
    box = crop_box(crop, gravity, size)
    assert box == expected
    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h


@settings(max_examples=200, deadline=None)
@given(sizes, bounds, bounds, st.integers(0, 500), st.integers(0, 500))
def test_minus_offsets_shrink_the_box_at_the_anchor(
    size: Any, bw: int, bh: int, dx: int, dy: int
) -> None:
    w, h = size
    if dx >= bw or dy >= bh:
        return
    left, top, right, bottom = crop_box(parse_crop(f"!{bw}x{bh}-{dx}-{dy}"), "NorthWest", size)
    assert (left, top) == (0, 0)
    assert (right, bottom) == (min(w, bw - dx), min(h, bh - dy))
    left, top, right, bottom = crop_box(parse_crop(f"!{bw}x{bh}-{dx}-{dy}"), "SouthEast", size)
    assert (right, bottom) == (w, h)
    assert (right - left, bottom - top) == (min(w, bw - dx), min(h, bh - dy))


# --- fused runs ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(sizes, st.integers(1, 400), st.integers(1, 400), st.sampled_from(GRAVITIES))
def test_thumbnail_then_crop_maps_back_to_the_source(
    size: Any, w: int, h: int, gravity: str
) -> None:
    thumb = Thumbnail("cover", w, h)
    region = Region.whole(size).thumbnail(thumb).crop(Crop(w, h), gravity)
    scaled = thumbnail_size(thumb, size)
    left, top, right, bottom = crop_box(Crop(w, h), gravity, scaled)
    sx, sy = Fraction(size[0], scaled[0]), Fraction(size[1], scaled[1])
    assert region.size == (w, h)
    assert region.box == (left * sx, top * sy, right * sx, bottom * sy)
    assert 0 <= region.box[0] < region.box[2] <= size[0]
    assert 0 <= region.box[1] < region.box[3] <= size[1]


@settings(max_examples=200, deadline=None)
@given(sizes, st.integers(1, 8))
def test_raw_region_of_the_whole_is_the_whole(size: Any, orientation: int) -> None:
    upright = (size[1], size[0]) if orientation >= 5 else size
    whole = Region.whole(upright).box
    assert raw_region(whole, upright, orientation) == Region.whole(size).box


def test_raw_region_maps_a_corner_box_by_orientation() -> None:
    # stored 300x200, orientation 6 (displayed turned 90° clockwise: 200x300); the
    # displayed top-left 10x20 box is the stored bottom-left 20x10 box
    box = (Fraction(0), Fraction(0), Fraction(10), Fraction(20))
    assert raw_region(box, (200, 300), 6) == tuple(map(Fraction, (0, 190, 20, 200)))
    assert raw_region(box, (200, 300), 8) == tuple(map(Fraction, (280, 0, 300, 10)))


# --- rotation ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(sizes, st.integers(1, 360))
def test_rotated_canvas_holds_the_image(size: Any, degrees: int) -> None:
    w, h = size
    out = rotated_size(size, degrees)
    radians = math.radians(degrees)
    exact_w = abs(w * math.cos(radians)) + abs(h * math.sin(radians))
    exact_h = abs(w * math.sin(radians)) + abs(h * math.cos(radians))
    assert exact_w - 1e-6 <= out[0] < exact_w + 1
    assert exact_h - 1e-6 <= out[1] < exact_h + 1
    assert rotated_size(size, degrees + 180) == out


def test_rotation_maps_the_centre_to_the_centre() -> None:
    size, (a, b, c, d, e, f) = rotation((300, 200), 30)
    x, y = size[0] / 2, size[1] / 2
    assert (a * x + b * y + c, d * x + e * y + f) == pytest.approx((150, 100))


# --- plans: sizes and limits -------------------------------------------------------------

item = st.one_of(
    st.builds(lambda g: ("gravity", g), st.sampled_from(GRAVITIES)),
    st.builds(
        lambda t: ("thumbnail", t),
        st.one_of(
            st.builds(lambda p: f"!{p}p", st.integers(1, 999)),
            st.builds(lambda w: f"{w}x", bounds),
            st.builds(lambda w, h: f"{w}x{h}", bounds, bounds),
            st.builds(lambda w, h: f"!{w}x{h}r", bounds, bounds),
            st.builds(lambda w, h: f"{w}x{h}!", bounds, bounds),
            st.builds(lambda a: f"{a}@", st.integers(1, 150_000_000)),
        ),
    ),
    st.builds(
        lambda w, h, dx, dy: ("crop", f"!{w}x{h}a{dx}a{dy}"),
        bounds,
        bounds,
        st.integers(0, 3000),
        st.integers(0, 3000),
    ),
    st.builds(lambda d: ("rotate", str(d)), st.integers(1, 360)),
    st.just(("auto-orient", None)),
    st.just(("blur", "3x2")),
)


@settings(max_examples=400, deadline=None)
@given(sizes, st.integers(1, 8), st.lists(item, max_size=6))
def test_a_plan_is_a_400_or_stays_within_the_limits(
    size: Any, orientation: int, items: list[tuple[str, str | None]]
) -> None:
    text = "imageMogr2/" + "/".join(
        name if value is None else f"{name}/{value}" for name, value in items
    )
    stage = parse_stage(text.rstrip("/"), BUILTIN_CATALOG)
    try:
        steps = plan(stage.items, size, orientation, LIMITS)
    except InvalidArgument as exc:
        assert exc.status == 400 and exc.op == "imageMogr2"
        assert exc.arg in ("thumbnail", "crop", "rotate")
        return
    current = size
    for step in steps:
        if isinstance(step, Resample):
            current = step.region.size
            assert min(current) >= 1
            assert max(current) <= LIMITS.max_source_side
        else:
            assert isinstance(step, Effect)


def test_a_result_past_the_output_limits_names_the_argument() -> None:
    stage = parse_stage("imageMogr2/thumbnail/10000x", BUILTIN_CATALOG)
    with pytest.raises(InvalidArgument) as caught:
        plan(stage.items, (400, 300), 1, LIMITS)
    assert caught.value.arg == "thumbnail" and "10000x7500" in caught.value.message
    stage = parse_stage("imageMogr2/rotate/45", BUILTIN_CATALOG)
    with pytest.raises(InvalidArgument) as caught:
        plan(stage.items, (9000, 9000), 1, LIMITS)
    assert caught.value.arg == "rotate"
    stage = parse_stage("imageMogr2/crop/!100x100a500a0", BUILTIN_CATALOG)
    with pytest.raises(InvalidArgument) as caught:
        plan(stage.items, (400, 300), 1, LIMITS)
    assert caught.value.arg == "crop" and "outside" in caught.value.message


def test_geometry_runs_fuse_into_one_step() -> None:
    stage = parse_stage(
        "imageMogr2/auto-orient/thumbnail/!50p/gravity/Center/crop/100x100/thumbnail/50x",
        BUILTIN_CATALOG,
    )
    steps = plan(stage.items, (800, 600), 6, LIMITS)
    assert len(steps) == 1 and isinstance(steps[0], Resample)
    assert steps[0].orientation == 6 and steps[0].region.size == (50, 50)
    stage = parse_stage("imageMogr2/thumbnail/400x/rotate/30/crop/100x100", BUILTIN_CATALOG)
    kinds = [type(step).__name__ for step in plan(stage.items, (800, 600), 1, LIMITS)]
    assert kinds == ["Resample", "Effect", "Resample"]
