"""Formats and fidelity through the real chain: orientation, bit depth, palettes,
every format both ways, codecs detected at run time, and ``dora doctor``.

The files come from tests/data (made by tests/data/make_data.py); results are
compared by pixels and similarity, never by bytes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from data import make_data
from imagesim import psnr
from PIL import Image, ImageOps, features

from dora.builtin_ops import formats
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image import decode
from dora.builtin_ops.image.encode import encode as encode_picture
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.errors import BadRequest, PayloadTooLarge
from dora.fop import parse_fops
from dora.ops import Output

DATA = Path(__file__).parent / "data"
LIMITS = Limits()
ALL_FORMATS = ("jpg", "png", "gif", "webp", "bmp", "tiff", "avif", "heic")
PILLOW_NAMES = {name: pil for name, (pil, _) in formats.FORMATS.items()}


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def run(fop: str, src: bytes, limits: Limits = LIMITS) -> Output:
    return run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, limits)


def opened(output: Output) -> Image.Image:
    assert output.body is not None
    image = Image.open(io.BytesIO(output.body))
    image.load()
    return image


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    formats.enable_heif()
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def near(pixel: object, expected: tuple[int, ...], tolerance: int = 6) -> bool:
    assert isinstance(pixel, tuple), pixel
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def test_the_data_folder_is_small_and_complete() -> None:
    names = {path.name for path in DATA.iterdir() if path.suffix != ".py" and path.is_file()}
    assert set(make_data.files()) <= names
    total = sum(path.stat().st_size for path in DATA.iterdir() if path.is_file())
    assert total < 2 * 1024 * 1024


# --- EXIF orientation -----------------------------------------------------------------------


def quadrant_colours(image: Image.Image) -> dict[str, object]:
    rgb = image.convert("RGB")
    width, height = rgb.size
    points = {
        "tl": (width // 4, height // 4),
        "tr": (3 * width // 4, height // 4),
        "bl": (width // 4, 3 * height // 4),
        "br": (3 * width // 4, 3 * height // 4),
    }
    return {name: rgb.getpixel(point) for name, point in points.items()}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("fop", "size"),
    [
        ("imageView2/2/w/32", (32, 24)),
        ("imageView2/1/w/40/h/20", (40, 20)),
        ("imageView2/0/w/64", (64, 48)),  # no resize: orientation alone
        ("imageView2/2/w/40/format/png", (40, 30)),
    ],
)
def test_every_exif_orientation_is_shown_upright(
    orientation: int, fop: str, size: tuple[int, int]
) -> None:
    src = data(f"orientation-{orientation}.jpg")
    stored = Image.open(io.BytesIO(src))
    assert stored.getexif()[0x0112] == orientation
    image = opened(run(fop, src))
    assert image.size == size
    colours = quadrant_colours(image)
    for corner, expected in make_data.QUADRANTS.items():
        assert near(colours[corner], expected, 20), (corner, colours)  # JPEG chroma bleeds
    assert image.getexif().get(0x0112) is None  # applied, never written again
    reference = ImageOps.exif_transpose(stored).convert("RGB").resize(image.size)
    assert psnr(image.convert("RGB"), reference) > 25


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_auto_orient_helper_turns_every_orientation(orientation: int) -> None:
    picture = decode.open_picture(data(f"orientation-{orientation}.jpg"), LIMITS)
    decode.auto_orient(picture)
    assert picture.orientation == 1 and picture.image.size == (64, 48)
    colours = quadrant_colours(picture.image)
    assert all(near(colours[c], v, 12) for c, v in make_data.QUADRANTS.items()), colours
    decode.auto_orient(picture)  # twice is harmless: nothing left to apply
    assert quadrant_colours(picture.image) == colours


# --- every format both ways -------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return make_data.quadrants(160, 120).resize((160, 120))


def available(fmt: str) -> bool:
    row = formats.support(fmt)
    return row is not None and row.read and row.write


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_reads_and_writes(photo: Image.Image, fmt: str) -> None:
    if not available(fmt):  # AVIF and HEIC depend on the codecs installed
        with pytest.raises(BadRequest, match=f"^format {fmt} is not available on this server$"):
            run(f"imageView2/2/w/80/format/{fmt}", save(photo, "JPEG"))
        return
    src = save(photo, PILLOW_NAMES[fmt], **({"quality": 90} if fmt in ("avif", "heic") else {}))
    as_jpeg = opened(run("imageView2/2/w/80/format/jpg", src))
    assert as_jpeg.format == "JPEG" and as_jpeg.size == (80, 60)
    assert psnr(as_jpeg, photo.resize((80, 60))) > 28
    output = run(f"imageView2/2/w/80/format/{fmt}", save(photo, "JPEG", quality=95))
    assert output.mime == formats.FORMATS[fmt][1]
    written = opened(output)
    assert written.format == PILLOW_NAMES[fmt] and written.size == (80, 60)
    assert psnr(written, photo.resize((80, 60))) > (20 if fmt == "gif" else 28)
    kept = opened(run("imageView2/2/w/40", src))  # without format/: the source's own
    assert kept.format == PILLOW_NAMES[fmt]


def test_a_progressive_jpeg_is_read_and_interlace_writes_one() -> None:
    src = data("progressive.jpg")
    assert Image.open(io.BytesIO(src)).info.get("progressive")
    baseline = opened(run("imageView2/2/w/48", src))
    assert baseline.size == (48, 32) and not baseline.info.get("progressive")
    progressive = opened(run("imageView2/2/w/48/interlace/1", src))
    assert progressive.info.get("progressive") and psnr(progressive, baseline) > 35


def test_a_grey_jpeg_stays_grey() -> None:
    src = data("grey.jpg")
    for fmt, pil_format in (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
        image = opened(run(f"imageView2/2/w/48/format/{fmt}", src))
        assert image.format == pil_format and image.size == (48, 32)
        if fmt != "webp":  # WebP has no grey mode
            assert image.mode == "L"


def test_a_truncated_jpeg_is_a_400_or_the_original_with_ignore_error() -> None:
    src = data("truncated.jpg")
    with pytest.raises(BadRequest, match="truncated"):
        run("imageView2/2/w/50", src)
    output = run("imageView2/2/w/50/ignore-error/1", src)
    assert output.body == src and output.mime == "image/jpeg"


# --- bit depth and palettes ---------------------------------------------------------------------


def test_sixteen_bit_grey_png_stays_sixteen_bit_in_png_and_scales_into_jpeg() -> None:
    src = data("png16-grey.png")  # x * 2114, 0 .. 65534, across 32 columns
    png = opened(run("imageView2/2/w/16/format/png", src))
    assert png.mode == "I;16" and png.size == (16, 4)
    untouched = opened(run("imageView2/2/format/png", src))
    assert untouched.mode == "I;16" and untouched.getpixel((31, 0)) == 31 * 2114
    jpeg = opened(run("imageView2/2/format/jpg/q/100!", src))
    assert jpeg.mode == "L"
    for x in (0, 8, 16, 31):
        expected = round(x * 2114 * 255 / 65535)
        pixel = jpeg.getpixel((x, 4))
        assert isinstance(pixel, int) and abs(pixel - expected) <= 3, (x, pixel, expected)


def test_sixteen_bit_big_endian_tiff_is_read() -> None:
    src = data("tiff16-grey.tif")
    assert Image.open(io.BytesIO(src)).mode == "I;16B"
    png = opened(run("imageView2/2/format/png", src))
    assert png.mode == "I;16" and png.getpixel((20, 2)) == 20 * 2114
    small = opened(run("imageView2/2/w/16/format/tiff", src))
    assert small.mode == "I;16" and small.size == (16, 4)
    jpeg = opened(run("imageView2/2/format/jpg/q/100!", src))
    pixel = jpeg.getpixel((16, 2))
    assert isinstance(pixel, int) and abs(pixel - round(16 * 2114 * 255 / 65535)) <= 3


def test_forty_eight_bit_rgb_png_is_scaled_to_eight_bits() -> None:
    image = opened(run("imageView2/2/format/png", data("png16-rgb.png")))
    assert image.mode == "RGB"
    for x in (0, 10, 31):
        expected = (round(x * 2114 / 257), round((65535 - x * 2114) / 257), 128)
        assert near(image.getpixel((x, 3)), expected, 1), x


def test_sixty_four_bit_rgba_png_flattens_onto_white_by_its_alpha() -> None:
    jpeg = opened(run("imageView2/2/format/jpg/q/100!", data("png16-rgba.png")))
    for x in (0, 16, 31):
        alpha = x * 2114 / 65535
        expected = (255, round(255 * (1 - alpha)), round(255 * (1 - alpha)))
        assert near(jpeg.getpixel((x, 3)), expected, 8), x


def test_a_palette_png_with_trns_keeps_or_flattens_its_transparency() -> None:
    src = data("palette-trns.png")  # index 0 transparent (left top), red right, blue bottom left
    png = opened(run("imageView2/2/w/16/format/png", src)).convert("RGBA")
    corner = png.getpixel((2, 1))
    assert isinstance(corner, tuple) and corner[3] == 0
    assert near(png.getpixel((13, 2)), (200, 0, 0, 255), 10)
    webp = opened(run("imageView2/2/format/webp", src)).convert("RGBA")
    alpha = webp.getpixel((3, 3))
    assert isinstance(alpha, tuple) and alpha[3] == 0
    for fmt in ("jpg", "bmp"):
        flat = opened(run(f"imageView2/2/format/{fmt}", src)).convert("RGB")
        assert near(flat.getpixel((4, 3)), (255, 255, 255), 6)  # transparent → white
        assert near(flat.getpixel((24, 8)), (200, 0, 0), 12)
        assert near(flat.getpixel((4, 12)), (0, 0, 200), 12)


# --- codecs detected at run time ------------------------------------------------------------


def test_the_format_table_agrees_with_pillow() -> None:
    table = {row.name: row for row in formats.supported_formats()}
    assert tuple(table) == ALL_FORMATS
    for name in ("jpg", "png", "gif", "bmp", "tiff"):
        assert table[name].read and table[name].write
    assert table["avif"].write == bool(features.check("avif"))
    assert table["webp"].write == bool(features.check("webp"))
    assert formats.normalise("JPEG") == "jpg" and formats.normalise("heif") == "heic"


def test_a_missing_codec_is_a_clear_400(monkeypatch: pytest.MonkeyPatch) -> None:
    real = formats.supported_formats()
    without_avif = tuple(
        row
        if row.name != "avif"
        else type(row)(row.name, row.mime, row.pillow_format, False, False, "gone")
        for row in real
    )
    monkeypatch.setattr(formats, "supported_formats", lambda: without_avif)
    with pytest.raises(BadRequest, match=r"^format avif is not available on this server$"):
        run("imageView2/2/w/10/format/avif", data("grey.jpg"))
    assert (
        run("imageView2/2/w/10/format/avif/ignore-error/1", data("grey.jpg")).mime == "image/jpeg"
    )


def test_heic_without_pillow_heif_is_a_clear_400_naming_the_format() -> None:
    """In a fresh process where pillow-heif cannot be imported, as on a server without it."""
    heic = data("quadrants.heic")  # made where pillow-heif was installed
    code = """
import sys
sys.modules["pillow_heif"] = None  # an import of it now fails
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.runner import run_chain
from dora.builtin_ops import formats
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import parse_fops
assert not formats.support("heic").read
heic = sys.stdin.buffer.read()
jpeg = open(sys.argv[1], "rb").read()
calls = [("imageView2/2/w/10", heic), ("imageInfo", heic), ("imageView2/2/format/heic", jpeg)]
for fop, src in calls:
    try:
        run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, Limits())
    except BadRequest as exc:
        print(exc.status, exc.message)
"""
    done = subprocess.run(
        [sys.executable, "-P", "-c", code, str(DATA / "grey.jpg")],
        input=heic,
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.decode().splitlines()
    assert lines == ["400 format heic is not available on this server"] * 3, done.stderr


def test_sniffing_knows_every_format() -> None:
    photo = make_data.quadrants()
    for fmt in ALL_FORMATS:
        src = data("quadrants.heic") if fmt == "heic" else save(photo, PILLOW_NAMES[fmt])
        assert formats.sniff(src) == fmt
        assert decode.sniff_mime(src) == formats.FORMATS[fmt][1]
    assert formats.sniff(b"plain text") is None


# --- limits -----------------------------------------------------------------------------------


def test_limits_are_precise_4xx() -> None:
    src = data("progressive.jpg")
    with pytest.raises(PayloadTooLarge) as too_big:
        run("imageView2/2/w/10", src, Limits(max_source_bytes=len(src) - 1))
    assert too_big.value.status == 413
    with pytest.raises(BadRequest, match=r"too large|100000x100000"):
        run("imageView2/2/w/10", data("bomb.png"))
    with pytest.raises(BadRequest, match="limited to 40 px"):
        run("imageView2/0/w/60", src, Limits(max_output_side=40))
    with pytest.raises(BadRequest, match="1000 pixels"):
        run("imageView2/2/format/png", src, Limits(max_output_pixels=1000))


def test_encode_refuses_an_output_past_the_limits_whatever_the_op() -> None:
    picture = decode.open_picture(data("progressive.jpg"), LIMITS)
    with pytest.raises(BadRequest, match="96x64"):
        encode_picture(picture, Limits(max_output_side=50))


# --- dora doctor -----------------------------------------------------------------------------


def doctor(*args: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-P", "-m", "dora.cli", "doctor", *args]
    return subprocess.run(command, capture_output=True, timeout=60, check=False)


def test_doctor_reports_formats_tools_fonts_and_data(tmp_path: Path) -> None:
    (tmp_path / "buckets" / "photos").mkdir(parents=True)
    done = doctor("--json", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    sections = report["sections"]
    assert sections["runtime"]["pillow"]["ok"]
    for row in formats.supported_formats():
        assert sections["formats"][row.name]["ok"] == (row.read and row.write)
    for tool in ("ffmpeg", "ffprobe"):
        assert tool in sections["tools"]
    assert "1 in" in sections["data"]["buckets"]["detail"]
    assert "writable" in sections["data"]["directory"]["detail"]
    text = doctor("--data-dir", str(tmp_path))
    assert text.returncode == 0 and b"all essentials ok" in text.stdout
    assert b"heic" in text.stdout and b"ffmpeg" in text.stdout


def test_doctor_fails_when_the_data_dir_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = doctor("--json", "--data-dir", str(blocker))
    assert done.returncode == 1
    assert json.loads(done.stdout)["sections"]["data"]["directory"]["ok"] is False
