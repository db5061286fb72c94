"""watermark, roundPic and imageAve through run_chain on real Pillow and real fonts."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageStat

from dora.b64 import urlsafe_b64encode
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image import text
from dora.builtin_ops.image.watermark import scaled_mark_size
from dora.builtin_ops.resolver import DoraResolver
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.errors import BadRequest, InvalidArgument, NotFound
from dora.fop import parse_fops
from dora.ops import Output

LIMITS = Limits()
RED = (255, 0, 0)
BLUE = (0, 0, 255)
W, H = 200, 150


def b64(value: str) -> str:
    return urlsafe_b64encode(value)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def base_image() -> Image.Image:
    """A smooth grey-green gradient: every pixel different from the marks' colours."""
    image = Image.new("RGB", (W, H))
    image.putdata([(40 + x // 2, 60 + y // 2, 90) for y in range(H) for x in range(W)])
    return image


def decoded(output: Output) -> Image.Image:
    assert output.body is not None
    image = Image.open(io.BytesIO(output.body))
    image.load()
    return image


def psnr(a: Image.Image, b: Image.Image) -> float:
    histogram = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).histogram()
    squared = sum(count * (index % 256) ** 2 for index, count in enumerate(histogram))
    mse = squared / (a.size[0] * a.size[1] * 3)
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture
def resources(tmp_path: Path) -> DoraResolver:
    marks = tmp_path / "buckets" / "marks"
    marks.mkdir(parents=True)
    (marks / "red.png").write_bytes(encode(Image.new("RGB", (20, 10), RED)))
    (marks / "blue.png").write_bytes(encode(Image.new("RGB", (20, 10), BLUE)))
    (marks / "huge.png").write_bytes(encode(Image.new("RGB", (300, 300), RED)))
    holed = Image.new("RGBA", (20, 10), (*RED, 255))
    holed.paste((0, 0, 0, 0), (5, 0, 15, 10))  # a transparent band in the middle
    (marks / "holed.png").write_bytes(encode(holed))
    (marks / "note.txt").write_bytes(b"not an image")
    return DoraResolver(tmp_path / "buckets")


def run(fop: str, src: bytes, resources: DoraResolver | None = None) -> Output:
    stages = parse_fops(fop, BUILTIN_CATALOG).stages
    return run_chain(stages, src, LIMITS, resources=resources)


RED_URL = b64("dora://marks/red.png")

# gravity -> the 20x10 mark's top-left corner on the 200x150 base with dx=7, dy=5,
# worked out by hand from ImageMagick's gravity rules
PLACEMENTS = {
    "NorthWest": (7, 5),
    "North": (97, 5),
    "NorthEast": (173, 5),
    "West": (7, 75),
    "Center": (97, 75),
    "East": (173, 75),
    "SouthWest": (7, 135),
    "South": (97, 135),
    "SouthEast": (173, 135),
}


@pytest.mark.parametrize(("gravity", "corner"), PLACEMENTS.items())
def test_image_mark_lands_where_gravity_and_offsets_say(
    resources: DoraResolver, gravity: str, corner: tuple[int, int]
) -> None:
    base = base_image()
    fop = f"watermark/1/image/{RED_URL}/gravity/{gravity}/dx/7/dy/5"
    result = decoded(run(fop, encode(base), resources))
    assert result.format == "PNG" and result.size == (W, H)
    x, y = corner
    box = (x, y, x + 20, y + 10)
    assert ImageChops.difference(result.convert("RGB"), base).getbbox() == box
    assert ImageStat.Stat(result.crop(box)).extrema[:3] == [(255, 255), (0, 0), (0, 0)]


def test_defaults_are_south_east_ten_pixels_in(resources: DoraResolver) -> None:
    base = base_image()
    result = decoded(run(f"watermark/1/image/{RED_URL}", encode(base), resources))
    box = (W - 30, H - 20, W - 10, H - 10)
    assert ImageChops.difference(result.convert("RGB"), base).getbbox() == box


def test_dissolve_blends_the_mark(resources: DoraResolver) -> None:
    base = base_image()
    fop = f"watermark/1/image/{RED_URL}/dissolve/50/gravity/NorthWest/dx/0/dy/0"
    result = decoded(run(fop, encode(base), resources)).convert("RGB")
    for point in ((0, 0), (19, 9), (10, 5)):
        got = result.getpixel(point)
        under = base.getpixel(point)
        assert isinstance(got, tuple) and isinstance(under, tuple)
        for channel in range(3):
            expected = (RED[channel] * 50 + under[channel] * 50) / 100
            assert abs(got[channel] - expected) <= 2


def test_transparent_parts_of_a_mark_show_the_image(resources: DoraResolver) -> None:
    base = base_image()
    url = b64("dora://marks/holed.png")
    result = decoded(
        run(f"watermark/1/image/{url}/gravity/NorthWest/dx/0/dy/0", encode(base), resources)
    )
    assert result.getpixel((2, 2))[:3] == RED  # type: ignore[index]
    assert result.getpixel((10, 2)) == base.getpixel((10, 2))


def test_ws_scales_the_mark_against_the_image(resources: DoraResolver) -> None:
    base = base_image()
    expected = {0: (150, 75), 1: (100, 50), 2: (100, 50), 3: (150, 75)}
    for wst, size in expected.items():
        fop = f"watermark/1/image/{RED_URL}/ws/0.5/wst/{wst}/gravity/NorthWest/dx/0/dy/0"
        result = decoded(run(fop, encode(base), resources)).convert("RGB")
        assert ImageChops.difference(result, base).getbbox() == (0, 0, *size), wst


def test_ws_follows_qiniu_documented_example() -> None:
    # Qiniu: a 91x61 mark on a 250x250 image with ws=1 is 372x250 (wst 0),
    # 250x167 (wst 1 and 2) and 372x250 (wst 3)
    assert scaled_mark_size((91, 61), (250, 250), 1.0, 0) == (372, 250)
    assert scaled_mark_size((91, 61), (250, 250), 1.0, 1) == (250, 167)
    assert scaled_mark_size((91, 61), (250, 250), 1.0, 2) == (250, 167)
    assert scaled_mark_size((91, 61), (250, 250), 1.0, 3) == (372, 250)
    assert scaled_mark_size((91, 61), (250, 250), 0.0, 0) == (91, 61)


def test_a_mark_larger_than_the_image_leaves_it_unmarked(resources: DoraResolver) -> None:
    base = base_image()
    url = b64("dora://marks/huge.png")
    result = decoded(run(f"watermark/1/image/{url}", encode(base), resources))
    assert ImageChops.difference(result.convert("RGB"), base).getbbox() is None
    scaled_past = f"watermark/1/image/{RED_URL}/ws/1/wst/0"  # 300x150 > 200 wide
    result = decoded(run(scaled_past, encode(base), resources))
    assert ImageChops.difference(result.convert("RGB"), base).getbbox() is None


def test_marks_on_jpeg_and_on_images_with_alpha(resources: DoraResolver) -> None:
    base = base_image()
    fop = f"watermark/1/image/{RED_URL}/gravity/Center/dx/0/dy/0"
    jpeg = decoded(run(fop, encode(base, "JPEG", quality=95), resources))
    assert jpeg.format == "JPEG"
    red_mean = ImageStat.Stat(jpeg.crop((92, 72, 108, 78))).mean
    assert red_mean[0] > 230 and red_mean[1] < 25 and red_mean[2] < 25
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    out = decoded(run(fop, encode(rgba), resources))
    assert out.mode == "RGBA"
    assert out.getpixel((100, 75)) == (*RED, 255)  # an opaque mark makes opaque pixels
    assert out.getpixel((5, 5))[3] == 128  # type: ignore[index]


def test_text_mark_renders_in_its_place_and_colour() -> None:
    base = Image.new("RGB", (W, H), (255, 255, 255))
    fop = f"watermark/2/text/{b64('Dora')}/fontsize/480/fill/{b64('#FF0000')}/gravity/NorthWest"
    result = decoded(run(fop, encode(base))).convert("RGB")
    box = ImageChops.difference(result, base).getbbox()
    assert box is not None
    left, top, right, bottom = box
    assert left >= 10 and top >= 10 and right < 10 + 80 and bottom < 10 + 40
    assert bottom - top >= 12  # 480 twips: a 24 px font
    red, green, blue = result.crop(box).split()
    reddish = ImageChops.multiply(
        red.point(lambda v: 255 if v > 200 else 0),
        ImageChops.multiply(
            green.point(lambda v: 255 if v < 60 else 0), blue.point(lambda v: 255 if v < 60 else 0)
        ),
    )
    assert ImageStat.Stat(reddish).sum[0] / 255 > 30


def test_text_mark_defaults_black_twelve_pixels_south_east() -> None:
    base = Image.new("RGB", (W, H), (255, 255, 255))
    result = decoded(run(f"watermark/2/text/{b64('dora')}", encode(base))).convert("L")
    box = ImageChops.difference(result, base.convert("L")).getbbox()
    assert box is not None
    left, top, right, bottom = box
    assert right <= W - 10 and bottom <= H - 10 and left > W - 60 and top > H - 35
    assert ImageStat.Stat(result.crop(box)).extrema[0][0] < 40  # black ink


def _ink(image: Image.Image) -> Image.Image:
    return image.getchannel("A").point(lambda value: 255 if value > 96 else 0)


def test_cjk_text_renders_glyphs_not_boxes() -> None:
    pixels = 48
    zhong = text.render("中", text.load_font("宋体", "中", pixels), (0, 0, 0, 255))
    unassigned = "\u0378"  # no font has a glyph: .notdef
    tofu = text.render(unassigned, text.load_font("宋体", unassigned, pixels), (0, 0, 0, 255))
    # the .notdef box of a Latin-only font, what "中" would look like without CJK fonts
    dejavu = ImageFont.truetype("DejaVuSans.ttf", pixels)
    latin_box = text.render("中", dejavu, (0, 0, 0, 255))
    ink = _ink(zhong)
    assert ImageStat.Stat(ink).sum[0] / 255 > 100  # real strokes
    for other in (tofu, latin_box):
        size = (max(ink.width, other.width), max(ink.height, other.height))
        a, b = Image.new("L", size), Image.new("L", size)
        a.paste(ink)
        b.paste(_ink(other))
        differing = ImageStat.Stat(ImageChops.difference(a, b)).sum[0] / 255
        inked = max(ImageStat.Stat(a).sum[0], ImageStat.Stat(b).sum[0]) / 255
        assert differing > 0.3 * inked


def test_chinese_in_a_latin_font_name_still_finds_a_cjk_font() -> None:
    found = text.find_font("Arial", "水印")
    assert found is not None
    font = ImageFont.truetype(found.path, 32, index=found.index)
    glyphs = [text.render(ch, font, (0, 0, 0, 255)) for ch in "水印"]
    assert _ink(glyphs[0]).tobytes() != _ink(glyphs[1]).tobytes()  # two glyphs, not two boxes
    assert text.font_pattern("a:b=c,\\d", "x").startswith("abcd:")  # no pattern injection


def test_cjk_text_mark_through_the_chain() -> None:
    base = Image.new("RGB", (W, H), (255, 255, 255))
    fop = f"watermark/2/text/{b64('七牛云存储')}/font/{b64('微软雅黑')}/fontsize/600/gravity/Center"
    result = decoded(run(fop, encode(base))).convert("L")
    box = ImageChops.difference(result, base.convert("L")).getbbox()
    assert box is not None
    assert box[2] - box[0] > 100  # five 30 px glyphs, side by side


def test_text_larger_than_the_image_leaves_it_unmarked() -> None:
    base = base_image()
    fop = f"watermark/2/text/{b64('far too long for this image ' * 3)}/fontsize/800"
    result = decoded(run(fop, encode(base)))
    assert ImageChops.difference(result.convert("RGB"), base).getbbox() is None


def test_watermark_3_applies_groups_in_order(resources: DoraResolver) -> None:
    base = base_image()
    red, blue = RED_URL, b64("dora://marks/blue.png")
    place = "gravity/NorthWest/dx/0/dy/0"
    over = decoded(
        run(f"watermark/3/image/{red}/{place}/image/{blue}/{place}", encode(base), resources)
    )
    under = decoded(
        run(f"watermark/3/image/{blue}/{place}/image/{red}/{place}", encode(base), resources)
    )
    assert over.getpixel((5, 5)) == BLUE and under.getpixel((5, 5)) == RED
    mixed = f"watermark/3/image/{red}/{place}/text/{b64('Hi')}/fill/{b64('blue')}/gravity/South"
    both = decoded(run(mixed, encode(base), resources)).convert("RGB")
    assert both.getpixel((5, 5)) == RED
    south = ImageChops.difference(both.crop((0, 100, W, H)), base.crop((0, 100, W, H))).getbbox()
    assert south is not None


@pytest.mark.parametrize(
    "fop",
    [
        f"watermark/3/dissolve/50/image/{RED_URL}",  # a parameter before the first group
        f"watermark/1/image/{RED_URL}/font/{b64('Arial')}",  # a text parameter on an image
        f"watermark/2/text/{b64('x')}/ws/0.5",
        f"watermark/1/image/{RED_URL}/dx/1/dx/2",
        f"watermark/1/image/{b64('dora://marks/note.txt')}",
        f"watermark/2/text/{b64('x')}/fill/{b64('notacolour')}",
        f"watermark/2/text/{b64('   ')}",
    ],
)
def test_bad_watermarks_are_400(resources: DoraResolver, fop: str) -> None:
    with pytest.raises(BadRequest):
        run(fop, encode(base_image()), resources)


def test_watermark_argument_errors_are_caught_by_the_parser() -> None:
    for fop in (
        "watermark/1/dissolve/50",
        "watermark/2/fontsize/300",
        f"watermark/1/image/{RED_URL}/dissolve/0",
        f"watermark/1/image/{RED_URL}/gravity/Up",
        f"watermark/1/image/{RED_URL}/ws/1.5",
        f"watermark/2/text/{b64('x')}/fill/{b64('#12345')}",
        "watermark/4/text/eA==",
    ):
        with pytest.raises(InvalidArgument):
            parse_fops(fop, BUILTIN_CATALOG)


def test_image_marks_need_a_resolver_and_an_existing_object(resources: DoraResolver) -> None:
    src = encode(base_image())
    with pytest.raises(BadRequest, match="resolver"):
        run(f"watermark/1/image/{RED_URL}", src)
    with pytest.raises(NotFound):
        run(f"watermark/1/image/{b64('dora://marks/none.png')}", src, resources)


# -- roundPic ---------------------------------------------------------------------------


def test_round_pic_makes_transparent_antialiased_corners_in_png() -> None:
    src = encode(base_image(), "JPEG", quality=90)
    output = run("roundPic/radius/30", src)
    assert output.mime == "image/png"
    result = decoded(output)
    assert result.format == "PNG" and result.mode == "RGBA" and result.size == (W, H)
    alpha = result.getchannel("A")
    for corner in ((0, 0), (W - 1, 0), (0, H - 1), (W - 1, H - 1)):
        assert alpha.getpixel(corner) == 0
    for inside in ((W // 2, H // 2), (30, 0), (0, 30), (W - 31, H - 1), (15, 15)):
        assert alpha.getpixel(inside) == 255
    partial = sum(count for value, count in enumerate(alpha.histogram()) if 0 < value < 255)
    assert partial > 4 * 30  # soft edges along all four arcs
    opaque = result.convert("RGB").crop((40, 40, 160, 110))
    assert psnr(opaque, base_image().crop((40, 40, 160, 110))) > 35


def test_round_pic_percentages_and_elliptical_radii() -> None:
    square = encode(Image.new("RGB", (100, 100), BLUE))
    circle = decoded(run("roundPic/radius/!50p", square)).getchannel("A")
    assert circle.getpixel((50, 0)) == 255 and circle.getpixel((50, 50)) == 255
    assert circle.getpixel((10, 10)) == 0  # outside the inscribed circle
    opaque = sum(circle.histogram()[128:]) / (100 * 100)
    assert abs(opaque - math.pi / 4) < 0.01
    wide = encode(Image.new("RGB", (200, 100), BLUE))
    ellipse = decoded(run("roundPic/radiusx/!50p/radiusy/!50p", wide)).getchannel("A")
    assert abs(sum(ellipse.histogram()[128:]) / (200 * 100) - math.pi / 4) < 0.01
    pill = decoded(run("roundPic/radius/!50p", wide)).getchannel("A")  # 50% of the short side
    assert pill.getpixel((100, 0)) == 255 and pill.getpixel((3, 3)) == 0
    capped = decoded(run("roundPic/radius/5000", wide)).getchannel("A")
    assert capped.getpixel((100, 50)) == 255 and capped.getpixel((0, 0)) == 0


def test_round_pic_keeps_existing_transparency() -> None:
    image = Image.new("RGBA", (60, 60), (*RED, 100))
    alpha = decoded(run("roundPic/radius/10", encode(image))).getchannel("A")
    assert alpha.getpixel((30, 30)) == 100 and alpha.getpixel((0, 0)) == 0


def test_round_pic_arguments() -> None:
    for fop in (
        "roundPic",
        "roundPic/radius/10/radiusx/5",
        "roundPic/radius/!101p",
        "roundPic/radius/-3",
    ):
        with pytest.raises(InvalidArgument):
            parse_fops(fop, BUILTIN_CATALOG)


# -- imageAve ---------------------------------------------------------------------------


def average(src: bytes) -> str:
    output = run("imageAve", src)
    assert output.mime == "application/json" and output.body is not None
    answer = json.loads(output.body)
    assert list(answer) == ["RGB"]
    value: str = answer["RGB"]
    return value


def test_image_ave_of_solid_and_two_colour_images() -> None:
    assert average(encode(Image.new("RGB", (64, 48), (12, 34, 56)))) == "0x0c2238"
    halves = Image.new("RGB", (200, 100), (200, 0, 0))
    halves.paste((0, 100, 0), (100, 0, 200, 100))
    assert average(encode(halves)) == "0x643200"


def test_image_ave_on_a_large_jpeg_is_computed_from_a_reduction() -> None:
    big = Image.new("RGB", (6000, 2000), (240, 10, 10))
    big.paste((10, 10, 240), (3000, 0, 6000, 2000))
    answer = average(encode(big, "JPEG", quality=90))
    red, green, blue = (int(answer[i : i + 2], 16) for i in (2, 4, 6))
    assert abs(red - 125) <= 4 and abs(green - 10) <= 4 and abs(blue - 125) <= 4


def test_image_ave_weights_by_opacity_and_follows_earlier_ops() -> None:
    image = Image.new("RGBA", (100, 100), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (50, 0, 100, 100))
    assert average(encode(image)) == "0x0000ff"
    draw_src = base_image()
    ImageDraw.Draw(draw_src).rectangle((0, 0, W, H), fill=(10, 200, 30))
    output = run("imageView2/2/w/50|imageAve", encode(draw_src))
    assert output.body == b'{"RGB":"0x0ac81e"}'


def test_every_frame_of_an_animation_is_marked() -> None:
    colours = ((255, 255, 255), (0, 255, 0), (0, 0, 255))
    frames = [Image.new("RGB", (60, 40), colour) for colour in colours]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    fop = f"watermark/2/text/{b64('Hi')}/fill/{b64('#FF0000')}/fontsize/300/gravity/NorthWest"
    result = decoded(run(fop, buf.getvalue()))
    assert result.format == "GIF" and getattr(result, "n_frames", 1) == 3
    for index in range(3):
        result.seek(index)
        frame = result.convert("RGB")
        reddish = (
            frame.crop((10, 10, 30, 30)).getchannel("R").point(lambda v: 255 if v > 200 else 0)
        )
        greenish = (
            frame.crop((10, 10, 30, 30)).getchannel("G").point(lambda v: 255 if v < 60 else 0)
        )
        assert ImageStat.Stat(ImageChops.multiply(reddish, greenish)).sum[0] > 0, index
        assert frame.getpixel((50, 35)) != (255, 0, 0)  # the rest keeps the frame's colour
