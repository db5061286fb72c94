"""EXIF tag names and values as text, the way libexif writes them (and so Qiniu).

Qiniu's ``exif`` answer is libexif's view of a file: each tag by its libexif
name, its value as ``exif_entry_get_value`` formats it — ``"1/200 sec."``
for an exposure time, ``"f/5.6"`` for an f-number, ``"Top-left"`` for an
orientation, ``"Exif Version 2.2"``, ``"Inch"``, plain numbers with as many
decimals as the rational's denominator has digits. Tags outside these tables
keep the generic formatting of their type.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

from dora.builtin_ops.image.exif_names import (
    ENUM_BY_INDEX,
    ENUM_BY_VALUE,
    EXIF_VERSIONS,
    FLASHPIX_VERSIONS,
)

# type number -> (struct code of one number, size of one value); a rational
# is two numbers; 2 ASCII and 7 UNDEFINED are bytes
TYPE_FORMATS: Mapping[int, tuple[str, int]] = {
    1: ("B", 1),
    2: ("B", 1),
    3: ("H", 2),
    4: ("L", 4),
    5: ("L", 8),
    6: ("b", 1),
    7: ("B", 1),
    8: ("h", 2),
    9: ("l", 4),
    10: ("l", 8),
    11: ("f", 4),
    12: ("d", 8),
}
MAX_VALUE_CHARS = 1024  # libexif's buffer; a long list is cut, as there
MAX_COMPONENTS = 256

_COMPONENTS = {0: "-", 1: "Y", 2: "Cb", 3: "Cr", 4: "R", 5: "G", 6: "B"}


def numbers(kind: int, raw: bytes, endian: str) -> list[int] | list[float]:
    """The integers (or floats) of an integer- or float-typed entry."""
    code, size = TYPE_FORMATS[kind]
    count = min(len(raw) // size, MAX_COMPONENTS)
    unit = struct.calcsize("<" + code)  # standard sizes; a rational is two numbers
    return list(struct.unpack(f"{endian}{count * size // unit}{code}", raw[: count * size]))


def rationals(kind: int, raw: bytes, endian: str) -> list[tuple[int, int]]:
    """The (numerator, denominator) pairs of a RATIONAL or SRATIONAL entry."""
    flat = numbers(kind, raw, endian)
    return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def ascii_text(raw: bytes) -> str:
    """An ASCII entry up to its NUL (UTF-8 where cameras write it, else Latin-1)."""
    text = raw.split(b"\x00", 1)[0]
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return text.decode("latin-1")


def _rational_text(pair: tuple[int, int]) -> str:
    numerator, denominator = pair
    if not denominator:
        return f"{numerator}/{denominator}"
    # libexif: as many decimals as the denominator has digits, less one
    decimals = max(0, int(math.log10(abs(denominator)) - 0.08 + 1.0))
    return f"{numerator / denominator:2.{decimals}f}"


def _value(pair: tuple[int, int]) -> float:
    return pair[0] / pair[1] if pair[1] else 0.0


def _generic(kind: int, raw: bytes, endian: str) -> str:
    if kind == 2:
        return ascii_text(raw)
    if kind == 7:
        return f"{len(raw)} bytes undefined data"
    if kind in (1, 6):
        return ", ".join(f"0x{int(value) & 0xFF:02x}" for value in numbers(kind, raw, endian))
    if kind in (5, 10):
        return ", ".join(_rational_text(pair) for pair in rationals(kind, raw, endian))
    if kind in (11, 12):
        return ", ".join(f"{value:f}" for value in numbers(kind, raw, endian))
    return ", ".join(str(value) for value in numbers(kind, raw, endian))


def _seconds(value: float) -> str:
    if 0 < value < 1:
        return f"1/{1 / value:.0f}"
    return f"{value:.0f}"


def _user_comment(raw: bytes, endian: str) -> str:
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        text = body.decode("utf-16-be" if endian == ">" else "utf-16-le", "replace")
    elif code.startswith(b"ASCII") or code == b"\x00" * 8:
        text = body.decode("utf-8", "replace")
    else:
        return f"{len(raw)} bytes undefined data"
    return text.replace("\x00", "").rstrip()


def _special(name: str, kind: int, raw: bytes, endian: str) -> str | None:
    """libexif's tag-specific text, or None for the generic one."""
    if kind in (5, 10):
        pairs = rationals(kind, raw, endian)
        if not pairs:
            return None
        value = _value(pairs[0])
        if name == "ExposureTime":
            return f"{_seconds(value)} sec."
        if name == "FNumber":
            return f"f/{value:.1f}"
        if name in ("ApertureValue", "MaxApertureValue"):
            return f"{value:.2f} EV (f/{math.pow(2, value / 2):.1f})"
        if name == "FocalLength":
            return f"{value:.1f} mm"
        if name == "SubjectDistance":
            return f"{value:.1f} m"
        if name == "ExposureBiasValue":
            return f"{value:.2f} EV"
        if name == "ShutterSpeedValue":
            return f"{value:.2f} EV ({_seconds(1 / math.pow(2, value))} sec.)"
        if name == "BrightnessValue":
            candela = 1 / (math.pi * 0.3048 * 0.3048) * math.pow(2, value)
            return f"{value:.2f} EV ({candela:.2f} cd/m^2)"
        if name == "GPSTimeStamp" and len(pairs) == 3:
            hours, minutes, seconds = (_value(pair) for pair in pairs)
            return f"{int(hours):02d}:{int(minutes):02d}:{seconds:05.2f}"
        return None
    if kind == 7:
        if name == "ExifVersion":
            return EXIF_VERSIONS.get(raw[:4], "Unknown Exif Version")
        if name == "FlashPixVersion":
            return FLASHPIX_VERSIONS.get(raw[:4], "Unknown FlashPix Version")
        if name == "ComponentsConfiguration":
            return " ".join(_COMPONENTS.get(byte, "Reserved") for byte in raw[:4])
        if name == "FileSource":
            return "DSC" if raw[:1] == b"\x03" else f"Internal error (unknown value {raw[0]})"
        if name == "SceneType":
            return "Directly photographed" if raw[:1] == b"\x01" else "Internal error"
        if name == "UserComment":
            return _user_comment(raw, endian)
        if name in ("InteroperabilityVersion", "GPSProcessingMethod", "GPSAreaInformation"):
            return ascii_text(raw)
        return None
    if name == "GPSVersionID" and kind == 1:
        return ".".join(str(byte) for byte in raw[:4])
    if name.startswith("XP") and kind == 1:
        return raw.decode("utf-16-le", "replace").replace("\x00", "")
    if kind in (1, 3, 4) and (name in ENUM_BY_INDEX or name in ENUM_BY_VALUE):
        values = numbers(kind, raw, endian)
        if not values:
            return None
        return _enum(name, int(values[0]))
    if name == "SubjectArea" and kind == 3:
        return _subject_area([int(value) for value in numbers(kind, raw, endian)])
    return None


def _enum(name: str, value: int) -> str:
    by_index = ENUM_BY_INDEX.get(name)
    if by_index is not None:
        if 0 <= value < len(by_index):
            return by_index[value]
        return f"Internal error (unknown value {value})"
    return ENUM_BY_VALUE[name].get(value, f"Unknown value {value}")


def _subject_area(values: Sequence[int]) -> str | None:
    if len(values) == 2:
        return f"(x,y) = ({values[0]},{values[1]})"
    if len(values) == 3:
        return f"Within distance {values[2]} of (x,y) = ({values[0]},{values[1]})"
    if len(values) == 4:
        return (
            f"Within rectangle (width {values[2]}, height {values[3]}) around "
            f"(x,y) = ({values[0]},{values[1]})"
        )
    return None


def format_value(name: str, kind: int, raw: bytes, endian: str) -> str:
    """The text libexif gives an entry of type ``kind`` holding ``raw`` bytes."""
    text = _special(name, kind, raw, endian)
    if text is None:
        text = _generic(kind, raw, endian)
    return text[:MAX_VALUE_CHARS]
