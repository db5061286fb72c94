"""imageMogr2's effects and output settings on real Pillow: rotate, blur, sharpen,
background, format, quality, interlace, strip and size-limit."""

from __future__ import annotations

import io
import math

import pytest
from images import make_photo_jpeg
from imagesim import gradient_energy, psnr, ssim
from PIL import Image, ImageCms, ImageFilter

from dora.b64 import urlsafe_b64encode
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image.mogr_effects import effective_sigma
from dora.builtin_ops.image.sizelimit import smallest_fitting
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.fop import parse_fops
from dora.ops import Output

LIMITS = Limits()
RED, BLUE, GREEN = (220, 30, 40), (30, 40, 220), (0, 255, 0)


def run(fop: str, src: bytes) -> Output:
    return run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, LIMITS)


def opened(output: Output) -> Image.Image:
    assert output.body is not None
    image = Image.open(io.BytesIO(output.body))
    image.load()
    return image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def colour(text: str) -> str:
    return urlsafe_b64encode(text)


@pytest.fixture(scope="module")
def marked() -> Image.Image:
    """300×200 blue with a red 40×40 marker in the top-left corner."""
    image = Image.new("RGB", (300, 200), BLUE)
    image.paste(RED, (0, 0, 40, 40))
    return image


@pytest.fixture(scope="module")
def marked_png(marked: Image.Image) -> bytes:
    return encoded(marked, "PNG")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return make_photo_jpeg(480, 360, 11)


def near(pixel: object, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# --- rotate --------------------------------------------------------------------------------


def test_rotate_90_turns_clockwise(marked: Image.Image, marked_png: bytes) -> None:
    out = opened(run("imageMogr2/rotate/90", marked_png))
    assert out.size == (200, 300)
    assert psnr(out, marked.transpose(Image.Transpose.ROTATE_270)) == 99.0
    assert near(out.convert("RGB").getpixel((180, 20)), RED)  # top-left went top-right
    assert opened(run("imageMogr2/rotate/360", marked_png)).size == (300, 200)


@pytest.mark.parametrize("degrees", [30, 45])
def test_rotate_grows_the_canvas_and_fills_white_for_jpeg(
    marked: Image.Image, marked_png: bytes, degrees: int
) -> None:
    out = opened(run(f"imageMogr2/rotate/{degrees}/format/jpg", marked_png))
    radians = math.radians(degrees)
    expected = (
        math.ceil(300 * math.cos(radians) + 200 * math.sin(radians)),
        math.ceil(300 * math.sin(radians) + 200 * math.cos(radians)),
    )
    assert out.mode == "RGB" and out.size == expected
    assert near(out.getpixel((1, 1)), (255, 255, 255), 4)
    assert near(out.getpixel((out.width - 2, out.height - 2)), (255, 255, 255), 4)
    assert near(out.getpixel((out.width // 2, out.height // 2)), BLUE)
    # clockwise, as Pillow's rotate by a negative angle: compare the middle of both
    reference = marked.rotate(-degrees, Image.Resampling.BICUBIC, expand=True, fillcolor="white")
    box = (out.width // 2 - 100, out.height // 2 - 90, out.width // 2 + 100, out.height // 2 + 90)
    ref_box = (
        reference.width // 2 - 100,
        reference.height // 2 - 90,
        reference.width // 2 + 100,
        reference.height // 2 + 90,
    )
    assert psnr(out.crop(box), reference.crop(ref_box)) >= 25


def test_rotate_leaves_transparent_corners_in_formats_with_alpha(marked_png: bytes) -> None:
    out = opened(run("imageMogr2/rotate/30", marked_png))
    assert out.format == "PNG" and out.mode == "RGBA"
    assert out.getpixel((1, 1))[3] == 0  # type: ignore[index]
    assert out.getpixel((out.width // 2, out.height // 2))[3] == 255  # type: ignore[index]


def test_rotate_fills_with_the_background_colour(marked_png: bytes) -> None:
    out = opened(run(f"imageMogr2/rotate/30/format/jpg/background/{colour('#00FF00')}", marked_png))
    assert near(out.getpixel((1, 1)), GREEN, 8)
    out = opened(run(f"imageMogr2/background/{colour('#00ff0080')}/rotate/30", marked_png))
    assert near(out.getpixel((1, 1)), (*GREEN, 128), 2)
    out = opened(run(f"imageMogr2/background/{colour('green')}/rotate/45/format/bmp", marked_png))
    assert near(out.convert("RGB").getpixel((1, 1)), (0, 128, 0), 2)


def test_background_flattens_alpha_for_formats_without_it() -> None:
    image = Image.new("RGBA", (60, 40), (*RED, 255))
    image.paste((0, 0, 0, 0), (30, 0, 60, 40))
    src = encoded(image, "PNG")
    out = opened(run(f"imageMogr2/format/jpg/background/{colour('#0000FF')}", src))
    assert near(out.getpixel((45, 20)), (0, 0, 255), 8)
    assert near(out.getpixel((10, 20)), RED, 8)
    plain = opened(run("imageMogr2/format/jpg", src))
    assert near(plain.getpixel((45, 20)), (255, 255, 255), 4)


# --- blur and sharpen ------------------------------------------------------------------------


def test_blur_softens_as_much_as_its_sigma_and_radius_say(photo: bytes) -> None:
    original = Image.open(io.BytesIO(photo)).convert("RGB")
    energy = gradient_energy(original)
    light = opened(run("imageMogr2/blur/2x1", photo))
    heavy = opened(run("imageMogr2/blur/10x5", photo))
    capped = opened(run("imageMogr2/blur/1x50", photo))  # a 3-tap kernel: a light blur
    assert gradient_energy(heavy) < gradient_energy(light) < energy
    assert gradient_energy(heavy) < gradient_energy(capped) < energy
    expected = original.filter(ImageFilter.GaussianBlur(effective_sigma(10, 5)))
    assert psnr(heavy, expected) >= 35
    assert effective_sigma(50, 5) == pytest.approx(5, rel=0.01)  # an uncut kernel
    assert effective_sigma(10, 5) < 4.6  # cut at 2σ
    assert effective_sigma(1, 50) < 1


def test_sharpen_raises_edge_contrast(photo: bytes) -> None:
    original = Image.open(io.BytesIO(photo)).convert("RGB")
    out = opened(run("imageMogr2/sharpen/1", photo))
    assert gradient_energy(out) > gradient_energy(original) * 1.1
    assert ssim(out.resize((160, 120)), original.resize((160, 120))) >= 0.8


# --- format, quality, interlace, strip -------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "pil"),
    [("png", "image/png", "PNG"), ("webp", "image/webp", "WEBP"), ("jpeg", "image/jpeg", "JPEG")],
)
def test_format_converts(photo: bytes, fmt: str, mime: str, pil: str) -> None:
    output = run(f"imageMogr2/format/{fmt}", photo)
    out = opened(output)
    assert output.mime == mime and out.format == pil
    assert psnr(out, Image.open(io.BytesIO(photo))) >= 30


def test_quality_trades_bytes_for_fidelity(photo: bytes) -> None:
    low, high = run("imageMogr2/quality/20", photo), run("imageMogr2/quality/90!", photo)
    assert low.body is not None and high.body is not None
    assert len(low.body) < len(high.body) * 0.6
    original = Image.open(io.BytesIO(photo))
    assert psnr(opened(high), original) > psnr(opened(low), original)


def test_interlace_writes_a_progressive_jpeg(photo: bytes) -> None:
    assert opened(run("imageMogr2/interlace/1", photo)).info.get("progressive")
    assert not opened(run("imageMogr2/interlace/0", photo)).info.get("progressive")


def test_strip_removes_metadata() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Dora Camera"  # Make
    exif[0x0112] = 1
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = encoded(Image.new("RGB", (64, 48), RED), "JPEG", exif=exif.tobytes(), icc_profile=icc)
    assert Image.open(io.BytesIO(src)).getexif()[0x010F] == "Dora Camera"
    kept = opened(run("imageMogr2/thumbnail/32x", src))
    assert kept.info.get("icc_profile") and "exif" not in kept.info
    stripped = opened(run("imageMogr2/thumbnail/32x/strip", src))
    assert not stripped.info.get("icc_profile") and "exif" not in stripped.info
    assert 0x010F not in stripped.getexif()


# --- size-limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fop", "limit"), [("size-limit/15k", 15 * 1024), ("quality/95/size-limit/25k", 25 * 1024)]
)
def test_size_limit_reencodes_under_the_limit(photo: bytes, fop: str, limit: int) -> None:
    plain = run("imageMogr2/quality/95", photo)
    assert plain.body is not None and len(plain.body) > limit  # the limit has work to do
    output = run(f"imageMogr2/{fop}", photo)
    assert output.body is not None and len(output.body) <= limit
    assert psnr(opened(output), Image.open(io.BytesIO(photo))) >= 25


def test_size_limit_bang_answers_the_original_when_smaller() -> None:
    small = make_photo_jpeg(320, 240, 5, quality=30)
    output = run("imageMogr2/quality/95!/size-limit/1m!", small)
    assert output.body == small and output.meta.get("original")
    output = run("imageMogr2/thumbnail/80x/size-limit/1m!", small)
    assert output.body is not None and len(output.body) < len(small)
    assert opened(output).size == (80, 60)


def test_size_limit_fsize_keeps_the_result_under_the_source(photo: bytes) -> None:
    output = run("imageMogr2/quality/100!/size-limit/$(fsize)", photo)
    assert output.body is not None and len(output.body) <= len(photo)


def test_the_quality_search_takes_the_best_fitting_quality() -> None:
    tried: list[int] = []

    def write(quality: int) -> bytes:
        tried.append(quality)
        return b"x" * (quality * 10)

    assert len(smallest_fitting(write, 75, 420)) == 420
    assert len(tried) <= 8
    assert smallest_fitting(write, 75, 5) == b"x" * 10  # nothing fits: the smallest tried
