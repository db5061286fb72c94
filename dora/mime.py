"""MIME types from content first, then from the key's extension.

A key's extension is a claim made by whoever named the object; the first
bytes are evidence. :func:`sniff_mime` trusts magic numbers over extensions,
and uses the extension only when the content has no recognisable signature,
or to refine plain text (``.css`` text is ``text/css``, ``.jpg`` text is not
an image).
"""

from __future__ import annotations

import codecs
import functools
import json
import mimetypes
import posixpath
from collections.abc import Mapping

# How many leading bytes of an object the sniffer wants to see.
SNIFF_BYTES = 4096
OCTET_STREAM = "application/octet-stream"

# Extensions Python's built-in table lacks or names in a legacy way.
_EXTRA_EXTENSIONS: Mapping[str, str] = {
    ".webp": "image/webp",
    ".flac": "audio/flac",
    ".mkv": "video/x-matroska",
    ".mka": "audio/x-matroska",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".ogv": "video/ogg",
    ".flv": "video/x-flv",
    ".ts": "video/mp2t",
    ".m4a": "audio/mp4",
    ".m4v": "video/mp4",
    ".wav": "audio/wav",
    ".ico": "image/x-icon",
    ".md": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".m3u": "application/vnd.apple.mpegurl",
}

_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis"}
_HEIC_SEQUENCE_BRANDS = {b"hevc", b"hevx", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_TEXT_CONTROL_OK = frozenset(map(ord, "\t\n\r\f\x1b"))


@functools.cache
def _extension_table() -> Mapping[str, str]:
    # Only Python's built-in table (no /etc/mime.types), so every machine agrees.
    db = mimetypes.MimeTypes(filenames=())
    table = {**db.types_map[False], **db.types_map[True]}
    table.update(_EXTRA_EXTENSIONS)
    return table


def mime_from_key(key: str | None) -> str | None:
    """The MIME type the key's extension suggests, or None."""
    if not key:
        return None
    _, ext = posixpath.splitext(posixpath.basename(key))
    if not ext:
        return None
    return _extension_table().get(ext.lower())


def _is_textual_type(mime: str) -> bool:
    return (
        mime.startswith("text/")
        or mime.endswith(("+xml", "+json"))
        or mime
        in (
            "application/json",
            "application/javascript",
            "application/xml",
            "application/yaml",
            "application/vnd.apple.mpegurl",
            "application/x-sh",
        )
    )


def _ftyp_mime(head: bytes) -> str | None:
    """ISO base media files (MP4, MOV, 3GP, HEIF, AVIF) by their ftyp brands."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    major = head[8:12]
    box_end = min(int.from_bytes(head[0:4], "big"), len(head), 256)
    brands = {major} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in _AVIF_BRANDS or (major in (b"mif1", b"msf1") and brands & _AVIF_BRANDS):
        return "image/avif"
    if major in _HEIC_BRANDS:
        return "image/heic"
    if major in _HEIC_SEQUENCE_BRANDS:
        return "image/heic-sequence"
    if major == b"mif1":
        return "image/heic" if brands & _HEIC_BRANDS else "image/heif"
    if major == b"msf1":
        return "image/heif-sequence"
    if major == b"qt  ":
        return "video/quicktime"
    if major in (b"M4A ", b"M4B ", b"F4A "):
        return "audio/mp4"
    if major.startswith(b"3g2"):
        return "video/3gpp2"
    if major.startswith(b"3gp"):
        return "video/3gpp"
    return "video/mp4"


def _mpeg_audio_mime(head: bytes) -> str | None:
    """MP3 frames and AAC ADTS frames both start with an 11/12-bit sync word."""
    if len(head) < 4 or head[0] != 0xFF:
        return None
    b1, b2 = head[1], head[2]
    if b1 & 0xF6 == 0xF0:  # 12-bit sync, layer 00: ADTS
        return "audio/aac"
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate, rate = b2 >> 4, (b2 >> 2) & 3
    if b1 & 0xE0 == 0xE0 and version != 1 and layer != 0 and bitrate != 15 and rate != 3:
        return "audio/mpeg"
    return None


def _binary_magic(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return "image/webp"
        if form == b"WAVE":
            return "audio/wav"
        if form == b"AVI ":
            return "video/x-msvideo"
    if head.startswith(b"BM") and len(head) >= 14 and head[6:10] == b"\0\0\0\0":
        return "image/bmp"  # the reserved header fields are zero; text "BM..." is not
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"\x00\x00\x01\x00") and len(head) >= 6 and head[4:6] != b"\0\0":
        return "image/x-icon"
    ftyp = _ftyp_mime(head)
    if ftyp is not None:
        return ftyp
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    if head.startswith(b"OggS"):
        return "video/ogg" if b"theora" in head[:128] else "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"FLV\x01"):
        return "video/x-flv"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    return _mpeg_audio_mime(head)


def _weak_magic(head: bytes) -> str | None:
    """Signatures that ordinary text could imitate: tried only on non-text."""
    if len(head) >= 377 and head[0] == head[188] == head[376] == 0x47:
        return "video/mp2t"  # MPEG-TS: a sync byte every 188 bytes
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide"):
        return "video/quicktime"  # QuickTime files from before the ftyp box
    return None


def _decode_text(head: bytes, complete: bool) -> str | None:
    """The head as text if it is UTF-8 without binary control characters."""
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    # Unless the head is all there is, the sniff window may cut a character in two.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(head, final=complete)
    except UnicodeDecodeError:
        return None
    if head and not text:
        return None
    if any((ord(c) < 0x20 and ord(c) not in _TEXT_CONTROL_OK) or c == "\x7f" for c in text):
        return None
    return text


def _looks_like_json(text: str, complete: bool) -> bool:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return False
    if complete:
        try:
            json.loads(stripped)
        except ValueError:
            return False
        return True
    # A truncated document: the opening bracket must be followed by JSON.
    rest = stripped[1:].lstrip()
    if not rest:
        return True
    if stripped[0] == "{":
        return rest[0] in '"}'
    return rest[0] in '"{[]-0123456789tfn'


def _text_mime(text: str, complete: bool) -> str:
    lead = text.lstrip().lower()
    if lead.startswith("#extm3u"):
        return "application/vnd.apple.mpegurl"
    if lead.startswith(("<svg", "<?xml", "<!--", "<!doctype svg")) and "<svg" in lead[:2048]:
        return "image/svg+xml"
    if lead.startswith(("<!doctype html", "<html")):
        return "text/html"
    if lead.startswith("<?xml"):
        return "application/xml"
    if _looks_like_json(text, complete):
        return "application/json"
    return "text/plain"


def sniff_mime(head: bytes, key: str | None = None, *, complete: bool = False) -> str:
    """The MIME type of an object from its first bytes, else from its key.

    ``head`` is the start of the content (:data:`SNIFF_BYTES` is plenty);
    ``complete`` says it is the whole content, which lets JSON be checked by
    parsing it. Binary signatures win over the extension; plain text takes a
    textual extension's type (``.css``, ``.csv``); otherwise the extension's
    type, else ``application/octet-stream``.
    """
    by_key = mime_from_key(key)
    if not head:
        return by_key or OCTET_STREAM
    magic = _binary_magic(head)
    if magic is not None:
        return magic
    text = _decode_text(head, complete)
    if text is not None:
        sniffed = _text_mime(text, complete)
        if sniffed == "text/plain" and by_key is not None and _is_textual_type(by_key):
            return by_key
        return sniffed
    return _weak_magic(head) or by_key or OCTET_STREAM
