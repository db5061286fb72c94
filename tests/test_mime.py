"""MIME sniffing: content signatures first, then the key's extension."""

from __future__ import annotations

import gzip
import io
import json
import struct
import wave
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dora.mime import OCTET_STREAM, SNIFF_BYTES, mime_from_key, sniff_mime


def pillow_image(fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 40)).save(out, format=fmt, **options)
    return out.getvalue()


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00\x00\x00\x08free"


def ebml(doctype: bytes) -> bytes:
    # EBML header element with a DocType (0x4282) child, as Matroska writers emit it
    child = b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(child)]) + child + b"\x18\x53\x80\x67"


def wav_file() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(b"\x00\x00" * 800)
    return out.getvalue()


def zip_file() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "hello")
    return out.getvalue()


def tiff_big_endian() -> bytes:
    # Pillow writes little-endian TIFF; this is the big-endian header and one IFD
    return b"MM\x00\x2a\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00"


# An MPEG-1 Layer III frame header: sync, MPEG-1, layer 3, 128 kbit/s, 44.1 kHz.
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 64
# An AAC ADTS header: sync, MPEG-4, layer 00, no CRC, LC profile, 44.1 kHz.
ADTS_FRAME = b"\xff\xf1\x50\x80\x02\x1f\xfc" + b"\x21" * 32
OGG_VORBIS = b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x1e\x01vorbis" + b"\x00" * 32
OGG_THEORA = b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x2a\x80theora" + b"\x00" * 32
SAMPLES: list[tuple[str, bytes, str]] = [
    ("jpeg", pillow_image("JPEG"), "image/jpeg"),
    ("png", pillow_image("PNG"), "image/png"),
    ("gif", pillow_image("GIF"), "image/gif"),
    ("webp", pillow_image("WEBP"), "image/webp"),
    ("bmp", pillow_image("BMP"), "image/bmp"),
    ("tiff-le", pillow_image("TIFF"), "image/tiff"),
    ("tiff-be", tiff_big_endian(), "image/tiff"),
    ("avif", pillow_image("AVIF"), "image/avif"),
    ("heic", ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    ("heif-mif1", ftyp(b"mif1", b"mif1", b"heic"), "image/heic"),
    ("avif-mif1", ftyp(b"mif1", b"mif1", b"avif", b"miaf"), "image/avif"),
    ("mp4", ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4"),
    ("mp4-mp42", ftyp(b"mp42", b"mp42", b"isom"), "video/mp4"),
    ("mov", ftyp(b"qt  ", b"qt  "), "video/quicktime"),
    ("m4a", ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), "audio/mp4"),
    ("webm", ebml(b"webm"), "video/webm"),
    ("mkv", ebml(b"matroska"), "video/x-matroska"),
    ("mp3-id3", b"ID3\x04\x00\x00\x00\x00\x00\x0f" + MP3_FRAME, "audio/mpeg"),
    ("mp3-frame", MP3_FRAME, "audio/mpeg"),
    ("aac-adts", ADTS_FRAME, "audio/aac"),
    ("ogg", OGG_VORBIS, "audio/ogg"),
    ("ogv", OGG_THEORA, "video/ogg"),
    ("flac", b"fLaC\x00\x00\x00\x22" + b"\x00" * 34, "audio/flac"),
    ("wav", wav_file(), "audio/wav"),
    ("flv", b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00", "video/x-flv"),
    ("mpeg-ts", (b"\x47\x40\x00\x10" + b"\xff" * 184) * 3, "video/mp2t"),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "application/pdf"),
    ("zip", zip_file(), "application/zip"),
    ("gzip", gzip.compress(b"hello world"), "application/gzip"),
    ("json-object", json.dumps({"a": [1, 2, {"b": None}]}).encode(), "application/json"),
    ("json-array", b'  [1, "two", 3.0]\n', "application/json"),
    ("m3u8", b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nseg0.ts\n", "application/vnd.apple.mpegurl"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>', "image/svg+xml"),
    (
        "svg-xml-decl",
        b'<?xml version="1.0"?>\n<!-- drawn -->\n<svg xmlns="http://www.w3.org/2000/svg"/>',
        "image/svg+xml",
    ),
    ("html", b"<!DOCTYPE html><html><body>hi</body></html>", "text/html"),
    ("xml", b'<?xml version="1.0"?><feed/>', "application/xml"),
    ("text", "plain words, ünïcödé\n".encode(), "text/plain"),
]


@pytest.mark.parametrize(("name", "data", "expected"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_content_signature(name: str, data: bytes, expected: str) -> None:
    assert sniff_mime(data[:SNIFF_BYTES]) == expected


@pytest.mark.parametrize(("name", "data", "expected"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_content_beats_a_lying_extension(name: str, data: bytes, expected: str) -> None:
    lie = "clip.exe" if expected.startswith("image/") else "photo.jpg"
    assert sniff_mime(data[:SNIFF_BYTES], lie) == expected


def test_extension_is_the_fallback_for_unknown_binary() -> None:
    blob = bytes([0x00, 0x01, 0x02, 0x03, 0xFE]) * 10
    assert sniff_mime(blob, "movie.mkv") == "video/x-matroska"
    assert sniff_mime(blob, "dir.v2/archive.TAR") == "application/x-tar"
    assert sniff_mime(blob, "no-extension") == OCTET_STREAM
    assert sniff_mime(blob) == OCTET_STREAM
    assert sniff_mime(b"", "a/b/empty.png") == "image/png"
    assert sniff_mime(b"") == OCTET_STREAM


def test_plain_text_takes_a_textual_extension_only() -> None:
    css = b"body { color: red; }\n"
    assert sniff_mime(css, "site/style.css") == "text/css"
    assert sniff_mime(b"a,b\n1,2\n", "t.csv") == "text/csv"
    assert sniff_mime(css, "fake.png") == "text/plain"  # text is not an image


def test_json_checks() -> None:
    assert sniff_mime(b'{"a": 1}', complete=True) == "application/json"
    assert sniff_mime(b"{not json}", complete=True) == "text/plain"
    assert sniff_mime(b'{"a": [1, 2, 3', complete=False) == "application/json"  # truncated head
    assert sniff_mime(b"{ this is prose }") == "text/plain"
    assert sniff_mime(b"\xef\xbb\xbf[1]", complete=True) == "application/json"


def test_text_cut_inside_a_multibyte_character_is_still_text() -> None:
    head = ("é" * 3000).encode()[: SNIFF_BYTES - 1]
    assert sniff_mime(head) == "text/plain"


def test_binary_lookalikes_are_not_misread() -> None:
    assert sniff_mime(b"BMW is a car brand\n") == "text/plain"  # "BM" without a header
    assert sniff_mime(b"\xff\xd8\xffhello"[:2]) == OCTET_STREAM  # too short for JPEG
    assert sniff_mime(b"\xff\xff\xff\xff\xff") == OCTET_STREAM  # bad MPEG header bits


def test_mime_from_key() -> None:
    assert mime_from_key("a/B.JPG") == "image/jpeg"
    assert mime_from_key("x.webp") == "image/webp"
    assert mime_from_key("hls/index.m3u8") == "application/vnd.apple.mpegurl"
    assert mime_from_key("archive") is None
    assert mime_from_key("dotted.dir/noext") is None
    assert mime_from_key(None) is None


@settings(max_examples=200, deadline=None)
@given(head=st.binary(max_size=600), key=st.none() | st.text(max_size=40))
def test_never_fails_and_always_answers_a_type(head: bytes, key: str | None) -> None:
    mime = sniff_mime(head, key)
    assert "/" in mime and mime.isprintable()
