"""Qiniu's etag: the content hash every stored object carries.

Data of at most one block (4 MiB) hashes to ``0x16 || SHA-1(data)``; longer
data to ``0x96 || SHA-1(SHA-1(block 1) || SHA-1(block 2) || ...)``. The 21
bytes are written in URL-safe base64 (padding kept, as Qiniu does; 21 bytes
never need any). Empty data hashes as one empty block.

SHA-1 is CPU work: call these from a thread (``asyncio.to_thread``) for
anything but small inputs. ``hashlib`` releases the GIL on large updates.
"""

from __future__ import annotations

import base64
import hashlib

BLOCK_SIZE = 4 * 1024 * 1024
_SMALL_PREFIX = b"\x16"
_LARGE_PREFIX = b"\x96"


class EtagHasher:
    """Incremental Qiniu etag, for data that arrives in chunks of any size."""

    __slots__ = ("_block", "_block_fill", "_digests", "_size")

    def __init__(self) -> None:
        self._digests: list[bytes] = []  # SHA-1 of each completed block
        self._block = hashlib.sha1(usedforsecurity=False)
        self._block_fill = 0
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes hashed so far."""
        return self._size

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the data."""
        view = memoryview(chunk).cast("B")
        self._size += len(view)
        while view:
            take = min(len(view), BLOCK_SIZE - self._block_fill)
            self._block.update(view[:take])
            self._block_fill += take
            view = view[take:]
            if self._block_fill == BLOCK_SIZE:
                self._digests.append(self._block.digest())
                self._block = hashlib.sha1(usedforsecurity=False)
                self._block_fill = 0

    def digest(self) -> str:
        """The etag of everything fed so far (the hasher stays usable)."""
        digests = list(self._digests)
        if self._block_fill or not digests:
            digests.append(self._block.digest())
        if len(digests) == 1:
            raw = _SMALL_PREFIX + digests[0]
        else:
            raw = _LARGE_PREFIX + hashlib.sha1(b"".join(digests), usedforsecurity=False).digest()
        return base64.urlsafe_b64encode(raw).decode("ascii")


def qiniu_etag(data: bytes | bytearray | memoryview) -> str:
    """The Qiniu etag of ``data``."""
    hasher = EtagHasher()
    hasher.update(data)
    return hasher.digest()
