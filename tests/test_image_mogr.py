"""imageMogr2 through run_chain on real Pillow: geometry, URL order, orientation, errors.

Outputs are compared with references cut or resized by Pillow directly, by
PSNR/SSIM (tests/imagesim.py), never by bytes.
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from images import make_photo_jpeg
from imagesim import psnr, ssim
from PIL import Image, ImageOps

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.gravity import GRAVITIES
from dora.builtin_ops.image import decode
from dora.builtin_ops.image.picture import Picture
from dora.builtin_ops.runner import parse_wire_stages, run_chain
from dora.config import Limits
from dora.errors import BadRequest, InvalidArgument
from dora.fop import parse_fops, parse_stage
from dora.ops import Output

LIMITS = Limits()
CELL_W, CELL_H = 100, 80
GRID = (3, 3)
# nine distinct, well separated colours, row by row (NorthWest first)
COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (128, 128, 0),
]


def run(fop: str, src: bytes, limits: Limits = LIMITS) -> Output:
    return run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, limits)


def opened(output: Output) -> Image.Image:
    assert output.body is not None
    image = Image.open(io.BytesIO(output.body))
    image.load()
    return image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def grid_image() -> Image.Image:
    """A 300×240 image of 3×3 flat cells, each a colour of its own."""
    image = Image.new("RGB", (CELL_W * GRID[0], CELL_H * GRID[1]))
    for index, colour in enumerate(COLOURS):
        col, row = index % 3, index // 3
        image.paste(colour, (col * CELL_W, row * CELL_H, (col + 1) * CELL_W, (row + 1) * CELL_H))
    return image


@pytest.fixture(scope="module")
def grid() -> Image.Image:
    return grid_image()


@pytest.fixture(scope="module")
def grid_png(grid: Image.Image) -> bytes:
    return encoded(grid, "PNG")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return make_photo_jpeg(640, 480, 7)


# --- crop and gravity ----------------------------------------------------------------------


@pytest.mark.parametrize("index", range(9))
def test_crop_with_each_gravity_keeps_its_cell(
    grid: Image.Image, grid_png: bytes, index: int
) -> None:
    gravity = GRAVITIES[index]
    out = opened(run(f"imageMogr2/gravity/{gravity}/crop/{CELL_W}x{CELL_H}", grid_png))
    col, row = index % 3, index // 3
    cell = (col * CELL_W, row * CELL_H, (col + 1) * CELL_W, (row + 1) * CELL_H)
    assert out.size == (CELL_W, CELL_H)
    assert psnr(out, grid.crop(cell)) >= 30
    assert out.convert("RGB").getpixel((CELL_W // 2, CELL_H // 2)) == COLOURS[index]


@pytest.mark.parametrize(
    ("gravity", "box"),
    [  # !60x50a10a5: (10, 5) away from the anchor, inwards from east and south edges
        ("NorthWest", (10, 5, 70, 55)),
        ("North", (130, 5, 190, 55)),
        ("NorthEast", (230, 5, 290, 55)),
        ("West", (10, 100, 70, 150)),
        ("Center", (130, 100, 190, 150)),
        ("East", (230, 100, 290, 150)),
        ("SouthWest", (10, 185, 70, 235)),
        ("South", (130, 185, 190, 235)),
        ("SouthEast", (230, 185, 290, 235)),
    ],
)
def test_crop_offsets_are_relative_to_the_gravity(
    grid: Image.Image, grid_png: bytes, gravity: str, box: tuple[int, int, int, int]
) -> None:
    out = opened(run(f"imageMogr2/gravity/{gravity}/crop/!60x50a10a5", grid_png))
    assert out.size == (60, 50)
    assert psnr(out, grid.crop(box)) >= 30


def test_minus_offsets_shrink_the_box(grid: Image.Image, grid_png: bytes) -> None:
    out = opened(run("imageMogr2/crop/!100x80-30-20", grid_png))
    assert out.size == (70, 60)
    assert psnr(out, grid.crop((0, 0, 70, 60))) >= 30
    out = opened(run("imageMogr2/gravity/SouthEast/crop/!100x80-30-20", grid_png))
    assert out.size == (70, 60)
    assert psnr(out, grid.crop((230, 180, 300, 240))) >= 30


def test_one_sided_crops_keep_the_other_side(grid: Image.Image, grid_png: bytes) -> None:
    assert opened(run("imageMogr2/crop/120x", grid_png)).size == (120, 240)
    out = opened(run("imageMogr2/gravity/South/crop/x100", grid_png))
    assert out.size == (300, 100)
    assert psnr(out, grid.crop((0, 140, 300, 240))) >= 30
    assert opened(run("imageMogr2/crop/1000x1000", grid_png)).size == (300, 240)


# --- thumbnails ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geometry", "size"),
    [
        ("!50p", (320, 240)),
        ("!50px", (320, 480)),
        ("!x25p", (640, 120)),
        ("200x", (200, 150)),
        ("x120", (160, 120)),
        ("200x200", (200, 150)),
        ("!200x200r", (267, 200)),
        ("200x100!", (200, 100)),
        ("1000x1000>", (640, 480)),
        ("320x320>", (320, 240)),
        ("100x100<", (640, 480)),
        ("1280x1280<", (1280, 960)),
        ("1280x", (1280, 960)),
        ("30000@", (200, 150)),
    ],
)
def test_thumbnail_forms(photo: bytes, geometry: str, size: tuple[int, int]) -> None:
    out = opened(run(f"imageMogr2/thumbnail/{geometry}", photo))
    assert out.size == size
    reference = Image.open(io.BytesIO(photo)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    assert psnr(out, reference) >= 30
    if size[0] * size[1] <= 320 * 480:  # pure-Python SSIM: keep it to small images
        assert ssim(out, reference) >= 0.9


def test_thumbnail_drafts_a_large_jpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_photo_jpeg(2400, 1800, 3)
    divisors: list[int] = []
    real_draft = decode.draft

    def spy(picture: Picture, raw_size: tuple[int, int]) -> int:
        divisors.append(real_draft(picture, raw_size))
        return divisors[-1]

    monkeypatch.setattr(decode, "draft", spy)
    reference = Image.open(io.BytesIO(src)).convert("RGB")
    cases = [
        ("thumbnail/300x", (300, 225), 8, reference.resize((300, 225), Image.Resampling.LANCZOS)),
        (
            "thumbnail/600x/crop/300x300",
            (300, 300),
            4,
            reference.resize((600, 450), Image.Resampling.LANCZOS).crop((0, 0, 300, 300)),
        ),
        (
            "gravity/Center/crop/1200x1200/thumbnail/150x",
            (150, 150),
            8,
            reference.crop((600, 300, 1800, 1500)).resize((150, 150), Image.Resampling.LANCZOS),
        ),
    ]
    for fop, size, divisor, expected in cases:
        divisors.clear()
        out = opened(run(f"imageMogr2/{fop}", src))
        assert out.size == size
        assert divisors == [divisor], fop
        assert psnr(out, expected) >= 30, fop


# --- URL order --------------------------------------------------------------------------------


def test_thumbnail_then_crop_differs_from_crop_then_thumbnail(photo: bytes) -> None:
    reference = Image.open(io.BytesIO(photo)).convert("RGB")
    first = opened(run("imageMogr2/thumbnail/!50p/crop/100x100", photo))
    assert first.size == (100, 100)
    expected = reference.resize((320, 240), Image.Resampling.LANCZOS).crop((0, 0, 100, 100))
    assert psnr(first, expected) >= 30
    second = opened(run("imageMogr2/crop/100x100/thumbnail/!50p", photo))
    assert second.size == (50, 50)
    expected = reference.crop((0, 0, 100, 100)).resize((50, 50), Image.Resampling.LANCZOS)
    assert psnr(second, expected) >= 30


def test_gravity_applies_only_to_later_crops(grid: Image.Image, grid_png: bytes) -> None:
    out = opened(run("imageMogr2/crop/200x160/gravity/SouthEast/crop/100x80", grid_png))
    # the first crop keeps the NorthWest 2×2 cells, the second its SouthEast cell
    assert out.convert("RGB").getpixel((50, 40)) == COLOURS[4]


def test_stages_chain_through_the_pipe(photo: bytes) -> None:
    out = opened(run("imageMogr2/thumbnail/320x|imageMogr2/gravity/Center/crop/100x100", photo))
    reference = Image.open(io.BytesIO(photo)).convert("RGB")
    expected = reference.resize((320, 240), Image.Resampling.LANCZOS).crop((110, 70, 210, 170))
    assert out.size == (100, 100) and psnr(out, expected) >= 30


# --- orientation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def turned_jpeg(grid: Image.Image) -> bytes:
    """The grid stored 300×240 with EXIF orientation 6: displayed 240×300."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(grid, "JPEG", quality=95, exif=exif.tobytes())


def test_auto_orient_turns_an_exif_rotated_jpeg(grid: Image.Image, turned_jpeg: bytes) -> None:
    out = opened(run("imageMogr2/auto-orient", turned_jpeg))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(turned_jpeg))).convert("RGB")
    assert out.size == (240, 300) == upright.size
    assert psnr(out, upright) >= 35
    # orientation 6 turns the stored image 90° clockwise: its NorthWest cell goes NorthEast
    assert psnr(out.crop((160, 0, 240, 100)), Image.new("RGB", (80, 100), COLOURS[0])) >= 30
    assert "exif" not in out.info  # the orientation is applied, not passed on


def test_geometry_after_auto_orient_is_upright(turned_jpeg: bytes) -> None:
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(turned_jpeg))).convert("RGB")
    out = opened(run("imageMogr2/auto-orient/thumbnail/120x/crop/!60x50a10a20", turned_jpeg))
    expected = upright.resize((120, 150), Image.Resampling.LANCZOS).crop((10, 20, 70, 70))
    assert out.size == (60, 50) and psnr(out, expected) >= 30


def test_without_auto_orient_geometry_applies_to_stored_pixels(
    grid: Image.Image, turned_jpeg: bytes
) -> None:
    # Qiniu thumbnails the stored 300×240 pixels; viewers then apply the orientation
    out = opened(run("imageMogr2/thumbnail/150x", turned_jpeg))
    assert out.size == (120, 150)
    expected = grid.resize((150, 120), Image.Resampling.LANCZOS).transpose(
        Image.Transpose.ROTATE_270
    )
    assert psnr(out, expected) >= 30


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fop", "arg"),
    [
        ("imageMogr2/thumbnail/abc", "thumbnail"),
        ("imageMogr2/thumbnail/0x0", "thumbnail"),
        ("imageMogr2/thumbnail/!300x200", "thumbnail"),
        ("imageMogr2/thumbnail", "thumbnail"),
        ("imageMogr2/crop/x", "crop"),
        ("imageMogr2/crop/100x100a5a5", "crop"),
        ("imageMogr2/gravity/Up", "gravity"),
        ("imageMogr2/rotate/0", "rotate"),
        ("imageMogr2/rotate/361", "rotate"),
        ("imageMogr2/blur/0x1", "blur"),
        ("imageMogr2/blur/51x1", "blur"),
        ("imageMogr2/blur/3", "blur"),
        ("imageMogr2/blur/3x51", "blur"),
        ("imageMogr2/sharpen/0", "sharpen"),
        ("imageMogr2/quality/0", "quality"),
        ("imageMogr2/format/jxl", "format"),
        ("imageMogr2/interlace/2", "interlace"),
        ("imageMogr2/size-limit/12g", "size-limit"),
        ("imageMogr2/size-limit/0k", "size-limit"),
        ("imageMogr2/background/bm90IGEgY29sb3VyIQ==", "background"),
        ("imageMogr2/colour/red", "colour"),
    ],
)
def test_bad_arguments_are_400s_naming_the_argument(fop: str, arg: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_stage(fop, BUILTIN_CATALOG)
    assert (caught.value.op, caught.value.arg, caught.value.status) == ("imageMogr2", arg, 400)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width × height`` and has no pixel data (never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("fop", "size", "arg"),
    [
        ("imageMogr2/thumbnail/10000x", (400, 300), "thumbnail"),
        ("imageMogr2/thumbnail/!999p", (2000, 2000), "thumbnail"),
        ("imageMogr2/rotate/45", (9000, 9000), "rotate"),
        ("imageMogr2/crop/!100x100a500a0", (400, 300), "crop"),
        ("imageMogr2/thumbnail/30000x30000!/crop/100x100", (400, 300), "thumbnail"),
    ],
)
def test_results_past_the_limits_are_400s_before_decoding(
    fop: str, size: tuple[int, int], arg: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        run(fop, _png_header(*size))
    assert (caught.value.op, caught.value.arg, caught.value.status) == ("imageMogr2", arg, 400)


def test_an_unknown_colour_name_is_a_400() -> None:
    with pytest.raises(InvalidArgument) as caught:
        run("imageMogr2/background/Ymx1cnBsZQ==/rotate/45", encoded(grid_image(), "PNG"))
    assert caught.value.arg == "background"


def test_ignore_error_answers_the_original(grid_png: bytes) -> None:
    output = run("imageMogr2/crop/!100x100a900a0/ignore-error/1", grid_png)
    assert output.body == grid_png and output.mime == "image/png"
    with pytest.raises(BadRequest):
        run("imageMogr2/crop/!100x100a900a0", grid_png)


# --- animations and the wire ------------------------------------------------------------------


def test_every_frame_of_an_animation_follows_the_chain() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (120, 80), colour) for colour in colours]
    src = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    output = run("imageMogr2/thumbnail/60x/gravity/Center/crop/!40x30a2a2/rotate/90", src)
    out = Image.open(io.BytesIO(output.body or b""))
    assert out.format == "GIF" and out.size == (30, 40)
    assert getattr(out, "n_frames", 1) == 3
    for index, expected in enumerate(colours):
        out.seek(index)
        assert out.convert("RGB").getpixel((15, 20)) == expected


def test_stages_round_trip_through_the_wire_form() -> None:
    chain = parse_fops(
        "imageMogr2/auto-orient/thumbnail/!50p/gravity/SouthEast/crop/!300x200a10-5"
        "/rotate/30/blur/3x1.5/size-limit/15k!|imageInfo",
        BUILTIN_CATALOG,
    )
    wire = [[stage.op, stage.argtext] for stage in chain.stages]
    assert parse_wire_stages(wire) == list(chain.stages)
    names = [name for name, _ in chain.stages[0].items]
    assert names == ["auto-orient", "thumbnail", "gravity", "crop", "rotate", "blur", "size-limit"]
