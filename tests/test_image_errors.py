"""Hostile and broken input: every failure of run_chain is a precise DoraError."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dora.builtin_ops import runner
from dora.builtin_ops.av import AV_SPECS
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.image.picture import Picture
from dora.builtin_ops.runner import parse_wire_stages, run_chain
from dora.config import Limits
from dora.errors import BadRequest, DoraError, InvalidArgument, PayloadTooLarge, ProcessingFailed
from dora.fop import Stage, parse_fops, parse_stage

LIMITS = Limits()


def run(fop: str, src: bytes, limits: Limits = LIMITS) -> bytes:
    body = run_chain(parse_fops(fop, BUILTIN_CATALOG).stages, src, limits).body
    assert body is not None
    return body


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose IHDR claims ``width × height``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    pixels = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 header is patched to claim ``width × height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), "gray"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    noise = Image.effect_noise((256, 192), 60).convert("RGB")
    return encode(noise, "JPEG", quality=90)


def test_not_an_image_is_a_400() -> None:
    with pytest.raises(BadRequest, match="unsupported or corrupt") as caught:
        run("imageView2/2/w/10", b"hello, this is text, not an image")
    assert caught.value.status == 400
    with pytest.raises(BadRequest, match="empty"):
        run("imageInfo", b"")


def test_a_corrupt_jpeg_header_is_a_400() -> None:
    with pytest.raises(BadRequest) as caught:
        run("imageView2/2/w/10", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    assert caught.value.status == 400


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_image_is_a_400(jpeg: bytes, fmt: str) -> None:
    src = jpeg if fmt == "JPEG" else encode(Image.open(io.BytesIO(jpeg)), "PNG")
    with pytest.raises(BadRequest, match=r"truncated|corrupt") as caught:
        run("imageView2/2/w/50", src[: len(src) // 2])
    assert caught.value.status == 400


def test_formats_outside_the_allowlist_are_not_parsed() -> None:
    ico = encode(Image.new("RGB", (16, 16)), "ICO")
    with pytest.raises(BadRequest, match="unsupported"):
        run("imageInfo", ico)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # expected, then refused
@pytest.mark.parametrize(
    ("src", "reason"),
    [
        (png_declaring(30000, 30000), "pixels"),  # Pillow's own bomb error is also a 400
        (png_declaring(16000, 9500), "150000000 pixels"),  # between Pillow's limit and ours
        (png_declaring(40000, 10), "30000 px"),
        (jpeg_declaring(30000, 30000), "pixels"),
    ],
    ids=["png-30000x30000", "png-152Mpx", "png-too-wide", "jpeg-30000x30000"],
)
def test_a_decompression_bomb_is_refused_from_its_header(src: bytes, reason: str) -> None:
    assert len(src) < 1000
    start = time.perf_counter()
    for fop in ("imageView2/2/w/100", "imageInfo"):
        with pytest.raises(BadRequest, match=reason):
            run(fop, src)
    assert time.perf_counter() - start < 1.0


def test_pillows_own_bomb_limit_is_a_400_when_ours_is_raised() -> None:
    generous = Limits(max_source_side=10**6, max_source_pixels=10**12)
    with pytest.raises(BadRequest, match="image too large"):
        run("imageInfo", png_declaring(30000, 30000), generous)


def test_a_bomb_allocates_nothing_large() -> None:
    """In a fresh process: the peak memory barely moves while the bomb is refused."""
    code = f"""
import resource, struct, zlib
from dora.builtin_ops.av import AV_SPECS
from dora.builtin_ops.catalog import BUILTIN_CATALOG
from dora.builtin_ops.runner import run_chain
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import parse_fops
src = {png_declaring(30000, 30000)!r}
stages = parse_fops("imageView2/1/w/300/h/200", BUILTIN_CATALOG).stages
try:
    run_chain(stages, b"\\x89PNG" + b"x" * 64, Limits())
except BadRequest:
    pass
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    run_chain(stages, src, Limits(max_source_side=10**6, max_source_pixels=10**12))
    run_chain(stages, src, Limits())
except BadRequest as exc:
    status = exc.status
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(status, after - before)
"""
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    status, grown_kib = done.stdout.split()
    assert status == "400"
    assert int(grown_kib) < 20 * 1024  # a decoded 30000x30000 grey image would be 900 MB


def test_a_source_over_the_byte_limit_is_a_413(jpeg: bytes) -> None:
    small = Limits(max_source_bytes=len(jpeg) - 1)
    for fop in ("imageView2/2/w/10", "imageInfo", "imageView2/2/w/10/ignore-error/1"):
        with pytest.raises(PayloadTooLarge) as caught:
            run(fop, jpeg, small)
        assert caught.value.status == 413
    assert run("imageInfo", jpeg, Limits(max_source_bytes=len(jpeg)))


def test_ignore_error_answers_the_original(jpeg: bytes) -> None:
    truncated = jpeg[: len(jpeg) // 2]
    output = run_chain(
        parse_fops("imageView2/2/w/50/ignore-error/1", BUILTIN_CATALOG).stages, truncated, LIMITS
    )
    assert (output.mime, output.body) == ("image/jpeg", truncated)
    wide = encode(Image.new("L", (12000, 2)), "PNG")
    output = run_chain(
        parse_fops("imageView2/2/ignore-error/1", BUILTIN_CATALOG).stages, wide, LIMITS
    )
    assert (output.mime, output.body) == ("image/png", wide)
    with pytest.raises(BadRequest):
        run("imageView2/2/w/50/ignore-error/0", truncated)


@pytest.mark.parametrize(
    ("fop", "op", "arg"),
    [
        ("imageView2/7/w/100", "imageView2", "mode"),
        ("imageView2/w/100", "imageView2", "mode"),
        ("imageView2/1/w/abc", "imageView2", "w"),
        ("imageView2/1/w/0", "imageView2", "w"),
        ("imageView2/1/h/-5", "imageView2", "h"),
        ("imageView2/1/w/10/format/jxl", "imageView2", "format"),
        ("imageView2/1/q/0", "imageView2", "q"),
        ("imageView2/1/q/101!", "imageView2", "q"),
        ("imageView2/1/interlace/2", "imageView2", "interlace"),
        ("imageView2/1/ignore-error/yes", "imageView2", "ignore-error"),
        ("imageView2/1/colour/red", "imageView2", "colour"),
        ("imageView2/1/w/10/w/20", "imageView2", "w"),
        ("imageView2/1/w", "imageView2", "w"),
        ("imageInfo/extra/1", "imageInfo", "extra"),
    ],
)
def test_bad_arguments_name_the_op_and_the_argument(fop: str, op: str, arg: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_stage(fop, BUILTIN_CATALOG)
    assert (caught.value.op, caught.value.arg, caught.value.status) == (op, arg, 400)
    assert op in caught.value.message and repr(arg) in caught.value.message


def test_an_unknown_op_is_a_400_naming_it() -> None:
    with pytest.raises(BadRequest, match="imageView3") as caught:
        parse_stage("imageView3/1/w/10", BUILTIN_CATALOG)
    assert caught.value.status == 400


def test_wire_stages_round_trip() -> None:
    chain = parse_fops("imageView2/1/w/300/h/200/q/80!|imageInfo", BUILTIN_CATALOG)
    wire = [[stage.op, stage.argtext] for stage in chain.stages]
    assert wire == [["imageView2", "1/w/300/h/200/q/80!"], ["imageInfo", ""]]
    assert parse_wire_stages(wire) == list(chain.stages)


@pytest.mark.parametrize(
    "wire",
    [
        [],
        [["imageView2"]],
        [["imageView2", "1/w/10", "extra"]],
        [["imageView2", 1]],
        ["imageView2/1/w/10"],
        [["imageView2/1", "w/10"]],
        [["imageInfo", ""]] * 21,
        [["imageView2", "1/w/" + "9" * 9000]],
        [["nosuchop", ""]],
        [["imageView2", "9"]],
    ],
)
def test_malformed_wire_stages_are_a_400(wire: list[list[object]]) -> None:
    with pytest.raises(BadRequest):
        parse_wire_stages(wire)  # type: ignore[arg-type]


def test_an_unexpected_exception_is_a_599_naming_the_op(
    jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(picture: Picture, stage: Stage, limits: Limits) -> None:
        raise KeyError("a bug")

    def hungry(picture: Picture, stage: Stage, limits: Limits) -> None:
        raise MemoryError

    stages = parse_fops("imageView2/2/w/10", BUILTIN_CATALOG).stages
    monkeypatch.setattr(runner, "IMAGE_OPS", MappingProxyType({"imageView2": broken}))
    with pytest.raises(ProcessingFailed, match="imageView2: KeyError") as caught:
        run_chain(stages, jpeg, LIMITS)
    assert caught.value.status == 599
    monkeypatch.setattr(runner, "IMAGE_OPS", MappingProxyType({"imageView2": hungry}))
    with pytest.raises(ProcessingFailed, match="out of memory"):
        run_chain(stages, jpeg, LIMITS)


def test_every_builtin_spec_has_an_implementation() -> None:
    implemented = set(runner.IMAGE_OPS) | set(runner.INFO_OPS) | set(AV_SPECS)
    assert set(BUILTIN_CATALOG) == implemented
    for name, spec in BUILTIN_CATALOG.items():
        assert spec.name == name
        assert (spec.kind == "info") == (name in runner.INFO_OPS)
        assert (spec.kind == "av") == (name in AV_SPECS)


def test_the_catalog_does_not_import_pillow() -> None:
    code = (
        "import sys, json, dora.builtin_ops.catalog as c; "
        "print(json.dumps([sorted(c.BUILTIN_CATALOG), 'PIL' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    names, pillow_loaded = json.loads(done.stdout)
    assert {"imageInfo", "imageView2", "avinfo"} <= set(names)
    assert pillow_loaded is False


def _samples() -> list[bytes]:
    photo = Image.effect_noise((48, 32), 40).convert("RGB")
    animated = [photo.quantize(8), photo.rotate(90).quantize(8)]
    return [
        encode(photo, "JPEG", quality=80),
        encode(photo, "JPEG", quality=80, progressive=True),
        encode(photo.convert("RGBA"), "PNG"),
        encode(animated[0], "GIF", save_all=True, append_images=animated[1:]),
        encode(photo, "WEBP"),
        encode(photo, "BMP"),
        encode(photo, "TIFF"),
    ]


SAMPLES = _samples()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt metadata
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(SAMPLES),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    fop=st.sampled_from(["imageView2/1/w/20/h/20/format/png", "imageInfo"]),
)
def test_fuzzed_images_fail_only_with_a_400(
    sample: bytes, flips: list[tuple[float, int]], cut: float | None, fop: str
) -> None:
    data = bytearray(sample)
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    try:
        run(fop, bytes(data))
    except DoraError as exc:
        assert exc.status == 400, exc.message
