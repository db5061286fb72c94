"""Animated GIF, WebP and APNG through the chain: every frame transformed alike,
durations and loop kept, limits on frames and on pixels over all frames.

Frames are compared as shown (coalesced, composited on grey so transparency
counts) against the source's frames scaled the slow, obvious way.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from data import make_data
from imagesim import psnr
from PIL import Image

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image import decode
from dora.builtin_ops.image.animation import gif_disposals
from dora.builtin_ops.image.encode import encode
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import parse_fops
from dora.ops import Output

DATA = Path(__file__).parent / "data"
LIMITS = Limits()
GREY = (128, 128, 128, 255)


def run(fop: str, src: bytes, limits: Limits = LIMITS) -> Output:
    return run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, limits)


def body(output: Output) -> bytes:
    assert output.body is not None
    return output.body


def shown(data: bytes) -> list[Image.Image]:
    """Every frame as a viewer shows it (Pillow coalesces), RGBA."""
    image = Image.open(io.BytesIO(data))
    frames = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(image.convert("RGBA"))
    return frames


def durations(data: bytes) -> list[int]:
    image = Image.open(io.BytesIO(data))
    out = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        out.append(int(image.info.get("duration", 0)))
    return out


def on_grey(image: Image.Image) -> Image.Image:
    background = Image.new("RGBA", image.size, GREY)
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def assert_frames_match(result: bytes, source: bytes, size: tuple[int, int], floor: float) -> None:
    expected = [frame.resize(size, Image.Resampling.LANCZOS) for frame in shown(source)]
    actual = shown(result)
    assert len(actual) == len(expected)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.size == size
        assert psnr(on_grey(got), on_grey(want)) > floor, index


@pytest.fixture(scope="module")
def gif() -> bytes:
    return (DATA / "animated.gif").read_bytes()


@pytest.fixture(scope="module")
def webp() -> bytes:
    return (DATA / "animated.webp").read_bytes()


def test_an_animated_gif_stays_animated_through_imageview2(gif: bytes) -> None:
    output = run("imageView2/2/w/32", gif)
    assert output.mime == "image/gif" and output.meta["frames"] == 8
    result = body(output)
    assert durations(result) == make_data.GIF_DURATIONS
    assert Image.open(io.BytesIO(result)).info.get("loop") == 0
    assert_frames_match(result, gif, (32, 24), 24)


def test_transparency_survives_in_every_gif_frame(gif: bytes) -> None:
    frames = shown(body(run("imageView2/2/w/32", gif)))
    for index, frame in enumerate(frames):
        corner = frame.getpixel((31, 0))  # never painted: transparent throughout
        assert isinstance(corner, tuple) and corner[3] == 0, index
        bar = frame.getpixel((16, 22))
        assert isinstance(bar, tuple) and bar[3] == 255 and bar[2] > 150, index


def test_gif_to_webp_keeps_the_animation(gif: bytes) -> None:
    output = run("imageView2/2/w/32/format/webp/q/90", gif)
    assert output.mime == "image/webp"
    result = body(output)
    assert durations(result) == make_data.GIF_DURATIONS
    assert Image.open(io.BytesIO(result)).info.get("loop") == 0
    assert_frames_match(result, gif, (32, 24), 26)


def test_webp_to_gif_keeps_the_animation_and_its_loop_count(webp: bytes) -> None:
    result = body(run("imageView2/2/w/32/format/gif", webp))
    assert Image.open(io.BytesIO(result)).format == "GIF"
    assert durations(result) == make_data.WEBP_DURATIONS
    assert Image.open(io.BytesIO(result)).info.get("loop") == 2
    assert_frames_match(result, webp, (32, 24), 24)


def test_an_animated_webp_stays_animated_webp(webp: bytes) -> None:
    result = body(run("imageView2/1/w/24/h/24", webp))
    assert Image.open(io.BytesIO(result)).format == "WEBP"
    assert durations(result) == make_data.WEBP_DURATIONS
    assert len(shown(result)) == len(make_data.WEBP_DURATIONS)


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpg", "JPEG"), ("png", "PNG"), ("bmp", "BMP")])
def test_still_formats_get_the_first_frame(gif: bytes, fmt: str, pil_format: str) -> None:
    output = run(f"imageView2/2/w/32/format/{fmt}", gif)
    image = Image.open(io.BytesIO(body(output)))
    assert image.format == pil_format and getattr(image, "n_frames", 1) == 1
    assert "frames" not in output.meta
    first = shown(gif)[0].resize((32, 24), Image.Resampling.LANCZOS)
    if fmt == "png":
        assert psnr(on_grey(image), on_grey(first)) > 28
    else:  # flattened onto white
        white = Image.alpha_composite(Image.new("RGBA", first.size, "white"), first)
        assert psnr(image.convert("RGB"), white.convert("RGB")) > 28


def test_every_frame_follows_picture_apply(gif: bytes) -> None:
    picture = decode.open_picture(gif, LIMITS)
    assert picture.animated
    picture.apply(lambda image: image.transpose(Image.Transpose.ROTATE_90))
    picture.apply(lambda image: image.resize((24, 32)))
    result = body(encode(picture, LIMITS))
    frames = shown(result)
    assert len(frames) == 8
    for index, (got, source) in enumerate(zip(frames, shown(gif), strict=True)):
        want = source.transpose(Image.Transpose.ROTATE_90).resize((24, 32))
        assert psnr(on_grey(got), on_grey(want)) > 24, index


def test_other_ops_through_apply_keep_the_animation(gif: bytes) -> None:
    output = run("imageMogr2/rotate/90|imageView2/2/w/24", gif)
    assert output.meta["frames"] == 8 and output.meta["width"] == 24
    for index, (got, source) in enumerate(zip(shown(body(output)), shown(gif), strict=True)):
        want = source.transpose(Image.Transpose.ROTATE_270).resize(got.size)  # 90° clockwise
        assert psnr(on_grey(got), on_grey(want)) > 22, index


def test_an_image_set_without_apply_falls_back_to_a_still(gif: bytes) -> None:
    picture = decode.open_picture(gif, LIMITS)
    picture.image = decode.decode(picture).resize((16, 12))  # not replayable on other frames
    result = body(encode(picture, LIMITS))
    assert len(shown(result)) == 1 and Image.open(io.BytesIO(result)).size == (16, 12)


def test_more_frames_than_the_limit_is_a_400_unless_a_still_is_asked(gif: bytes) -> None:
    few = Limits(max_frames=5)
    with pytest.raises(BadRequest, match="8 frames: the limit is 5"):
        run("imageView2/2/w/32", gif, few)
    with pytest.raises(BadRequest, match="8 frames"):
        run("imageView2/2/w/32/format/webp", gif, few)
    still = Image.open(io.BytesIO(body(run("imageView2/2/w/32/format/png", gif, few))))
    assert still.size == (32, 24)


def test_an_animation_bomb_is_refused_before_its_frames_are_decoded() -> None:
    bomb = (DATA / "bomb-frames.gif").read_bytes()  # 60 frames of 2000x2000 in 1.4 kB
    assert len(bomb) < 2000
    start = time.perf_counter()
    with pytest.raises(BadRequest, match=r"60 frames of 2000x2000, 240000000 pixels"):
        run("imageView2/2/w/100", bomb)
    assert time.perf_counter() - start < 2.0
    small = Limits(max_source_pixels=1_000_000)
    with pytest.raises(BadRequest, match="pixels"):
        run("imageView2/2/w/100/format/jpg", bomb, small)  # the still alone is too large here


def test_the_rendered_frames_are_bounded_too() -> None:
    frames = [Image.new("RGB", (10, 10), (index * 20, 0, 0)) for index in range(10)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    picture = decode.open_picture(buf.getvalue(), LIMITS)
    picture.apply(lambda image: image.resize((100, 100)))  # an op that enlarges
    with pytest.raises(BadRequest, match="result is 10 frames of 100x100"):
        encode(picture, Limits(max_source_pixels=50_000))


def test_a_damaged_frame_ends_the_animation_there(gif: bytes) -> None:
    cut = gif[: len(gif) * 2 // 3]
    result = body(run("imageView2/2/w/32", cut))
    frames = shown(result)
    assert 2 <= len(frames) < 8
    for index, (got, source) in enumerate(zip(frames, shown(gif), strict=False)):
        want = source.resize((32, 24), Image.Resampling.LANCZOS)
        assert psnr(on_grey(got), on_grey(want)) > 24, index


def test_an_apng_becomes_an_animated_gif() -> None:
    frames = make_data.moving_box_frames(4)
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], duration=70, loop=0)
    result = body(run("imageView2/2/w/32/format/gif", buf.getvalue()))
    assert durations(result) == [70] * 4
    assert_frames_match(result, buf.getvalue(), (32, 24), 24)


def test_a_gif_that_plays_once_stays_so() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert "loop" not in Image.open(io.BytesIO(buf.getvalue())).info
    as_gif = Image.open(io.BytesIO(body(run("imageView2/2/w/4", buf.getvalue()))))
    assert (
        "loop" not in as_gif.info and len(shown(body(run("imageView2/2/w/4", buf.getvalue())))) == 2
    )
    as_webp = Image.open(io.BytesIO(body(run("imageView2/2/w/4/format/webp", buf.getvalue()))))
    assert as_webp.info.get("loop") == 1


def test_disposal_clears_only_where_a_pixel_turns_transparent() -> None:
    solid = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    hole = solid.copy()
    hole.putpixel((1, 1), (0, 0, 0, 0))
    assert gif_disposals([solid, solid, hole, solid]) == [1, 2, 1, 1]


@pytest.mark.parametrize(
    "transform",
    [lambda image: image.rotate(30, expand=True), lambda image: image.crop((4, 4, 40, 30))],
    ids=["rotate", "crop"],
)
def test_frames_rotated_or_cropped_with_transparency_show_as_the_source(
    gif: bytes, transform: Callable[[Image.Image], Image.Image]
) -> None:
    picture = decode.open_picture(gif, LIMITS)
    picture.apply(transform)
    result = body(encode(picture, LIMITS))
    # the GIF writer may merge frames that came out equal: compare what shows when
    starts = [sum(make_data.GIF_DURATIONS[:index]) for index in range(8)]
    for index, (got, source) in enumerate(zip(showing_at(result, starts), shown(gif), strict=True)):
        assert psnr(on_grey(got), on_grey(transform(source))) > 30, index


def showing_at(data: bytes, times: list[int]) -> list[Image.Image]:
    """The frame a viewer shows at each of ``times`` (milliseconds from the start)."""
    frames, ends, elapsed = shown(data), [], 0
    for duration in durations(data):
        elapsed += duration
        ends.append(elapsed)
    return [frames[next(i for i, end in enumerate(ends) if end > time)] for time in times]
