"""The worker RPC wire format: length-prefixed msgpack frames.

One frame is a 4-byte big-endian length followed by that many bytes of one
msgpack map (``use_bin_type=True`` on the way out, ``raw=False`` and
``strict_map_key=True`` on the way in). Many calls share one persistent TCP
connection; each carries an ``id`` and responses may come back in any order.

Messages (see the TypedDicts below)::

    call      {id, stages: [[op, argtext], ...], src: {bytes|path|url}, deadline,
               [progress,] [reqid]}
    ok        {id, ok: True, mime, body | path, meta, load}
    error     {id, ok: False, code, error, load}
    ping      {id, ping: True}          ->   {id, ok: True, pong: True, load}
    cancel    {id, cancel: True}        (client: stop call ``id``; no answer of its own)
    progress  {id, progress: 0-100}     (worker, before the answer, to calls with progress: True)

A call that asks for ``progress`` (long audio/video stages) hears how far it
got while it runs; a cancelled call still gets its answer (usually a 599
"cancelled"), which the client may ignore. A worker also cancels the calls of
a connection that closes.

``reqid`` is the request id of the client's request (the gateway's
``X-Reqid``, a job's reqid), for the worker's log; a peer that does not know
it ignores it, and one that is not a short printable string is dropped.
``deadline`` is a unix time (seconds). ``load`` is the worker's count of calls
in flight. A worker that runs out of time answers ``599 "deadline exceeded"``
(a processing failure, never retried); ``503`` means busy or shutting down and
is safe to retry on another worker. An answer with ``id: 0`` concerns the whole
connection (for example a frame over the size limit) and precedes its close.

Errors::

    DoraError
    └── ProtocolError (502)    the peer broke the framing or sent a bad message
        └── FrameTooLarge (413)   also a PayloadTooLarge
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict, final

import msgpack  # ships no type information

from dora.errors import DoraError, PayloadTooLarge, error_from_status
from dora.ops import Output

HEADER = struct.Struct(">I")
MAX_WIRE_FRAME = 0xFFFFFFFF  # what a 4-byte length can say
CONNECTION_ID = 0  # responses about the connection itself, not one call
MAX_REQID_CHARS = 128


class ProtocolError(DoraError):
    """The peer broke the framing or sent a message of the wrong shape."""

    status = 502
    default_message = "malformed RPC message"


class FrameTooLarge(ProtocolError, PayloadTooLarge):
    """A frame declares (or would need) more bytes than allowed."""

    status = 413
    default_message = "RPC frame too large"


@final
class SrcBytes(TypedDict):
    bytes: bytes


@final
class SrcPath(TypedDict):
    path: str


@final
class SrcUrl(TypedDict):
    url: str


Source = SrcBytes | SrcPath | SrcUrl


@final
class CallRequest(TypedDict):
    id: int
    stages: list[list[str]]
    src: Source
    deadline: float
    progress: NotRequired[bool]
    reqid: NotRequired[str]


@final
class CancelRequest(TypedDict):
    id: int
    cancel: Literal[True]


@final
class ProgressMessage(TypedDict):
    id: int
    progress: float


@final
class PingRequest(TypedDict):
    id: int
    ping: Literal[True]


@final
class OkResponse(TypedDict):
    id: int
    ok: Literal[True]
    mime: str
    body: NotRequired[bytes]
    path: NotRequired[str]
    meta: dict[str, Any]
    load: int


@final
class PongResponse(TypedDict):
    id: int
    ok: Literal[True]
    pong: Literal[True]
    load: int


@final
class ErrorResponse(TypedDict):
    id: int
    ok: Literal[False]
    code: int
    error: str
    load: int


Request = CallRequest | PingRequest | CancelRequest
Response = OkResponse | PongResponse | ErrorResponse | ProgressMessage


def encode_frame(msg: Mapping[str, Any], max_bytes: int = MAX_WIRE_FRAME) -> bytes:
    """Pack one message into a frame; :class:`FrameTooLarge` beyond ``max_bytes``."""
    try:
        payload: bytes = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode RPC message: {exc}") from exc
    if len(payload) > min(max_bytes, MAX_WIRE_FRAME):
        raise FrameTooLarge(f"RPC frame of {len(payload)} bytes exceeds {max_bytes}")
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Unpack the body of one frame; it must be a msgpack map."""
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"undecodable RPC frame: {exc}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError(f"RPC frame is a {type(msg).__name__}, not a map")
    return msg


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole messages."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need: int | None = None  # payload length once the header is read

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return every message now complete (possibly none)."""
        self._buf += data
        out: list[dict[str, Any]] = []
        pos = 0
        while True:
            if self._need is None:
                if len(self._buf) - pos < HEADER.size:
                    break
                (length,) = HEADER.unpack_from(self._buf, pos)
                if length > self.max_frame_bytes:
                    raise FrameTooLarge(
                        f"RPC frame declares {length} bytes, limit {self.max_frame_bytes}"
                    )
                self._need = length
                pos += HEADER.size
            if len(self._buf) - pos < self._need:
                break
            end = pos + self._need
            # release the views before the buffer is resized below
            with memoryview(self._buf) as view, view[pos:end] as part:
                out.append(decode_payload(part))
            pos = end
            self._need = None
        if pos:
            del self._buf[:pos]  # compact once per feed, not once per frame
        return out

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf)


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> dict[str, Any] | None:
    """Read one message; ``None`` on a clean end of stream between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("connection closed inside a frame header") from exc
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(f"RPC frame declares {length} bytes, limit {max_bytes}")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("connection closed inside a frame") from exc
    return decode_payload(payload)


async def write_frame(
    writer: asyncio.StreamWriter, msg: Mapping[str, Any], max_bytes: int = MAX_WIRE_FRAME
) -> None:
    """Write one message and wait for the transport's buffer to drain."""
    writer.write(encode_frame(msg, max_bytes))
    await writer.drain()


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def parse_request(msg: Mapping[str, Any]) -> Request:
    """Check a received request's shape; :class:`ProtocolError` if it is wrong."""
    call_id = msg.get("id")
    if not isinstance(call_id, int) or isinstance(call_id, bool) or call_id <= 0:
        raise ProtocolError("RPC request without a positive integer id")
    if msg.get("ping") is True:
        return PingRequest(id=call_id, ping=True)
    if msg.get("cancel") is True:
        return CancelRequest(id=call_id, cancel=True)
    stages = msg.get("stages")
    if not isinstance(stages, list) or not all(
        _is_str_list(stage) and len(stage) == 2 for stage in stages
    ):
        raise ProtocolError("RPC request stages must be [[op, argtext], ...]")
    deadline = msg.get("deadline")
    if (
        not isinstance(deadline, int | float)
        or isinstance(deadline, bool)
        or not math.isfinite(deadline)
    ):
        raise ProtocolError("RPC request without a finite numeric deadline")
    src = msg.get("src")
    source: Source
    if isinstance(src, dict) and len(src) == 1:
        if isinstance(src.get("bytes"), bytes):
            source = SrcBytes(bytes=src["bytes"])
        elif isinstance(src.get("path"), str):
            source = SrcPath(path=src["path"])
        elif isinstance(src.get("url"), str):
            source = SrcUrl(url=src["url"])
        else:
            raise ProtocolError("RPC request src must be {bytes}, {path} or {url}")
    else:
        raise ProtocolError("RPC request src must be {bytes}, {path} or {url}")
    req = CallRequest(id=call_id, stages=stages, src=source, deadline=float(deadline))
    if msg.get("progress") is True:
        req["progress"] = True
    reqid = msg.get("reqid")
    if isinstance(reqid, str) and 0 < len(reqid) <= MAX_REQID_CHARS and reqid.isprintable():
        req["reqid"] = reqid
    return req


def make_call(
    call_id: int,
    stages: Sequence[tuple[str, str]],
    src: bytes | str,
    deadline: float,
    *,
    progress: bool = False,
    reqid: str | None = None,
) -> CallRequest:
    """Build a call request; a ``str`` source is a path on the worker's host.
    ``progress`` asks the worker for progress messages while the call runs;
    ``reqid`` tags the call with the request it serves (for the worker's log)."""
    source: Source = SrcBytes(bytes=src) if isinstance(src, bytes) else SrcPath(path=src)
    req = CallRequest(
        id=call_id, stages=[[op, arg] for op, arg in stages], src=source, deadline=deadline
    )
    if progress:
        req["progress"] = True
    if reqid:
        req["reqid"] = reqid[:MAX_REQID_CHARS]
    return req


def progress_value(msg: Mapping[str, Any]) -> float | None:
    """The percentage of a progress message, or ``None`` if ``msg`` is not one."""
    if "ok" in msg:
        return None
    value = msg.get("progress")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, min(100.0, float(value)))
    return None


def ok_response(call_id: int, output: Output, load: int) -> OkResponse:
    """The success answer carrying an op chain's output."""
    resp = OkResponse(id=call_id, ok=True, mime=output.mime, meta=dict(output.meta), load=load)
    if output.body is not None:
        resp["body"] = output.body
    else:
        assert output.path is not None  # an Output has exactly one of them
        resp["path"] = output.path
    return resp


def error_response(call_id: int, err: DoraError, load: int) -> ErrorResponse:
    """The failure answer: the error's status and message."""
    return ErrorResponse(id=call_id, ok=False, code=err.status, error=err.message, load=load)


def output_from_response(msg: Mapping[str, Any]) -> Output:
    """Rebuild an :class:`Output` (or raise the remote error) from an answer."""
    if msg.get("ok") is not True:
        code = msg.get("code")
        error = msg.get("error")
        if not isinstance(code, int) or not isinstance(error, str):
            raise ProtocolError("RPC error answer without code and error")
        raise error_from_status(code, error)
    mime = msg.get("mime")
    meta = msg.get("meta", {})
    body = msg.get("body")
    path = msg.get("path")
    if not isinstance(mime, str) or not isinstance(meta, dict):
        raise ProtocolError("RPC answer without mime and meta")
    if isinstance(body, bytes) and path is None:
        return Output(mime=mime, body=body, meta=meta)
    if isinstance(path, str) and body is None:
        return Output(mime=mime, path=path, meta=meta)
    raise ProtocolError("RPC answer needs exactly one of body (bytes) or path (str)")
