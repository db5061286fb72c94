"""exif: the image's EXIF tags as Qiniu answers them.

``{"Make": {"type": 2, "val": "Canon"}, "ExposureTime": {"type": 5, "val":
"1/200 sec."}, ...}``: each tag of the main image (IFD0), the Exif, GPS and
Interoperability directories by its libexif name, with its TIFF field type
number (1 BYTE, 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL, 7 UNDEFINED, 9 SLONG,
10 SRATIONAL, ...) and its value as libexif writes it
(:mod:`.exif_values`). The thumbnail's directory (IFD1) and the pointer tags
are left out, as are tags libexif has no name for. An image without EXIF
(or with a block nothing can be read from) is a 400, ``"no exif data"``.

The block is parsed here, bounded (entries per directory, directories
visited once, values inside the block), from the EXIF of a JPEG (APP1), PNG
(eXIf), WebP (EXIF chunk) or from a TIFF file itself; no pixel is decoded.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator, Mapping
from typing import Any

from dora.builtin_ops.image.exif_names import (
    EXIF_IFD_POINTER,
    GPS_IFD_POINTER,
    GPS_TAGS,
    IMAGE_TAGS,
    INTEROP_IFD_POINTER,
    INTEROP_TAGS,
)
from dora.builtin_ops.image.exif_values import TYPE_FORMATS, format_value
from dora.builtin_ops.image.picture import Picture
from dora.config import Limits
from dora.errors import BadRequest
from dora.fop import Stage

NO_EXIF = "no exif data"
MAX_IFD_ENTRIES = 1024
_EXIF_PREFIX = b"Exif\x00\x00"


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry: its tag, TIFF type number and value bytes."""

    tag: int
    kind: int
    raw: bytes


def tiff_header(data: bytes) -> tuple[str, int]:
    """The byte order (``"<"`` or ``">"``) and first directory offset of a TIFF block."""
    if data[:4] == b"II*\x00":
        endian = "<"
    elif data[:4] == b"MM\x00*":
        endian = ">"
    else:
        raise BadRequest(f"{NO_EXIF} (not a TIFF-structured EXIF block)")
    return endian, struct.unpack(f"{endian}L", data[4:8])[0]


def read_ifd(data: bytes, offset: int, endian: str) -> list[Entry]:
    """The entries of the directory at ``offset``; out-of-block values are skipped."""
    if offset < 8 or offset + 2 > len(data):
        return []
    (count,) = struct.unpack(f"{endian}H", data[offset : offset + 2])
    count = min(count, MAX_IFD_ENTRIES, (len(data) - offset - 2) // 12)
    entries: list[Entry] = []
    for index in range(count):
        start = offset + 2 + 12 * index
        tag, kind, components = struct.unpack(f"{endian}HHL", data[start : start + 8])
        if kind not in TYPE_FORMATS:
            continue
        size = components * TYPE_FORMATS[kind][1]
        if size <= 4:
            raw = data[start + 8 : start + 8 + size]
        else:
            (where,) = struct.unpack(f"{endian}L", data[start + 8 : start + 12])
            if where + size > len(data):
                continue  # points outside the block: skipped, as libexif does
            raw = data[where : where + size]
        entries.append(Entry(tag, kind, raw))
    return entries


def _pointer(entry: Entry, endian: str) -> int | None:
    if entry.kind not in (4, 13) or len(entry.raw) < 4:
        return None
    return int(struct.unpack(f"{endian}L", entry.raw[:4])[0])


def _directories(data: bytes) -> Iterator[tuple[Mapping[int, str], list[Entry], str]]:
    """IFD0, then the Exif, Interoperability and GPS directories it points to."""
    endian, first = tiff_header(data)
    seen: set[int] = set()
    pending: list[tuple[int, Mapping[int, str]]] = [(first, IMAGE_TAGS)]
    pointers = {
        EXIF_IFD_POINTER: IMAGE_TAGS,
        GPS_IFD_POINTER: GPS_TAGS,
        INTEROP_IFD_POINTER: INTEROP_TAGS,
    }
    while pending:
        offset, names = pending.pop(0)
        if offset in seen:
            continue  # a loop of pointers
        seen.add(offset)
        entries = read_ifd(data, offset, endian)
        for entry in entries:
            if entry.tag in pointers and names is not GPS_TAGS:
                target = _pointer(entry, endian)
                if target is not None:
                    pending.append((target, pointers[entry.tag]))
        yield names, entries, endian


def exif_tags(data: bytes) -> dict[str, dict[str, Any]]:
    """Qiniu's ``exif`` answer for a TIFF-structured EXIF block (sorted by name)."""
    if data.startswith(_EXIF_PREFIX):
        data = data[len(_EXIF_PREFIX) :]
    found: dict[str, dict[str, Any]] = {}
    for names, entries, endian in _directories(data):
        for entry in entries:
            name = names.get(entry.tag)
            if name is None or name in found:
                continue
            value = format_value(name, entry.kind, entry.raw, endian)
            found[name] = {"type": entry.kind, "val": value}
    return dict(sorted(found.items()))


def exif_block(picture: Picture) -> bytes | None:
    """The picture's EXIF block (TIFF-structured), if it has one."""
    if picture.source_format == "tiff":
        # a TIFF's main directory holds its structure; EXIF only if it points to some
        tags = getattr(picture.image, "tag_v2", {})
        has_exif = EXIF_IFD_POINTER in tags or GPS_IFD_POINTER in tags
        return picture.source if has_exif else None
    block = picture.image.info.get("exif")
    return block if isinstance(block, bytes) and block else None


def exif(picture: Picture, stage: Stage, limits: Limits) -> dict[str, Any]:
    """The exif answer for the picture; 400 when it has no EXIF."""
    block = exif_block(picture)
    if block is None:
        raise BadRequest(NO_EXIF)
    try:
        tags = exif_tags(block)
    except struct.error as exc:
        raise BadRequest(f"{NO_EXIF} (the EXIF block is damaged)") from exc
    if not tags:
        raise BadRequest(NO_EXIF)
    return tags
