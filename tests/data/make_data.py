"""Make the small real-world image files of tests/data: `.venv/bin/python tests/data/make_data.py`.

Every file is made with Pillow or by hand from the file formats' specs, so
the folder is reproducible and small. The ICC profiles are real ICC v2
profiles written here, because no CMYK profile ships with Debian's free
profile packages:

* ``ink.icc``: a CMYK output profile (an ``A2B0`` 9×9×9×9 lookup table to
  CIELAB) of a simple, documented ink model, so a test can compute the sRGB
  colour a CMYK patch must become without asking LittleCMS;
* ``display-p3.icc``: Display P3 (the P3 primaries, D65, the sRGB curve), the
  profile of most phone photos;
* ``swapped.icc``: an RGB profile whose red and green primaries are sRGB's
  green and red, so converted pixels visibly change.

The ink model (linear light, relative to the paper, per sRGB channel): a
coverage ``t`` of an ink with full-coverage reflectance ``r`` multiplies the
light by ``1 - t (1 - r)``; inks multiply together. See :data:`INKS`.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

# Full-coverage reflectance of each ink in linear sRGB (R, G, B), relative to the paper.
INKS = {
    "C": (0.10, 0.50, 0.85),
    "M": (0.75, 0.10, 0.40),
    "Y": (0.90, 0.80, 0.08),
    "K": (0.03, 0.03, 0.03),
}
# sRGB's colorants adapted to D50 (the ICC's PCS illuminant), as in every sRGB profile.
SRGB_D50 = ((0.4360747, 0.3850649, 0.1430804), (0.2225045, 0.7168786, 0.0606169),
            (0.0139322, 0.0971045, 0.7141733))  # fmt: skip
D50 = (0.9642, 1.0, 0.8249)
# The displayed picture of the orientation files: four coloured quadrants.
QUADRANTS = {"tl": (220, 30, 30), "tr": (30, 180, 30), "bl": (30, 30, 220), "br": (240, 220, 40)}
# CMYK patches of the CMYK files, 16 px wide each, left to right.
CMYK_PATCHES = (
    ("paper", (0, 0, 0, 0)),
    ("C", (255, 0, 0, 0)),
    ("M", (0, 255, 0, 0)),
    ("Y", (0, 0, 255, 0)),
    ("K", (0, 0, 0, 255)),
    ("CM", (255, 255, 0, 0)),
)
# Orientation n: the transpose that shows the stored pixels upright (EXIF semantics).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}  # fmt: skip


# --- colour science ---------------------------------------------------------------------------


def srgb_encode(linear: float) -> int:
    """Linear light (0-1) to an 8-bit sRGB value."""
    linear = min(1.0, max(0.0, linear))
    value = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return round(value * 255)


def srgb_decode(value: float) -> float:
    """An sRGB value (0-1) to linear light."""
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def ink_linear_rgb(cmyk: Sequence[float]) -> tuple[float, float, float]:
    """The ink model: coverages (0-1) of C, M, Y, K to linear sRGB relative to the paper."""
    light = [1.0, 1.0, 1.0]
    for coverage, ink in zip(cmyk, INKS.values(), strict=True):
        for channel in range(3):
            light[channel] *= 1 - coverage * (1 - ink[channel])
    return light[0], light[1], light[2]


def _lab(linear: Sequence[float]) -> tuple[float, float, float]:
    xyz = [sum(SRGB_D50[row][col] * linear[col] for col in range(3)) for row in range(3)]

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = (f(xyz[i] / D50[i]) for i in range(3))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def _mat_mul(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def _inverse(m: Sequence[Sequence[float]]) -> list[list[float]]:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return [[(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
            [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
            [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det]]  # fmt: skip


def rgb_to_xyz(
    primaries: Sequence[tuple[float, float]], white: tuple[float, float]
) -> list[list[float]]:
    """The RGB → XYZ matrix of an RGB space from its primaries' and white's xy."""
    columns = [[x / y, 1.0, (1 - x - y) / y] for x, y in primaries]
    m = [[columns[j][i] for j in range(3)] for i in range(3)]
    wx, wy = white
    w = [wx / wy, 1.0, (1 - wx - wy) / wy]
    inv = _inverse(m)
    s = [sum(inv[i][k] * w[k] for k in range(3)) for i in range(3)]
    return [[m[i][j] * s[j] for j in range(3)] for i in range(3)]


BRADFORD = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))
D65_XY = (0.3127, 0.3290)
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
SRGB_PRIMARIES = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))


def d65_to_d50(m: Sequence[Sequence[float]]) -> list[list[float]]:
    """Adapt an RGB → XYZ(D65) matrix to D50 with the Bradford transform (as ICC profiles do)."""
    d65 = [D65_XY[0] / D65_XY[1], 1.0, (1 - D65_XY[0] - D65_XY[1]) / D65_XY[1]]
    src = [sum(BRADFORD[i][k] * d65[k] for k in range(3)) for i in range(3)]
    dst = [sum(BRADFORD[i][k] * D50[k] for k in range(3)) for i in range(3)]
    scale = [[dst[i] / src[i] if i == j else 0.0 for j in range(3)] for i in range(3)]
    adapt = _mat_mul(_inverse(BRADFORD), _mat_mul(scale, BRADFORD))
    return _mat_mul(adapt, m)


# --- ICC v2 writer ----------------------------------------------------------------------------


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: Sequence[float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">IIHB", 0, 0, 0, 0)
        + b"\0" * 67
    )


def _text_tag(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def _curve_tag(func: Callable[[float], float], entries: int = 1024) -> bytes:
    values = [round(func(i / (entries - 1)) * 65535) for i in range(entries)]
    return b"curv\0\0\0\0" + struct.pack(f">I{entries}H", entries, *values)


def _lut16_tag(grid: int, func: Callable[[Sequence[float]], tuple[float, float, float]]) -> bytes:
    """An ``mft2`` tag: 4 inputs → Lab, identity curves, a ``grid``⁴ table of ``func``."""
    head = b"mft2\0\0\0\0" + bytes([4, 3, grid, 0])
    matrix = b"".join(_s15(1.0 if i in (0, 4, 8) else 0.0) for i in range(9))
    curves_in = struct.pack(">HH", 2, 2) + struct.pack(">8H", *([0, 65535] * 4))
    table = bytearray()
    steps = range(grid)
    for c in steps:  # the first input varies slowest
        for m in steps:
            for y in steps:
                for k in steps:
                    lab = func([c / (grid - 1), m / (grid - 1), y / (grid - 1), k / (grid - 1)])
                    encoded = (
                        lab[0] * 65280 / 100,  # ICC v2 16-bit Lab: 0xFF00 is L* 100
                        (lab[1] + 128) * 256,
                        (lab[2] + 128) * 256,
                    )
                    table += struct.pack(">3H", *(min(65535, max(0, round(v))) for v in encoded))
    curves_out = struct.pack(">6H", *([0, 65535] * 3))
    return head + matrix + curves_in + bytes(table) + curves_out


def icc_profile(
    device_class: bytes, space: bytes, pcs: bytes, tags: Sequence[tuple[bytes, bytes]]
) -> bytes:
    """Assemble an ICC v2 profile from (signature, data) tags; equal data is stored once."""
    offset = 128 + 4 + 12 * len(tags)
    table, body, placed = b"", b"", {}
    for signature, data in tags:
        if data not in placed:
            placed[data] = offset + len(body)
            body += data + b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", placed[data], len(data))
    size = offset + len(body)
    header = (
        struct.pack(">I4sI", size, b"lcms", 0x02100000)
        + device_class
        + space
        + pcs
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 4  # platform
        + struct.pack(">I", 0)  # flags
        + b"\0" * 4  # manufacturer
        + struct.pack(">I", 0)  # model
        + b"\0" * 8  # attributes
        + struct.pack(">I", 0)  # rendering intent: perceptual
        + b"".join(_s15(v) for v in D50)
        + b"dora"  # creator
        + b"\0" * 44  # profile ID and reserved
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def ink_profile() -> bytes:
    """The CMYK output profile of the ink model."""
    return icc_profile(
        b"prtr",
        b"CMYK",
        b"Lab ",
        [
            (b"desc", _desc_tag("Dora test ink (CMYK)")),
            (b"cprt", _text_tag("No copyright, use freely")),
            (b"wtpt", _xyz_tag(D50)),
            (b"A2B0", _lut16_tag(9, lambda cmyk: _lab(ink_linear_rgb(cmyk)))),
        ],
    )


def matrix_profile(description: str, columns: Sequence[Sequence[float]]) -> bytes:
    """An RGB display profile: D50 colorant columns and the sRGB curve on each channel."""
    curve = _curve_tag(srgb_decode)
    return icc_profile(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        [
            (b"desc", _desc_tag(description)),
            (b"cprt", _text_tag("No copyright, use freely")),
            (b"wtpt", _xyz_tag(D50)),
            (b"rXYZ", _xyz_tag([row[0] for row in columns])),
            (b"gXYZ", _xyz_tag([row[1] for row in columns])),
            (b"bXYZ", _xyz_tag([row[2] for row in columns])),
            (b"rTRC", curve),
            (b"gTRC", curve),
            (b"bTRC", curve),
        ],
    )


def p3_profile() -> bytes:
    return matrix_profile("Display P3 (Dora test)", d65_to_d50(rgb_to_xyz(P3_PRIMARIES, D65_XY)))


def swapped_profile() -> bytes:
    swapped = [[row[1], row[0], row[2]] for row in SRGB_D50]
    return matrix_profile("Swapped red and green (Dora test)", swapped)


# --- hand-made PNGs ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(
    width: int, height: int, colour_type: int, pixel: Callable[[int, int], Sequence[int]]
) -> bytes:
    """A 16-bit PNG (colour type 0, 2, 4 or 6) whose sample values come from ``pixel(x, y)``."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            for sample in pixel(x, y):
                rows += struct.pack(">H", sample)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _chunk(b"IEND", b"")
    )


def tiff16_big_endian(grey16: Image.Image) -> bytes:
    """A 16-bit grey TIFF in Motorola byte order (Pillow opens it as ``I;16B``)."""
    big = Image.frombytes("I;16B", grey16.size, grey16.tobytes("raw", "I;16B"))
    return _save(big, "TIFF")


def png_declaring(width: int, height: int) -> bytes:
    """A decompression bomb by its header: a tiny PNG whose IHDR claims ``width × height``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + _chunk(b"IEND", b"")
    )


# --- the files --------------------------------------------------------------------------------


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """The displayed picture of the orientation files."""
    image = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    image.paste(QUADRANTS["tl"], (0, 0, half_w, half_h))
    image.paste(QUADRANTS["tr"], (half_w, 0, width, half_h))
    image.paste(QUADRANTS["bl"], (0, half_h, half_w, height))
    image.paste(QUADRANTS["br"], (half_w, half_h, width, height))
    return image


def orientation_jpeg(orientation: int) -> bytes:
    """A JPEG whose stored pixels, turned by EXIF ``orientation``, show :func:`quadrants`."""
    stored = quadrants()
    if orientation in UPRIGHT:
        upright = UPRIGHT[orientation]
        stored = stored.transpose(_INVERSE.get(upright, upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=92, exif=exif.tobytes())


def cmyk_strip() -> Image.Image:
    image = Image.new("CMYK", (16 * len(CMYK_PATCHES), 16))
    for index, (_, value) in enumerate(CMYK_PATCHES):
        image.paste(value, (16 * index, 0, 16 * index + 16, 16))
    return image


def _strip_adobe(jpeg: bytes) -> bytes:
    """Remove the APP14 "Adobe" segment, leaving a plain (non-inverted) CMYK JPEG."""
    start = jpeg.index(b"Adobe") - 4  # the APP14 marker and its length come first
    assert jpeg[start : start + 2] == b"\xff\xee"
    length = struct.unpack(">H", jpeg[start + 2 : start + 4])[0]
    return jpeg[:start] + jpeg[start + 2 + length :]


def plain_cmyk_jpeg() -> bytes:
    """A CMYK JPEG without the Adobe marker: its samples are stored as plain ink amounts.

    Pillow writes CMYK inverted (Adobe's convention) and marks it, so the
    strip is inverted before writing and the marker removed after.
    """
    inverted = Image.merge("CMYK", [band.point(lambda v: 255 - v) for band in cmyk_strip().split()])
    return _strip_adobe(_save(inverted, "JPEG", quality=95))


def moving_box_frames(count: int, size: tuple[int, int] = (64, 48)) -> list[Image.Image]:
    """Frames of a red box crossing a transparent canvas over a fixed blue bar."""
    frames = []
    for index in range(count):
        frame = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(frame)
        draw.rectangle((0, size[1] - 8, size[0] - 1, size[1] - 1), fill=(20, 40, 200, 255))
        x = index * (size[0] - 16) // max(1, count - 1)
        draw.rectangle((x, 8, x + 15, 23), fill=(220, 20, 20, 255))
        frames.append(frame)
    return frames


GIF_DURATIONS = [40, 60, 80, 100, 120, 140, 160, 180]
WEBP_DURATIONS = [50, 100, 150, 200, 250, 300]


def files() -> dict[str, bytes]:
    """Every file of tests/data by name."""
    out: dict[str, bytes] = {}
    for orientation in range(1, 9):
        out[f"orientation-{orientation}.jpg"] = orientation_jpeg(orientation)
    gradient = Image.linear_gradient("L").resize((96, 64))
    colour = Image.merge(
        "RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)
    )
    out["grey.jpg"] = _save(gradient, "JPEG", quality=85)
    out["progressive.jpg"] = _save(colour, "JPEG", quality=80, progressive=True)
    fractal = Image.effect_mandelbrot((256, 192), (-2.0, -1.2, 1.0, 1.2), 64)
    whole = _save(
        Image.merge("RGB", (fractal, fractal.rotate(180), gradient.resize(fractal.size))),
        "JPEG",
        quality=85,
    )
    out["truncated.jpg"] = whole[: len(whole) * 6 // 10]  # cut inside the scan data
    ink = ink_profile()
    out["ink.icc"] = ink
    out["display-p3.icc"] = p3_profile()
    out["swapped.icc"] = swapped_profile()
    out["cmyk-adobe.jpg"] = _save(cmyk_strip(), "JPEG", quality=95)
    out["cmyk-icc.jpg"] = _save(cmyk_strip(), "JPEG", quality=95, icc_profile=ink)
    out["cmyk-plain.jpg"] = plain_cmyk_jpeg()
    p3_patch = Image.new("RGB", (32, 16), (200, 60, 30))
    p3_patch.paste((40, 160, 90), (16, 0, 32, 16))
    out["p3.jpg"] = _save(p3_patch, "JPEG", quality=95, icc_profile=out["display-p3.icc"])
    swapped = Image.new("RGB", (32, 16), (200, 60, 30))
    out["swapped.png"] = _save(swapped, "PNG", icc_profile=out["swapped.icc"])
    grey16 = Image.new("I;16", (32, 8))
    grey16.putdata([x * 2114 for _ in range(8) for x in range(32)])  # 0 .. 65534
    out["png16-grey.png"] = _save(grey16, "PNG")
    out["png16-rgb.png"] = png16(32, 8, 2, lambda x, y: (x * 2114, 65535 - x * 2114, 32896))
    out["png16-rgba.png"] = png16(32, 8, 6, lambda x, y: (65535, 0, 0, x * 2114))
    out["tiff16-grey.tif"] = tiff16_big_endian(grey16)
    trns = Image.new("P", (32, 16), 0)
    trns.putpalette([255, 255, 255, 200, 0, 0, 0, 0, 200])
    trns.paste(1, (16, 0, 32, 16))
    trns.paste(2, (0, 8, 16, 16))
    out["palette-trns.png"] = _save(trns, "PNG", transparency=0)
    gif_frames = moving_box_frames(len(GIF_DURATIONS))
    out["animated.gif"] = _save(
        gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:],
        duration=GIF_DURATIONS, loop=0, disposal=2,
    )  # fmt: skip
    webp_frames = moving_box_frames(len(WEBP_DURATIONS))
    out["animated.webp"] = _save(
        webp_frames[0], "WEBP", save_all=True, append_images=webp_frames[1:],
        duration=WEBP_DURATIONS, loop=2, lossless=True,
    )  # fmt: skip
    out["bomb.png"] = png_declaring(100_000, 100_000)
    out["bomb-frames.gif"] = frames_bomb_gif(2000, 2000, 60)
    try:  # pillow-heif (optional) writes HEIC; without it the committed file stays
        import pillow_heif  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        pillow_heif.register_heif_opener()
        out["quadrants.heic"] = _save(quadrants(), "HEIF", quality=80)
    except ImportError:
        pass
    return out


def frames_bomb_gif(width: int, height: int, frames: int) -> bytes:
    """A small GIF of ``frames`` 1×1 images on a ``width × height`` canvas.

    Each frame is tiny to store, but decoded (coalesced) every frame is a
    full canvas: ``frames × width × height`` pixels.
    """
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0))
    out += bytes([0, 0, 0, 255, 255, 255])  # a two-colour global table
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for index in range(frames):
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 100 ms
        out += b"\x2c" + struct.pack("<HHHHB", index % width, 0, 1, 1, 0)
        out += b"\x02\x02\x4c\x01\x00"  # LZW: min code size 2, one pixel of colour 1
    out += b"\x3b"
    return bytes(out)


def main() -> None:
    made = files()
    for name, data in made.items():
        (HERE / name).write_bytes(data)
    print(f"{len(made)} files, {sum(map(len, made.values()))} bytes in {HERE}")


if __name__ == "__main__":
    main()
