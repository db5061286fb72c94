"""URL-safe base64 and EncodedEntryURI, checked against Qiniu's SDK and API.md."""

from __future__ import annotations

import base64

import pytest
import qiniu
from hypothesis import given
from hypothesis import strategies as st

from dora.b64 import decode_entry, decode_text, encode_entry, urlsafe_b64decode, urlsafe_b64encode
from dora.errors import BadRequest

# A bucket name never holds ':' (the key may).
buckets = st.text(min_size=1, max_size=40).filter(lambda s: ":" not in s)


def test_api_md_entry_vector() -> None:
    assert encode_entry("qiniuphotos", "gogopher.jpg") == "cWluaXVwaG90b3M6Z29nb3BoZXIuanBn"
    assert decode_entry("cWluaXVwaG90b3M6Z29nb3BoZXIuanBn") == ("qiniuphotos", "gogopher.jpg")


def test_entry_matches_the_sdk() -> None:
    assert encode_entry("photos", "a/b c.jpg") == qiniu.entry("photos", "a/b c.jpg")
    assert encode_entry("photos", None) == qiniu.entry("photos", None)


def test_encode_uses_the_url_safe_alphabet_and_keeps_padding() -> None:
    # b"\xfb\xff" is "+/8=" in standard base64.
    assert urlsafe_b64encode(b"\xfb\xff") == "-_8="
    assert urlsafe_b64encode("A") == "QQ=="
    assert urlsafe_b64encode("€") == qiniu.urlsafe_base64_encode("€")


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("QQ==", b"A"),
        ("QQ", b"A"),
        ("QUI=", b"AB"),
        ("QUI", b"AB"),
        ("", b""),
        (b"-_8", b"\xfb\xff"),
    ],
)
def test_decode_accepts_missing_padding(text: str | bytes, data: bytes) -> None:
    assert urlsafe_b64decode(text) == data


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("QQ!=", "is not URL-safe base64"),
        ("+/8=", "is not URL-safe base64"),  # the standard alphabet is refused
        ("QQ=A", "is not URL-safe base64"),  # padding in the middle
        ("Q===", "is not URL-safe base64"),
        ("QUJD Q", "is not URL-safe base64"),
        ("Q", "impossible length"),
        ("QUJDR", "impossible length"),
        ("QQ=", "wrong padding"),
        ("QUJD=", "wrong padding"),
        ("QUI==", "wrong padding"),
        ("héllo", "non-ASCII character at offset 1"),
    ],
)
def test_decode_rejects_bad_input_precisely(text: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason) as info:
        urlsafe_b64decode(text)
    assert info.value.status == 400


def test_error_message_quotes_a_bounded_excerpt() -> None:
    with pytest.raises(BadRequest) as info:
        urlsafe_b64decode("!" * 10_000)
    assert len(info.value.message) < 120


def test_decode_text() -> None:
    assert decode_text(urlsafe_b64encode("七牛 watermark")) == "七牛 watermark"
    assert decode_text("aHR0cDovL3d3dy5iMS5xaW5pdWRuLmNvbS9pbWFnZXMvbG9nby0yLnBuZw") == (
        "http://www.b1.qiniudn.com/images/logo-2.png"
    )
    with pytest.raises(BadRequest, match="not UTF-8"):
        decode_text(urlsafe_b64encode(b"\xff\xfe"))


def test_decode_entry_cases() -> None:
    assert decode_entry(encode_entry("bucket", None)) == ("bucket", None)
    assert decode_entry(encode_entry("bucket", "")) == ("bucket", "")
    assert decode_entry(encode_entry("b", "dir:sub:file.jpg")) == ("b", "dir:sub:file.jpg")
    with pytest.raises(BadRequest, match="empty bucket"):
        decode_entry(urlsafe_b64encode(":key"))
    with pytest.raises(BadRequest, match="invalid entry"):
        decode_entry("not*base64")


@given(st.binary(max_size=300))
def test_binary_round_trip_with_or_without_padding(data: bytes) -> None:
    encoded = urlsafe_b64encode(data)
    assert encoded == base64.urlsafe_b64encode(data).decode()
    assert urlsafe_b64decode(encoded) == data
    assert urlsafe_b64decode(encoded.rstrip("=")) == data


@given(st.text(max_size=200))
def test_text_round_trip(text: str) -> None:
    assert decode_text(urlsafe_b64encode(text)) == text
    assert urlsafe_b64encode(text) == qiniu.urlsafe_base64_encode(text)


@given(buckets, st.none() | st.text(max_size=100))
def test_entry_round_trip(bucket: str, key: str | None) -> None:
    encoded = encode_entry(bucket, key)
    assert encoded == qiniu.entry(bucket, key)
    assert decode_entry(encoded) == (bucket, key)
    assert decode_entry(encoded.rstrip("=")) == (bucket, key)


@given(st.text(max_size=60) | st.binary(max_size=60))
def test_decoding_garbage_is_bytes_or_bad_request(text: str | bytes) -> None:
    try:
        urlsafe_b64decode(text)
        decode_entry(text)
    except BadRequest:
        pass
