"""Colour fidelity: CMYK and ICC-profiled sources come out as sRGB.

The golden colours are computed here from the colour science alone (the ink
model of tests/data/ink.icc, the published Display P3 and sRGB primaries),
not by asking LittleCMS, so a wrong conversion, a skipped profile or an
inverted CMYK shows as a colour far from the expected one.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from data import make_data
from PIL import Image, ImageCms

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image import colour
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.fop import parse_fops
from dora.ops import Output

DATA = Path(__file__).parent / "data"
LIMITS = Limits()
PATCHES = dict(make_data.CMYK_PATCHES)
PATCH_X = {name: 16 * index + 8 for index, (name, _) in enumerate(make_data.CMYK_PATCHES)}


def run(fop: str, src: bytes) -> Output:
    return run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, LIMITS)


def opened(output: Output) -> Image.Image:
    assert output.body is not None
    image = Image.open(io.BytesIO(output.body))
    image.load()
    return image


def rgb_at(image: Image.Image, x: int, y: int = 8) -> tuple[int, int, int]:
    pixel = image.convert("RGB").getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel[0], pixel[1], pixel[2]


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(actual, expected, strict=True))


def ink_model_srgb(cmyk: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """What the ink profile defines a CMYK value (0-255 ink) to look like, in sRGB."""
    linear = make_data.ink_linear_rgb([value / 255 for value in cmyk])
    return (
        make_data.srgb_encode(linear[0]),
        make_data.srgb_encode(linear[1]),
        make_data.srgb_encode(linear[2]),
    )


def naive_srgb(cmyk: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """The usual conversion of CMYK without a profile: ``(1 - C)(1 - K)`` per channel."""
    c, m, y, k = cmyk
    return tuple(round((255 - ink) * (255 - k) / 255) for ink in (c, m, y))  # type: ignore[return-value]


def profile_description(image: Image.Image) -> str:
    icc = image.info.get("icc_profile")
    assert icc, "the result carries no ICC profile"
    return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_a_cmyk_jpeg_with_a_profile_converts_to_its_golden_srgb_colours(fmt: str) -> None:
    src = (DATA / "cmyk-icc.jpg").read_bytes()
    source = Image.open(io.BytesIO(src))
    assert source.mode == "CMYK" and source.info["icc_profile"][16:20] == b"CMYK"
    image = opened(run(f"imageView2/2/format/{fmt}/q/100!", src))
    assert image.mode == "RGB"
    for name, cmyk in PATCHES.items():
        expected = ink_model_srgb(cmyk)
        assert close(rgb_at(image, PATCH_X[name]), expected, 4), (name, expected)
    # the model is far from the naive formula: cyan is not (0, 255, 255) here
    assert not close(rgb_at(image, PATCH_X["C"]), naive_srgb(PATCHES["C"]), 40)
    if fmt != "webp":
        assert "srgb" in profile_description(image).lower()


def test_the_golden_cyan_is_what_print_cyan_looks_like() -> None:
    cyan = ink_model_srgb(PATCHES["C"])
    assert close(cyan, (89, 188, 237), 2)  # a light, greenish blue, as print cyan is


def test_a_cmyk_jpeg_without_a_profile_uses_the_naive_formula() -> None:
    image = opened(run("imageView2/2/format/png", (DATA / "cmyk-adobe.jpg").read_bytes()))
    assert image.mode == "RGB" and "icc_profile" not in image.info
    for name, cmyk in PATCHES.items():
        assert close(rgb_at(image, PATCH_X[name]), naive_srgb(cmyk), 6), name
    assert close(rgb_at(image, PATCH_X["C"]), (0, 255, 255), 6)
    assert close(rgb_at(image, PATCH_X["K"]), (0, 0, 0), 6)


def test_a_plain_cmyk_jpeg_without_the_adobe_marker_is_not_inverted() -> None:
    plain = (DATA / "cmyk-plain.jpg").read_bytes()
    assert b"Adobe" not in plain and Image.open(io.BytesIO(plain)).mode == "CMYK"
    adobe = opened(run("imageView2/2/format/png", (DATA / "cmyk-adobe.jpg").read_bytes()))
    image = opened(run("imageView2/2/format/png", plain))
    for name in PATCHES:
        x = PATCH_X[name]
        assert close(rgb_at(image, x), rgb_at(adobe, x), 6), name
    assert close(rgb_at(image, PATCH_X["paper"]), (255, 255, 255), 6)  # not black


def test_cmyk_converts_after_the_dct_scaled_decode_and_in_a_resize() -> None:
    strip = make_data.cmyk_strip().resize((960, 160), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    strip.save(buf, "JPEG", quality=95, icc_profile=(DATA / "ink.icc").read_bytes())
    image = opened(run("imageView2/2/w/96/format/png", buf.getvalue()))  # drafts at 1/8
    assert image.size == (96, 16)
    for name, cmyk in PATCHES.items():
        assert close(rgb_at(image, PATCH_X[name]), ink_model_srgb(cmyk), 5), name


def p3_to_srgb(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Display P3 to sRGB by the published primaries (both D65: no adaptation), clipped."""
    to_xyz = make_data.rgb_to_xyz(make_data.P3_PRIMARIES, make_data.D65_XY)
    from_xyz = make_data._inverse(make_data.rgb_to_xyz(make_data.SRGB_PRIMARIES, make_data.D65_XY))
    linear = [make_data.srgb_decode(value / 255) for value in rgb]
    xyz = [sum(to_xyz[row][col] * linear[col] for col in range(3)) for row in range(3)]
    out = [sum(from_xyz[row][col] * xyz[col] for col in range(3)) for row in range(3)]
    return (
        make_data.srgb_encode(out[0]),
        make_data.srgb_encode(out[1]),
        make_data.srgb_encode(out[2]),
    )


def test_a_display_p3_photo_becomes_srgb() -> None:
    src = (DATA / "p3.jpg").read_bytes()
    image = opened(run("imageView2/2/format/png", src))
    for x, stored in ((8, (200, 60, 30)), (24, (40, 160, 90))):
        expected = p3_to_srgb(stored)
        assert close(rgb_at(image, x), expected, 4), (stored, expected)
        assert not close(expected, stored, 8)  # the conversion is visible
    assert "srgb" in profile_description(image).lower()


def test_a_profile_with_swapped_primaries_swaps_the_colours() -> None:
    image = opened(run("imageView2/2/format/jpg/q/100!", (DATA / "swapped.png").read_bytes()))
    assert close(rgb_at(image, 8), (60, 200, 30), 4)


def test_an_srgb_profile_is_kept_as_it_came_and_the_pixels_untouched() -> None:
    srgb = colour.srgb_profile()
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (200, 60, 30)).save(buf, "PNG", icc_profile=srgb)
    image = opened(run("imageView2/2/w/16/format/png", buf.getvalue()))
    assert image.info["icc_profile"] == srgb and rgb_at(image, 4, 4) == (200, 60, 30)


def test_a_broken_profile_is_ignored_not_fatal() -> None:
    broken = b"\x00\x00\x01\x00lcms" + b"\x02\x10\x00\x00mntrRGB XYZ " + b"garbage" * 30
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (10, 120, 200)).save(buf, "JPEG", quality=95, icc_profile=broken)
    for fmt in ("jpg", "png"):
        image = opened(run(f"imageView2/2/w/16/format/{fmt}", buf.getvalue()))
        assert "icc_profile" not in image.info
        assert close(rgb_at(image, 4, 4), (10, 120, 200), 6)


def test_a_grey_image_with_a_cmyk_profile_keeps_its_pixels() -> None:
    buf = io.BytesIO()
    grey = Image.new("L", (32, 16), 90)
    grey.save(buf, "JPEG", quality=95, icc_profile=(DATA / "ink.icc").read_bytes())
    image = opened(run("imageView2/2/w/16/format/png", buf.getvalue()))
    assert image.mode == "L" and "icc_profile" not in image.info  # a mismatched profile: dropped
    pixel = image.getpixel((4, 4))
    assert isinstance(pixel, int) and abs(pixel - 90) <= 2


def test_alpha_survives_a_profile_conversion() -> None:
    image = Image.new("RGBA", (32, 16), (200, 60, 30, 255))
    image.paste((0, 0, 0, 0), (0, 0, 16, 16))
    buf = io.BytesIO()
    image.save(buf, "PNG", icc_profile=(DATA / "display-p3.icc").read_bytes())
    result = opened(run("imageView2/2/format/png", buf.getvalue()))
    assert result.mode == "RGBA"
    left, right = result.getpixel((4, 4)), result.getpixel((24, 4))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[3] == 0 and right[3] == 255
    assert close(right[:3], p3_to_srgb((200, 60, 30)), 4)


def test_an_animated_webp_with_a_profile_converts_every_frame() -> None:
    frames = [Image.new("RGB", (16, 16), (200, 60, 30)), Image.new("RGB", (16, 16), (40, 160, 90))]
    buf = io.BytesIO()
    frames[0].save(
        buf,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=100,
        lossless=True,
        icc_profile=(DATA / "display-p3.icc").read_bytes(),
    )
    result = opened(run("imageView2/2/w/8/format/gif", buf.getvalue()))
    assert getattr(result, "n_frames", 1) == 2
    for index, stored in enumerate(((200, 60, 30), (40, 160, 90))):
        result.seek(index)
        assert close(rgb_at(result, 4, 4), p3_to_srgb(stored), 10), index  # GIF's palette
