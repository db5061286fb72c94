"""imageInfo through run_chain: Qiniu's fields and values, from headers only."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import GifImagePlugin, Image

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image.frames import count_gif_frames
from dora.builtin_ops.image.info import INFO_MAX_FRAMES
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import parse_fops

LIMITS = Limits()


def info(src: bytes, fop: str = "imageInfo") -> dict[str, Any]:
    output = run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, LIMITS)
    assert output.mime == "application/json" and output.body is not None
    result: dict[str, Any] = json.loads(output.body)
    return result


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def test_jpeg_fields_in_qiniu_order() -> None:
    src = encode(Image.new("RGB", (64, 48), "teal"), "JPEG")
    output = run_chain(parse_fops("imageInfo", BUILTIN_CATALOG).stages, src, LIMITS)
    assert output.body == (
        b'{"size":%d,"format":"jpeg","width":64,"height":48,"colorModel":"ycbcr"}' % len(src)
    )


@pytest.mark.parametrize(
    ("orientation", "name"),
    [(1, "Top-left"), (3, "Bottom-right"), (6, "Right-top"), (8, "Left-bottom")],
)
def test_orientation_is_named_and_sizes_are_as_stored(orientation: int, name: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = encode(Image.new("RGB", (64, 48)), "JPEG", exif=exif.tobytes())
    result = info(src)
    assert result["orientation"] == name
    assert (result["width"], result["height"]) == (64, 48)


def test_no_orientation_without_the_exif_tag() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Dora camera"  # Make, but no Orientation
    assert "orientation" not in info(encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif.tobytes()))
    assert "orientation" not in info(encode(Image.new("RGB", (8, 8)), "PNG"))


def _palette16() -> Image.Image:
    image = Image.new("P", (30, 20))
    image.putpalette(bytes(range(48)))  # 16 colours
    return image


@pytest.mark.parametrize(
    ("image", "fmt", "model"),
    [
        (Image.new("RGB", (10, 10)), "PNG", "rgba"),
        (Image.new("RGBA", (10, 10)), "PNG", "nrgba"),
        (Image.new("L", (10, 10)), "PNG", "gray"),
        (Image.new("LA", (10, 10)), "PNG", "nrgba"),
        (Image.new("I;16", (10, 10)), "PNG", "gray16"),
        (_palette16(), "PNG", "palette16"),
        (Image.new("L", (10, 10)), "JPEG", "gray"),
        (Image.new("CMYK", (10, 10)), "JPEG", "cmyk"),
        (Image.new("RGB", (10, 10)), "WEBP", "ycbcr"),
        (Image.new("RGBA", (10, 10), (1, 2, 3, 4)), "WEBP", "nycbcra"),
        (Image.new("RGB", (10, 10)), "BMP", "rgba"),
        (Image.new("RGB", (10, 10)), "TIFF", "rgba"),
    ],
)
def test_color_models(image: Image.Image, fmt: str, model: str) -> None:
    result = info(encode(image, fmt))
    assert result["colorModel"] == model
    assert result["format"] == fmt.lower()


def test_lossless_webp_is_nrgba() -> None:
    assert info(encode(Image.new("RGB", (10, 10)), "WEBP", lossless=True))["colorModel"] == "nrgba"


def test_gif_reports_its_frames() -> None:
    frames = [Image.new("RGB", (30, 20), colour).quantize(4) for colour in ("red", "lime", "blue")]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    result = info(animated)
    assert result["frameNumber"] == 3
    assert result["colorModel"] == "palette4"
    assert (result["format"], result["width"], result["height"]) == ("gif", 30, 20)
    assert info(encode(frames[0], "GIF"))["frameNumber"] == 1


def test_animated_webp_reports_frames_still_images_do_not() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "lime")]
    animated = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert info(animated)["frameNumber"] == 2
    assert "frameNumber" not in info(encode(frames[0], "WEBP"))


def test_info_after_image_ops_describes_their_output() -> None:
    src = encode(Image.new("RGB", (400, 300), "navy"), "JPEG")
    alone = run_chain(
        parse_fops("imageView2/2/w/100/format/png", BUILTIN_CATALOG).stages, src, LIMITS
    ).body
    assert alone is not None
    result = info(src, "imageView2/2/w/100/format/png|imageInfo")
    assert result == {
        "size": len(alone),
        "format": "png",
        "width": 100,
        "height": 75,
        "colorModel": "rgba",
    }


def test_info_must_end_the_chain() -> None:
    src = encode(Image.new("RGB", (40, 30)), "JPEG")
    with pytest.raises(BadRequest, match="last op"):
        info(src, "imageInfo|imageView2/2/w/10")


_GIF_HEADER = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
_GIF_FRAME = (
    b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control extension
    + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # image descriptor, 1x1
    + b"\x02\x02\x44\x01\x00"  # LZW code size, one sub-block, terminator
)


def tiny_frames_gif(count: int) -> bytes:
    return _GIF_HEADER + _GIF_FRAME * count + b";"


@pytest.mark.parametrize("count", [1, 2, 7, 300])
def test_gif_frame_count_agrees_with_pillow(count: int) -> None:
    data = tiny_frames_gif(count)
    image = Image.open(io.BytesIO(data))
    assert isinstance(image, GifImagePlugin.GifImageFile)
    assert count_gif_frames(data, 10_000) == image.n_frames == count
    assert info(data)["frameNumber"] == count


def test_a_truncated_gif_counts_the_frames_before_the_damage() -> None:
    data = tiny_frames_gif(5)
    assert count_gif_frames(data[: len(_GIF_HEADER) + 3 * len(_GIF_FRAME) + 4], 100) == 3


def test_a_gif_of_too_many_frames_is_refused_quickly() -> None:
    data = tiny_frames_gif(INFO_MAX_FRAMES * 20)  # 4 MB of one-pixel frames
    with pytest.raises(BadRequest, match="frames"):
        info(data)
    with pytest.raises(BadRequest, match="frames"):
        count_gif_frames(data, 50)
