"""Qiniu's etag, checked against the official qiniu SDK."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import qiniu.utils
from hypothesis import given, settings
from hypothesis import strategies as st

from dora.etag import BLOCK_SIZE, EtagHasher, qiniu_etag

MiB = 1024 * 1024
SIZES = [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 8 * MiB, 9 * MiB]


def sdk_etag(data: bytes) -> str:
    return str(qiniu.utils.etag_stream(io.BytesIO(data)))


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(9 * MiB + 7)


@pytest.mark.parametrize("size", SIZES)
def test_one_shot_matches_sdk(blob: bytes, size: int) -> None:
    data = blob[:size]
    assert qiniu_etag(data) == sdk_etag(data)


@pytest.mark.parametrize("size", SIZES)
def test_incremental_matches_sdk_for_awkward_chunks(blob: bytes, size: int) -> None:
    data = blob[:size]
    hasher = EtagHasher()
    pos, step = 0, 1
    while pos < len(data):  # chunk sizes 1, 3, 9, ... cross block boundaries unevenly
        hasher.update(data[pos : pos + step])
        pos += step
        step = step * 3 + 1
    assert hasher.size == size
    assert hasher.digest() == sdk_etag(data)


def test_sdk_file_etag_agrees(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "blob"
    path.write_bytes(blob)
    assert qiniu_etag(blob) == qiniu.utils.etag(str(path))


def test_known_values_and_prefixes(blob: bytes) -> None:
    assert qiniu_etag(b"") == "Fto5o-5ea0sNMlW_75VgGJCv2AcJ"  # Qiniu's hash of an empty file
    assert qiniu_etag(blob[:BLOCK_SIZE]).startswith("F")  # 0x16: a single block
    assert qiniu_etag(blob[: BLOCK_SIZE + 1]).startswith("l")  # 0x96: several blocks
    assert len(qiniu_etag(blob)) == 28


def test_digest_is_repeatable_and_hasher_continues() -> None:
    hasher = EtagHasher()
    hasher.update(b"abc")
    first = hasher.digest()
    assert hasher.digest() == first == qiniu_etag(b"abc")
    hasher.update(memoryview(b"def"))
    assert hasher.digest() == qiniu_etag(b"abcdef")


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=2048),
    cuts=st.lists(st.integers(min_value=0, max_value=2048), max_size=8),
)
def test_any_split_gives_the_same_etag(data: bytes, cuts: list[int]) -> None:
    hasher = EtagHasher()
    previous = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        hasher.update(data[previous:cut])
        previous = cut
    hasher.update(data[previous:])
    assert hasher.digest() == sdk_etag(data)
