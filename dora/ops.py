"""The Op seam: what every op returns, and the one table that names them.

Builtin ops are pure functions from (source, parsed stage) to an
:class:`Output`; the runtime decides where they run. Third-party ops are
registered at run time and are ``kind="external"`` specs in the same catalog.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """The result of an op chain: bytes (or a file path for large media)."""

    mime: str
    body: bytes | None = None
    path: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.body is None) == (self.path is None):
            raise ValueError("an Output has exactly one of body or path")
