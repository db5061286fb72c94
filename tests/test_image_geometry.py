"""imageView2 and EXIF-orientation geometry: properties of every mode, exact examples."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dora.builtin_ops.image.decode import transpose_for
from dora.builtin_ops.image.geometry import (
    ViewPlan,
    centre_crop,
    oriented_size,
    raw_box,
    round_side,
    view2_plan,
)

sides = st.integers(min_value=1, max_value=12000)
bounds = st.one_of(st.none(), st.integers(min_value=1, max_value=12000))


def _at_least_bounds(w: int | None, h: int | None) -> tuple[int, int]:
    bw = w if w is not None else h
    bh = h if h is not None else w
    assert bw is not None and bh is not None
    return bw, bh


def _assert_proportional(plan: ViewPlan, width: int, height: int) -> None:
    sw, sh = plan.scaled
    if min(sw, sh) == 1:
        return  # a side clamped to one pixel is not proportional
    # each side is rounded by at most half a pixel
    assert abs(sw / width - sh / height) <= 0.5 / width + 0.5 / height + 1e-12


def _assert_common(plan: ViewPlan, width: int, height: int) -> None:
    sw, sh = plan.scaled
    assert 1 <= sw <= width and 1 <= sh <= height  # never enlarges
    left, top, right, bottom = plan.crop
    assert 0 <= left < right <= sw and 0 <= top < bottom <= sh
    _assert_proportional(plan, width, height)


@settings(max_examples=400)
@given(mode=st.sampled_from([0, 1, 2, 3, 4, 5]), w=bounds, h=bounds, width=sides, height=sides)
def test_every_mode_never_enlarges_and_stays_proportional(
    mode: int, w: int | None, h: int | None, width: int, height: int
) -> None:
    plan = view2_plan(mode, w, h, width, height)
    _assert_common(plan, width, height)
    if w is None and h is None:
        assert plan.is_identity((width, height))


@settings(max_examples=400)
@given(w=bounds, h=bounds, width=sides, height=sides)
def test_mode2_fits_inside_and_reaches_a_bound(
    w: int | None, h: int | None, width: int, height: int
) -> None:
    plan = view2_plan(2, w, h, width, height)
    assert plan.crop == (0, 0, *plan.scaled)
    sw, sh = plan.scaled
    assert w is None or sw <= w
    assert h is None or sh <= h
    if plan.scaled != (width, height):  # scaled down: as large as allowed
        assert (w is not None and sw == w) or (h is not None and sh == h)


@settings(max_examples=400)
@given(w=bounds, h=bounds, width=sides, height=sides)
def test_mode0_bounds_long_and_short_edges(
    w: int | None, h: int | None, width: int, height: int
) -> None:
    plan = view2_plan(0, w, h, width, height)
    long_edge, short_edge = max(plan.scaled), min(plan.scaled)
    if width != height:
        assert w is None or long_edge <= w
        assert h is None or short_edge <= h
    if plan.scaled != (width, height):
        assert (w is not None and long_edge == w) or (h is not None and short_edge == h)


@settings(max_examples=400)
@given(w=bounds, h=bounds, width=sides, height=sides)
def test_mode3_covers_the_box_unless_the_source_is_smaller(
    w: int | None, h: int | None, width: int, height: int
) -> None:
    plan = view2_plan(3, w, h, width, height)
    if w is None and h is None:
        return
    bw, bh = _at_least_bounds(w, h)
    sw, sh = plan.scaled
    if plan.scaled == (width, height):
        assert bw >= width or bh >= height  # covering would enlarge: kept as it is
    else:
        assert sw >= bw and sh >= bh
        assert sw == bw or sh == bh  # the smallest such scale


@settings(max_examples=400)
@given(w=bounds, h=bounds, width=sides, height=sides)
def test_mode4_covers_long_and_short_edges(
    w: int | None, h: int | None, width: int, height: int
) -> None:
    plan = view2_plan(4, w, h, width, height)
    if (w is None and h is None) or plan.scaled == (width, height):
        return
    bw, bh = _at_least_bounds(w, h)
    sw, sh = plan.scaled
    long_edge, short_edge = (sw, sh) if width >= height else (sh, sw)
    assert long_edge >= bw and short_edge >= bh
    assert long_edge == bw or short_edge == bh


@settings(max_examples=400)
@given(w=bounds, h=bounds, width=sides, height=sides)
def test_mode1_crops_the_cover_to_the_box_centred(
    w: int | None, h: int | None, width: int, height: int
) -> None:
    plan = view2_plan(1, w, h, width, height)
    if w is None and h is None:
        return
    bw, bh = _at_least_bounds(w, h)
    cover = view2_plan(3, w, h, width, height)
    assert plan.scaled == cover.scaled  # mode 1 is mode 3, then a crop
    assert plan.size == (min(bw, plan.scaled[0]), min(bh, plan.scaled[1]))
    if plan.scaled != (width, height):
        assert plan.size == (bw, bh)  # scaled down: exactly the box
    left, top, _, _ = plan.crop
    assert left == (plan.scaled[0] - plan.size[0]) // 2
    assert top == (plan.scaled[1] - plan.size[1]) // 2


@settings(max_examples=400)
@given(w=bounds, h=bounds, width=sides, height=sides)
def test_mode5_crops_mode4_to_long_and_short_edges(
    w: int | None, h: int | None, width: int, height: int
) -> None:
    plan = view2_plan(5, w, h, width, height)
    if w is None and h is None:
        return
    assert plan.scaled == view2_plan(4, w, h, width, height).scaled
    bw, bh = _at_least_bounds(w, h)
    box = (bw, bh) if width >= height else (bh, bw)
    assert plan.size == (min(box[0], plan.scaled[0]), min(box[1], plan.scaled[1]))


@given(value=st.integers(min_value=1, max_value=9999), width=sides, height=sides)
def test_one_value_in_mode1_asks_for_a_square(value: int, width: int, height: int) -> None:
    for plan in (
        view2_plan(1, value, None, width, height),
        view2_plan(1, None, value, width, height),
    ):
        if min(width, height) >= value:
            assert plan.size == (value, value)


@pytest.mark.parametrize(
    ("mode", "w", "h", "source", "scaled", "size"),
    [
        (0, 300, 200, (1920, 1080), (300, 169), (300, 169)),
        (0, 300, 200, (1080, 1920), (169, 300), (169, 300)),
        (0, None, 200, (1920, 1080), (356, 200), (356, 200)),  # h bounds the short edge
        (1, 300, 200, (1920, 1080), (356, 200), (300, 200)),
        (1, 300, None, (1920, 1080), (533, 300), (300, 300)),
        (1, 300, 200, (400, 100), (400, 100), (300, 100)),  # never enlarges: crop what fits
        (1, 300, 200, (100, 80), (100, 80), (100, 80)),
        (2, 300, 200, (1920, 1080), (300, 169), (300, 169)),
        (2, 300, 200, (1080, 1920), (113, 200), (113, 200)),  # 112.5 rounds up
        (2, 3000, None, (1920, 1080), (1920, 1080), (1920, 1080)),
        (3, 300, 200, (1920, 1080), (356, 200), (356, 200)),
        (4, 300, 200, (1080, 1920), (200, 356), (200, 356)),
        (5, 300, 200, (1920, 1080), (356, 200), (300, 200)),
        (5, 300, 200, (1080, 1920), (200, 356), (200, 300)),
        (2, 100, None, (10000, 1), (100, 1), (100, 1)),  # never rounds a side to 0
    ],
)
def test_known_sizes(
    mode: int,
    w: int | None,
    h: int | None,
    source: tuple[int, int],
    scaled: tuple[int, int],
    size: tuple[int, int],
) -> None:
    plan = view2_plan(mode, w, h, *source)
    assert plan.scaled == scaled
    assert plan.size == size


def test_mode1_crop_is_centred() -> None:
    assert view2_plan(1, 300, 200, 1920, 1080).crop == (28, 0, 328, 200)
    assert centre_crop((400, 100), (300, 200)) == (50, 0, 350, 100)


def test_rounding_is_half_up_and_never_zero() -> None:
    assert [round_side(x) for x in (0.2, 0.5, 1.5, 2.5, 2.49)] == [1, 1, 2, 3, 2]


def test_invalid_input_is_refused() -> None:
    with pytest.raises(ValueError):
        view2_plan(6, 10, 10, 100, 100)
    with pytest.raises(ValueError):
        view2_plan(1, 0, 10, 100, 100)
    with pytest.raises(ValueError):
        view2_plan(1, 10, 10, 0, 100)


@settings(max_examples=200, deadline=None)
@given(
    orientation=st.integers(min_value=1, max_value=8),
    width=st.integers(min_value=1, max_value=9),
    height=st.integers(min_value=1, max_value=9),
    data=st.data(),
)
def test_raw_box_matches_pillow_transposes(
    orientation: int, width: int, height: int, data: st.DataObject
) -> None:
    """Cropping the displayed image equals orienting the crop of the stored one."""
    rng = random.Random(width * 100 + height * 10 + orientation)
    stored = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    transpose = transpose_for(orientation)
    displayed = stored if transpose is None else stored.transpose(transpose)
    assert displayed.size == oriented_size(stored.size, orientation)
    ow, oh = displayed.size
    left = data.draw(st.integers(0, ow - 1))
    top = data.draw(st.integers(0, oh - 1))
    right = data.draw(st.integers(left + 1, ow))
    bottom = data.draw(st.integers(top + 1, oh))
    box = (left, top, right, bottom)
    piece = stored.crop(raw_box(box, displayed.size, orientation))
    if transpose is not None:
        piece = piece.transpose(transpose)
    assert piece.tobytes() == displayed.crop(box).tobytes()
