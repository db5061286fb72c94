"""The worker RPC frame codec and message shapes (dora.rpc)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dora.errors import BadRequest, DoraError, PayloadTooLarge, ProcessingFailed
from dora.ops import Output
from dora.rpc import (
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    encode_frame,
    error_response,
    make_call,
    ok_response,
    output_from_response,
    parse_request,
    read_frame,
    write_frame,
)

# Values msgpack carries faithfully with use_bin_type/raw=False: str keys, and
# no tuples (they come back as lists).
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=64)
)
_value = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_message = st.dictionaries(st.text(max_size=10), _value, max_size=6)


@given(st.lists(_message, min_size=1, max_size=5), st.data())
@settings(max_examples=200, deadline=None)
def test_frames_round_trip_through_any_chunking(
    msgs: list[dict[str, Any]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder(max_frame_bytes=1 << 20)
    out: list[dict[str, Any]] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[prev:cut]))
        prev = cut
    assert out == msgs
    assert decoder.buffered == 0


def test_frame_layout_is_big_endian_length_then_msgpack_map() -> None:
    frame = encode_frame({"id": 7, "body": b"\x00\xff"})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert msgpack.unpackb(frame[4:], raw=False) == {"id": 7, "body": b"\x00\xff"}
    # bytes travel as bin, str as str
    assert isinstance(msgpack.unpackb(frame[4:], raw=True)[b"body"], bytes)


def test_declared_length_over_the_maximum_is_refused_before_reading_it() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack(">I", 101))  # only the header: no body needed to refuse
    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value, PayloadTooLarge)
    assert info.value.status == 413
    ok = FrameDecoder(max_frame_bytes=100)
    frame = encode_frame({"x": b"a" * 50})
    assert ok.feed(frame) == [{"x": b"a" * 50}]


def test_encode_refuses_messages_over_the_maximum() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"body": b"x" * 1000}, max_bytes=500)
    assert len(encode_frame({"body": b"x" * 400}, max_bytes=500)) < 504


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({1: "int key"}),  # strict_map_key
        b"\xc1",  # never used byte
        b"",  # empty frame
        msgpack.packb({"a": 1}) + b"\x00",  # trailing garbage
    ],
)
def test_malformed_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(1000).feed(struct.pack(">I", len(payload)) + payload)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_decoder_fuzz_raises_only_protocol_errors(junk: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=256)
    try:
        for msg in decoder.feed(junk):
            assert isinstance(msg, dict)
    except ProtocolError:
        pass


def test_unencodable_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        encode_frame({"x": object()})


def test_parse_request_accepts_the_three_sources_and_ping() -> None:
    base = {"id": 3, "stages": [["imageView2", "2/w/10"]], "deadline": 1.5}
    for src in ({"bytes": b"x"}, {"path": "/a"}, {"url": "http://x/"}):
        assert parse_request({**base, "src": src}) == {**base, "src": src}
    assert parse_request({**base, "deadline": 5, "src": {"bytes": b""}}) == {
        **base,
        "deadline": 5.0,
        "src": {"bytes": b""},
    }
    assert parse_request({"id": 9, "ping": True}) == {"id": 9, "ping": True}


@pytest.mark.parametrize(
    "msg",
    [
        {"stages": [], "src": {"bytes": b""}, "deadline": 1.0},  # no id
        {"id": 0, "stages": [], "src": {"bytes": b""}, "deadline": 1.0},  # id 0 is the connection's
        {"id": True, "stages": [], "src": {"bytes": b""}, "deadline": 1.0},
        {"id": 1, "stages": [["a"]], "src": {"bytes": b""}, "deadline": 1.0},
        {"id": 1, "stages": [["a", 2]], "src": {"bytes": b""}, "deadline": 1.0},
        {"id": 1, "stages": "a/b", "src": {"bytes": b""}, "deadline": 1.0},
        {"id": 1, "stages": [], "src": {"bytes": "text"}, "deadline": 1.0},
        {"id": 1, "stages": [], "src": {"bytes": b"", "path": "/x"}, "deadline": 1.0},
        {"id": 1, "stages": [], "src": b"", "deadline": 1.0},
        {"id": 1, "stages": [], "src": {"bytes": b""}, "deadline": "soon"},
        {"id": 1, "stages": [], "src": {"bytes": b""}},
        {"id": 1, "stages": [], "src": {"bytes": b""}, "deadline": float("nan")},
        {"id": 1, "stages": [], "src": {"bytes": b""}, "deadline": float("inf")},
    ],
)
def test_parse_request_rejects_wrong_shapes(msg: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_request(msg)


def test_responses_rebuild_outputs_and_errors() -> None:
    out = Output(mime="image/png", body=b"png", meta={"w": 3})
    assert output_from_response(ok_response(4, out, load=2)) == out
    on_disk = Output(mime="video/mp4", path="/data/x.mp4")
    assert output_from_response(ok_response(4, on_disk, load=0)) == on_disk

    with pytest.raises(BadRequest, match="bad image"):
        output_from_response(error_response(4, BadRequest("bad image"), load=1))
    with pytest.raises(ProcessingFailed):
        output_from_response(error_response(4, ProcessingFailed("boom"), load=1))
    with pytest.raises(DoraError) as info:
        output_from_response({"id": 4, "ok": False, "code": 504, "error": "late"})
    assert info.value.status == 504
    with pytest.raises(ProtocolError):
        output_from_response({"id": 4, "ok": True, "mime": "a/b", "meta": {}})
    with pytest.raises(ProtocolError):
        output_from_response(
            {"id": 4, "ok": True, "mime": "a/b", "meta": {}, "body": b"", "path": "/x"}
        )


def test_make_call_sends_bytes_or_a_path() -> None:
    call = make_call(5, [("imageView2", "2/w/1")], b"img", 10.0)
    assert call == {
        "id": 5,
        "stages": [["imageView2", "2/w/1"]],
        "src": {"bytes": b"img"},
        "deadline": 10.0,
    }
    assert make_call(5, [], "/data/a.jpg", 10.0)["src"] == {"path": "/data/a.jpg"}
    assert parse_request(msgpack.unpackb(encode_frame(call)[4:], raw=False)) == call


Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader]


@pytest.fixture
async def socket_pair() -> AsyncIterator[Pair]:
    """A real loopback TCP connection: (client reader, client writer, server reader)."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c_reader, c_writer = await asyncio.open_connection("127.0.0.1", port)
    s_reader, s_writer = await accepted.get()
    yield c_reader, c_writer, s_reader
    c_writer.close()
    s_writer.close()
    server.close()
    await server.wait_closed()


async def test_read_and_write_frames_over_tcp(
    socket_pair: Pair,
) -> None:
    _, writer, reader = socket_pair
    big = {"id": 1, "body": bytes(range(256)) * 4096}  # 1 MiB, many TCP segments
    await write_frame(writer, big)
    await write_frame(writer, {"id": 2})
    assert await read_frame(reader, 2 << 20) == big
    assert await read_frame(reader, 2 << 20) == {"id": 2}
    writer.close()
    assert await read_frame(reader, 2 << 20) is None  # clean EOF between frames


async def test_read_frame_limits_and_truncation(
    socket_pair: Pair,
) -> None:
    _, writer, reader = socket_pair
    writer.write(struct.pack(">I", 10_000))
    await writer.drain()
    with pytest.raises(FrameTooLarge):
        await read_frame(reader, 1000)


async def test_read_frame_eof_inside_a_frame_is_a_protocol_error(
    socket_pair: Pair,
) -> None:
    _, writer, reader = socket_pair
    writer.write(encode_frame({"id": 1, "body": b"x" * 100})[:50])
    writer.close()
    with pytest.raises(ProtocolError, match="inside a frame"):
        await read_frame(reader, 1000)
