"""Validation of bucket names and object keys.

Keys are ``/``-separated paths ("directories" are only a naming habit) that
the local store maps one-to-one onto files under the bucket's directory. So a
key must be a path that can neither escape that directory nor alias another
key: no absolute paths, no empty, ``.`` or ``..`` segments, no NUL or other
control characters, and each segment short enough to be a file name.

Internal files (metadata, temporary files, locks) live outside every bucket
directory, under names no bucket can take (they start with a dot), so no key
needs to be reserved for them.
"""

from __future__ import annotations

import re
import unicodedata

from dora.errors import BadRequest

BUCKET_NAME_RULE = "1-63 characters of A-Z, a-z, 0-9, '_' and '-'"
# A key segment becomes one file name; Linux file systems cap those at 255 bytes.
MAX_SEGMENT_BYTES = 255

_BUCKET_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")


def validate_bucket(name: object) -> str:
    """Return ``name`` if it is a valid bucket name, else raise :class:`BadRequest`."""
    if not isinstance(name, str) or _BUCKET_RE.fullmatch(name) is None:
        raise BadRequest(f"invalid bucket name {name!r}: use {BUCKET_NAME_RULE}")
    return name


def validate_key(key: object, max_bytes: int) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`BadRequest`.

    ``max_bytes`` bounds the key's UTF-8 length (``Limits.max_key_bytes``).
    """
    if not isinstance(key, str):
        raise BadRequest(f"key must be a string, not {type(key).__name__}")
    if not key:
        raise BadRequest("key is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise BadRequest(f"key is not valid UTF-8 (at character {exc.start})") from exc
    if size > max_bytes:
        raise BadRequest(f"key is {size} bytes long; the limit is {max_bytes} bytes")
    for index, char in enumerate(key):
        if unicodedata.category(char) == "Cc":
            raise BadRequest(
                f"key contains control character U+{ord(char):04X} at position {index}"
            )
    if key.startswith("/"):
        raise BadRequest("key must not start with '/'")
    if key.endswith("/"):
        raise BadRequest("key must not end with '/'")
    for segment in key.split("/"):
        if not segment:
            raise BadRequest("key must not contain an empty path segment ('//')")
        if segment in (".", ".."):
            raise BadRequest(f"key must not contain a {segment!r} path segment")
        segment_bytes = len(segment.encode("utf-8"))
        if segment_bytes > MAX_SEGMENT_BYTES:
            raise BadRequest(
                f"key segment {segment[:16]!r}... is {segment_bytes} bytes long; "
                f"each '/'-separated segment is at most {MAX_SEGMENT_BYTES} bytes"
            )
    return key


def is_valid_key(key: str, max_bytes: int) -> bool:
    """Whether :func:`validate_key` accepts ``key``."""
    try:
        validate_key(key, max_bytes)
    except BadRequest:
        return False
    return True
