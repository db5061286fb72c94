"""Object stores: the ObjectStore seam and its implementations."""

from dora.storage.base import ByteStream, ObjectMeta, ObjectStore
from dora.storage.keys import validate_bucket, validate_key
from dora.storage.local import LocalStore

__all__ = [
    "ByteStream",
    "LocalStore",
    "ObjectMeta",
    "ObjectStore",
    "validate_bucket",
    "validate_key",
]
