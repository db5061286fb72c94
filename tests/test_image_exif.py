"""exif through run_chain: Qiniu's {"Tag": {"type", "val"}} with libexif's value texts."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image.exif import exif_tags
from dora.builtin_ops.image.exif_values import format_value
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import parse_fops


def run_exif(src: bytes, fop: str = "exif") -> dict[str, Any]:
    output = run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, Limits())
    assert output.mime == "application/json" and output.body is not None
    answer: dict[str, Any] = json.loads(output.body)
    return answer


def camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS 5D Mark IV"
    exif[0x0112] = 6
    exif[0x011A] = IFDRational(72, 1)
    exif[0x0128] = 2
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2020:01:02 03:04:05"
    sub[0x829A] = IFDRational(1, 100)
    sub[0x829D] = IFDRational(28, 10)
    sub[0x8827] = 200
    sub[0x9000] = b"0230"
    sub[0x920A] = IFDRational(50, 1)
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (IFDRational(39, 1), IFDRational(54, 1), IFDRational(1234, 100))
    return exif


def jpeg_with(exif: Image.Exif | None) -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", (32, 24), (90, 120, 150))
    if exif is None:
        image.save(buf, "JPEG")
    else:
        image.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_exif_of_a_camera_jpeg() -> None:
    tags = run_exif(jpeg_with(camera_exif()))
    assert tags["Make"] == {"type": 2, "val": "Canon"}
    assert tags["Model"] == {"type": 2, "val": "Canon EOS 5D Mark IV"}
    assert tags["Orientation"] == {"type": 3, "val": "Right-top"}
    assert tags["XResolution"] == {"type": 5, "val": "72"}
    assert tags["ResolutionUnit"] == {"type": 3, "val": "Inch"}
    assert tags["DateTimeOriginal"] == {"type": 2, "val": "2020:01:02 03:04:05"}
    assert tags["ExposureTime"] == {"type": 5, "val": "1/100 sec."}
    assert tags["FNumber"] == {"type": 5, "val": "f/2.8"}
    assert tags["ISOSpeedRatings"] == {"type": 3, "val": "200"}
    assert tags["ExifVersion"] == {"type": 7, "val": "Exif Version 2.3"}
    assert tags["FocalLength"] == {"type": 5, "val": "50.0 mm"}
    assert tags["GPSLatitudeRef"] == {"type": 2, "val": "N"}
    assert tags["GPSLatitude"] == {"type": 5, "val": "39, 54, 12.34"}
    # pointers to sub-directories are structure, not tags
    assert not {"ExifOffset", "GPSInfo", "ExifIfdPointer"} & set(tags)
    assert list(tags) == sorted(tags)


def test_exif_of_png_and_webp() -> None:
    for fmt in ("PNG", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, fmt, exif=camera_exif())
        assert run_exif(buf.getvalue())["Make"]["val"] == "Canon"


def test_no_exif_is_a_400() -> None:
    with pytest.raises(BadRequest, match="no exif data") as caught:
        run_exif(jpeg_with(None))
    assert caught.value.status == 400
    with pytest.raises(BadRequest, match="no exif data"):
        run_exif(jpeg_with(camera_exif()), "imageView2/2/w/10|exif")  # thumbnails drop EXIF


def _tiff_block(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A little-endian EXIF block: one IFD at offset 8; values > 4 bytes follow it."""
    head = b"II*\x00" + struct.pack("<L", 8)
    table_end = 8 + 2 + 12 * len(entries) + 4
    body = b""
    packed = b""
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            field = value.ljust(4, b"\x00")
        else:
            field = struct.pack("<L", table_end + len(body))
            body += value
        packed += struct.pack("<HHL", tag, kind, count) + field
    return head + struct.pack("<H", len(entries)) + packed + b"\x00" * 4 + body + extra


def test_little_endian_blocks_and_libexif_value_texts() -> None:
    shutter = struct.pack("<ll", 7660, 1000)  # 7.66 EV
    bias = struct.pack("<ll", -2, 3)
    block = _tiff_block(
        [
            (0x9201, 10, 1, shutter),
            (0x9204, 10, 1, bias),
            (0x9209, 3, 1, struct.pack("<H", 0x10)),
            (0xA001, 3, 1, struct.pack("<H", 1)),
            (0x9101, 7, 4, b"\x01\x02\x03\x00"),
            (0x927C, 7, 10, b"0123456789"),
            (0xA002, 4, 1, struct.pack("<L", 640)),
            (0x9999, 2, 2, b"x\x00"),  # a tag libexif has no name for
        ]
    )
    tags = exif_tags(b"Exif\x00\x00" + block)
    assert tags["ShutterSpeedValue"] == {"type": 10, "val": "7.66 EV (1/202 sec.)"}
    assert tags["ExposureBiasValue"] == {"type": 10, "val": "-0.67 EV"}
    assert tags["Flash"] == {"type": 3, "val": "Flash did not fire, compulsory flash mode"}
    assert tags["ColorSpace"] == {"type": 3, "val": "sRGB"}
    assert tags["ComponentsConfiguration"] == {"type": 7, "val": "Y Cb Cr -"}
    assert tags["MakerNote"] == {"type": 7, "val": "10 bytes undefined data"}
    assert tags["PixelXDimension"] == {"type": 4, "val": "640"}
    assert len(tags) == 7


def test_generic_rational_text_follows_the_denominator() -> None:
    def rational(num: int, den: int) -> str:
        return format_value("XResolution", 5, struct.pack(">LL", num, den), ">")

    assert rational(180, 1) == "180"
    assert rational(2, 1) == " 2"  # libexif's "%2.0f"
    assert rational(100, 100) == "1.00"
    assert rational(10909091, 1000) == "10909.091"
    assert rational(5, 0) == "5/0"
    assert format_value("ExposureTime", 5, struct.pack(">LL", 2, 1), ">") == "2 sec."
    assert format_value("Orientation", 3, struct.pack(">H", 9), ">").startswith("Internal error")


def test_damaged_and_looping_blocks_are_bounded() -> None:
    # the Exif pointer points back at IFD0: each directory is read once
    looping = _tiff_block([(0x010F, 2, 4, b"Sony"), (0x8769, 4, 1, struct.pack("<L", 8))])
    assert exif_tags(looping) == {"Make": {"type": 2, "val": "Sony"}}
    # a value pointing past the end is skipped, not read
    block = _tiff_block([(0x0110, 2, 100, b"")])
    outside = block[:18] + struct.pack("<L", 10_000) + block[22:]  # the entry's value offset
    assert exif_tags(outside) == {}
    with pytest.raises(BadRequest):
        exif_tags(b"Exif\x00\x00garbage")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff")
    with pytest.raises(BadRequest, match="no exif data"):
        run_exif(buf.getvalue())
