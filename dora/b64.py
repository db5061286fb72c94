"""URL-safe base64 and the EncodedEntryURI, as Qiniu's API spells them.

Qiniu's URL-safe base64 is standard base64 with ``+`` → ``-`` and ``/`` →
``_``, padding kept on output. Decoders accept missing padding because
clients routinely strip it. Free-text fop parameters (watermark text, URLs,
colours) travel in this encoding, and so does an entry::

    EncodedEntryURI = urlsafe_b64("<bucket>:<key>")   or   urlsafe_b64("<bucket>")

Decoding is strict about the alphabet: a stray character is a 400 that names
the problem, not silently skipped bytes (the stdlib decoder's default).
"""

from __future__ import annotations

import base64
import binascii
import re

from dora.errors import BadRequest

__all__ = [
    "decode_entry",
    "decode_text",
    "encode_entry",
    "urlsafe_b64decode",
    "urlsafe_b64encode",
]

# The URL-safe alphabet, then at most two '=' of padding at the very end.
_URLSAFE = re.compile(rb"[A-Za-z0-9_-]*={0,2}")

# How much of a bad input an error message quotes.
_QUOTE_LIMIT = 40


def _quoted(raw: bytes) -> str:
    """A short, printable rendering of *raw* for an error message."""
    text = raw[:_QUOTE_LIMIT].decode("ascii", "replace")
    return repr(text + ("..." if len(raw) > _QUOTE_LIMIT else ""))


def urlsafe_b64encode(data: bytes | str) -> str:
    """Encode *data* (a str is taken as UTF-8) in URL-safe base64, padding kept."""
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).decode("ascii")


def urlsafe_b64decode(text: str | bytes) -> bytes:
    """Decode URL-safe base64, with or without its ``=`` padding.

    Raises :class:`~dora.errors.BadRequest` on a character outside the
    URL-safe alphabet, padding anywhere but the end, or an impossible length.
    """
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError as exc:
            raise BadRequest(f"invalid base64: non-ASCII character at offset {exc.start}") from exc
    else:
        raw = bytes(text)
    if _URLSAFE.fullmatch(raw) is None:
        raise BadRequest(f"invalid base64: {_quoted(raw)} is not URL-safe base64")
    body = raw.rstrip(b"=")
    if len(body) % 4 == 1:
        raise BadRequest(f"invalid base64: {_quoted(raw)} has an impossible length")
    if len(raw) != len(body) and len(raw) % 4 != 0:
        raise BadRequest(f"invalid base64: {_quoted(raw)} has wrong padding")
    padded = body + b"=" * (-len(body) % 4)
    try:
        return base64.urlsafe_b64decode(padded)
    except binascii.Error as exc:  # unreachable after the checks; kept as a guard
        raise BadRequest(f"invalid base64: {_quoted(raw)}: {exc}") from exc


def decode_text(text: str | bytes) -> str:
    """Decode a free-text fop parameter: URL-safe base64 of UTF-8 text."""
    data = urlsafe_b64decode(text)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"invalid base64 text: decoded bytes are not UTF-8 (at offset {exc.start})"
        ) from exc


def encode_entry(bucket: str, key: str | None) -> str:
    """The EncodedEntryURI of *bucket* and *key* (``bucket`` alone when key is None)."""
    return urlsafe_b64encode(bucket if key is None else f"{bucket}:{key}")


def decode_entry(text: str | bytes) -> tuple[str, str | None]:
    """Split an EncodedEntryURI into ``(bucket, key)``.

    The key may itself contain ``:``, so the split is on the first one; an
    entry without ``:`` names a bucket alone and yields ``key=None``.
    """
    try:
        entry = decode_text(text)
    except BadRequest as exc:
        raise BadRequest(f"invalid entry: {exc.message}") from exc
    bucket, sep, key = entry.partition(":")
    if not bucket:
        raise BadRequest("invalid entry: empty bucket name")
    return bucket, (key if sep else None)
