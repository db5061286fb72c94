"""imageView2 end to end through run_chain on real Pillow: sizes, formats, pixels."""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageCms, ImageOps

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image.geometry import oriented_size, view2_plan
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import parse_fops
from dora.ops import Output

LIMITS = Limits()


def _load_make_photo_jpeg() -> Callable[..., bytes]:
    # bench/ is not a package on the import path; load its image maker by file
    path = Path(__file__).resolve().parents[1] / "bench" / "images.py"
    spec = importlib.util.spec_from_file_location("dora_bench_images", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    make: Callable[..., bytes] = module.make_photo_jpeg
    return make


make_photo_jpeg = _load_make_photo_jpeg()


def run(fop: str, src: bytes, limits: Limits = LIMITS) -> Output:
    return run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, limits)


def result_image(output: Output) -> Image.Image:
    assert output.body is not None
    image = Image.open(io.BytesIO(output.body))
    image.load()
    return image


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    histogram = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).histogram()
    squared = sum(count * (index % 256) ** 2 for index, count in enumerate(histogram))
    mse = squared / (a.size[0] * a.size[1] * 3)
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def reference(src: bytes, mode: int, w: int | None, h: int | None) -> Image.Image:
    """The slow, obvious way: full decode, orient, LANCZOS to the plan, crop."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(src))).convert("RGB")
    plan = view2_plan(mode, w, h, *image.size)
    return image.resize(plan.scaled, Image.Resampling.LANCZOS).crop(plan.crop)


@pytest.fixture(scope="module")
def photo() -> bytes:
    return make_photo_jpeg(640, 480, 3)


@pytest.mark.parametrize(
    ("fop", "size"),
    [
        ("imageView2/0/w/300/h/200", (267, 200)),
        ("imageView2/0/w/300", (300, 225)),
        ("imageView2/1/w/300/h/200", (300, 200)),
        ("imageView2/1/w/150", (150, 150)),
        ("imageView2/2/w/300/h/200", (267, 200)),
        ("imageView2/2/h/120", (160, 120)),
        ("imageView2/3/w/300/h/200", (300, 225)),
        ("imageView2/4/w/300/h/200", (300, 225)),
        ("imageView2/5/w/300/h/200", (300, 200)),
        ("imageView2/5/w/1000/h/300", (640, 300)),  # never enlarged, the crop takes what fits
        ("imageView2/2/w/5000/h/5000", (640, 480)),  # never enlarges
        ("imageView2/1/w/1000/h/100", (640, 100)),  # the crop takes what fits
    ],
)
def test_each_mode_gives_the_planned_size_and_the_right_pixels(
    photo: bytes, fop: str, size: tuple[int, int]
) -> None:
    output = run(fop, photo)
    image = result_image(output)
    assert output.mime == "image/jpeg" and image.format == "JPEG"
    assert image.size == size
    assert output.meta == {"format": "jpg", "width": size[0], "height": size[1]}
    stage = parse_fops(fop, BUILTIN_CATALOG).stages[0]
    expected = reference(photo, stage.args["mode"], stage.get("w"), stage.get("h"))
    assert psnr(image, expected) > 30


@settings(max_examples=150, deadline=None)
@given(
    stored=st.tuples(st.integers(1, 400), st.integers(1, 400)),
    orientation=st.integers(1, 8),
    mode=st.integers(0, 5),
    w=st.one_of(st.none(), st.integers(1, 500)),
    h=st.one_of(st.none(), st.integers(1, 500)),
    fmt=st.sampled_from(["JPEG", "PNG"]),
)
def test_any_size_any_orientation_any_mode_gives_the_planned_size(
    stored: tuple[int, int],
    orientation: int,
    mode: int,
    w: int | None,
    h: int | None,
    fmt: str,
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = encode(Image.new("RGB", stored, (30, 90, 150)), fmt, exif=exif.tobytes())
    fop = f"imageView2/{mode}" + (f"/w/{w}" if w else "") + (f"/h/{h}" if h else "")
    plan = view2_plan(mode, w, h, *oriented_size(stored, orientation))
    assert result_image(run(fop, src)).size == plan.size


def test_a_1080p_photo_to_the_benchmark_thumbnail() -> None:
    src = make_photo_jpeg(1920, 1080, 1)
    image = result_image(run("imageView2/1/w/300/h/200", src))
    assert image.size == (300, 200)
    assert psnr(image, reference(src, 1, 300, 200)) > 30


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fop", ["imageView2/1/w/120/h/90", "imageView2/2/w/100/h/100"])
def test_exif_orientation_is_applied_before_planning(fop: str, orientation: int) -> None:
    stored = Image.open(io.BytesIO(make_photo_jpeg(320, 200, orientation)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = encode(stored, "JPEG", quality=92, exif=exif.tobytes())
    stage = parse_fops(fop, BUILTIN_CATALOG).stages[0]
    expected = reference(src, stage.args["mode"], stage.get("w"), stage.get("h"))
    image = result_image(run(f"{fop}/q/95", src))
    assert image.size == expected.size
    assert psnr(image, expected) > 30  # ~34-38 dB; a wrong turn or mirror scores ~12 dB
    assert image.getexif().get(0x0112) is None  # applied, so not written again


def test_orientation_alone_is_applied_without_resizing() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    src = encode(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif.tobytes())
    assert result_image(run("imageView2/2/format/png", src)).size == (20, 40)


@pytest.mark.parametrize(
    ("fmt", "pil_format", "mime"),
    [
        ("jpg", "JPEG", "image/jpeg"),
        ("jpeg", "JPEG", "image/jpeg"),
        ("png", "PNG", "image/png"),
        ("gif", "GIF", "image/gif"),
        ("webp", "WEBP", "image/webp"),
        ("bmp", "BMP", "image/bmp"),
        ("tiff", "TIFF", "image/tiff"),
        ("avif", "AVIF", "image/avif"),
    ],
)
def test_format_conversion(photo: bytes, fmt: str, pil_format: str, mime: str) -> None:
    output = run(f"imageView2/2/w/200/h/200/format/{fmt}", photo)
    image = result_image(output)
    assert (output.mime, image.format, image.size) == (mime, pil_format, (200, 150))
    assert psnr(image, reference(photo, 2, 200, 200)) > 25


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("PNG", "RGB"), ("GIF", "P"), ("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB")],
)
def test_the_source_format_is_kept_by_default(fmt: str, mode: str) -> None:
    source = Image.new("RGB", (64, 48), (10, 120, 200)).convert(mode)
    output = run("imageView2/2/w/32", encode(source, fmt))
    image = result_image(output)
    assert image.format == fmt and image.size == (32, 24)


def test_interlace_makes_a_progressive_jpeg(photo: bytes) -> None:
    progressive = result_image(run("imageView2/2/w/200/interlace/1", photo))
    baseline = result_image(run("imageView2/2/w/200/interlace/0", photo))
    assert progressive.info.get("progressive") and progressive.info.get("progression")
    assert "progressive" not in baseline.info and "progression" not in baseline.info


def test_quality_changes_the_jpeg(photo: bytes) -> None:
    low = run("imageView2/2/w/300/q/20", photo).body
    default = run("imageView2/2/w/300", photo).body
    high = run("imageView2/2/w/300/q/95!", photo).body
    assert low is not None and default is not None and high is not None
    assert len(low) < len(default) < len(high)


def _half_transparent_png() -> bytes:
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # transparent black
    image.paste((200, 0, 0, 255), (20, 0, 40, 20))  # opaque red right half
    return encode(image, "PNG")


@pytest.mark.parametrize("fmt", ["jpg", "bmp"])
def test_alpha_flattens_onto_white(fmt: str) -> None:
    image = result_image(run(f"imageView2/2/w/40/format/{fmt}", _half_transparent_png())).convert(
        "RGB"
    )
    left = image.getpixel((5, 10))
    right = image.getpixel((35, 10))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert all(channel >= 245 for channel in left)  # white, not black
    assert right[0] >= 180 and right[1] <= 30 and right[2] <= 30


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_alpha_is_kept_where_the_format_has_it(fmt: str) -> None:
    image = result_image(run(f"imageView2/2/w/20/format/{fmt}", _half_transparent_png()))
    assert image.mode == "RGBA"
    left, right = image.getpixel((2, 5)), image.getpixel((18, 5))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[3] == 0 and right[3] == 255


@pytest.mark.parametrize(
    "source",
    [
        Image.new("L", (60, 40), 90),
        Image.new("1", (60, 40), 1),
        Image.new("CMYK", (60, 40), (0, 255, 255, 0)),
        Image.new("I;16", (60, 40), 40000),
        Image.new("RGB", (60, 40), (0, 200, 0)).quantize(16),
        Image.new("LA", (60, 40), (90, 255)),
    ],
    ids=["L", "1", "CMYK", "I16", "P", "LA"],
)
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "gif", "bmp", "tiff"])
def test_every_mode_converts_to_every_format(source: Image.Image, fmt: str) -> None:
    container = "TIFF" if source.mode == "CMYK" else "PNG"
    image = result_image(run(f"imageView2/2/w/30/format/{fmt}", encode(source, container)))
    assert image.size == (30, 20)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [("L", 90, (90, 90, 90)), ("CMYK", (255, 0, 0, 0), (0, 255, 255))],
)
def test_grey_and_cmyk_jpegs_decode_at_a_reduced_scale(
    mode: str, colour: int | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    src = encode(Image.new(mode, (800, 600), colour), "JPEG", quality=95)
    for fmt in ("jpg", "png"):
        image = result_image(run(f"imageView2/1/w/100/h/60/format/{fmt}", src)).convert("RGB")
        assert image.size == (100, 60)
        pixel = image.getpixel((50, 30))
        assert isinstance(pixel, tuple)
        assert all(abs(a - b) <= 6 for a, b in zip(pixel, expected, strict=True))


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    src = encode(Image.new("I;16", (20, 20), 32768), "PNG")
    png = result_image(run("imageView2/2/w/10/format/png", src))
    assert png.mode == "I;16" and png.getpixel((5, 5)) == 32768  # PNG keeps 16 bits
    pixel = result_image(run("imageView2/2/w/10/format/jpg", src)).getpixel((5, 5))
    assert isinstance(pixel, int) and 120 <= pixel <= 135  # 8-bit: scaled, not clipped


def test_palette_images_are_resampled_smoothly() -> None:
    stripes = Image.new("RGB", (64, 64), "black")
    for x in range(0, 64, 2):
        stripes.paste("white", (x, 0, x + 1, 64))
    src = encode(stripes.quantize(2), "PNG")
    pixel = result_image(run("imageView2/2/w/16/format/png", src)).convert("L").getpixel((8, 8))
    assert isinstance(pixel, int) and 90 <= pixel <= 165  # averaged, not a nearest sample


def test_chained_views_fuse_and_carry_the_format(photo: bytes) -> None:
    output = run("imageView2/2/w/400/format/png|imageView2/1/w/100/h/50", photo)
    image = result_image(output)
    assert (output.mime, image.size) == ("image/png", (100, 50))
    assert psnr(image, reference(photo, 1, 100, 50)) > 25


def test_an_output_beyond_the_side_limit_is_refused() -> None:
    wide = encode(Image.new("L", (12000, 4), 7), "PNG")
    with pytest.raises(BadRequest, match="9999"):
        run("imageView2/2/format/jpg", wide)
    with pytest.raises(BadRequest, match="limited"):
        run("imageView2/3/w/200", wide)  # at least 200 tall would be 600000 wide
    assert result_image(run("imageView2/2/w/9999", wide)).size == (9999, 3)


def test_an_output_beyond_the_pixel_limit_is_refused() -> None:
    src = encode(Image.new("L", (400, 300), 7), "PNG")
    small = Limits(max_output_pixels=10_000)
    with pytest.raises(BadRequest, match="10000 pixels"):
        run("imageView2/2/w/300", src, small)
    assert result_image(run("imageView2/2/w/100", src, small)).size == (100, 75)


def test_icc_profile_is_kept() -> None:
    profile = Image.open(
        io.BytesIO(encode(Image.new("RGB", (8, 8)), "JPEG", icc_profile=_srgb_profile()))
    ).info["icc_profile"]
    src = encode(Image.new("RGB", (80, 60), "blue"), "JPEG", icc_profile=profile)
    assert result_image(run("imageView2/2/w/40", src)).info.get("icc_profile") == profile


def _srgb_profile() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    data: bytes = profile.tobytes()
    return data
