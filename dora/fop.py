"""The fop grammar: ``op/v/k/v/...|op2/...|saveas/<EncodedEntryURI>[/sign/<AK>:<sig>]``.

A fop string is parsed into typed, validated :class:`Stage` objects against
a catalog of :class:`~dora.schema.OpSpec`; an unknown op or a bad argument is
a 400 that names the op and the argument, raised before any work is done.
A trailing ``saveas`` becomes a :class:`SaveAs`. ``plan`` cuts a chain into
segments that each run in one call: adjacent builtin ops fuse (decode once,
encode once); a third-party op is a segment of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dora.b64 import decode_entry
from dora.errors import BadRequest, DoraError, InvalidArgument
from dora.schema import OpSpec

MAX_FOP_CHARS = 8192
MAX_STAGES = 20
Catalog = Mapping[str, OpSpec]


@dataclasses.dataclass(frozen=True, slots=True)
class Stage:
    """One validated fop: the op, its arguments, and the text it came from."""

    op: str
    args: Mapping[str, Any]  # the last value of each parameter
    items: tuple[tuple[str, Any], ...]  # every parameter in URL order
    text: str  # e.g. "imageView2/2/w/300"

    @property
    def argtext(self) -> str:
        """The text after the op name (``"2/w/300"``), as sent over the wire."""
        return self.text[len(self.op) + 1 :]

    def get(self, name: str, default: Any = None) -> Any:
        return self.args.get(name, default)


@dataclasses.dataclass(frozen=True, slots=True)
class SaveAs:
    """A trailing ``saveas/<entry>[/sign/<AK>:<sig>]``."""

    bucket: str
    key: str | None
    sign: str | None  # "<AK>:<sig>" when given
    signed_text: str  # the fop text up to and including the encoded entry


@dataclasses.dataclass(frozen=True, slots=True)
class FopChain:
    stages: tuple[Stage, ...]
    saveas: SaveAs | None
    text: str

    @property
    def fops_text(self) -> str:
        """The processing part, without ``saveas``: the cache identity of the result."""
        return "|".join(stage.text for stage in self.stages)


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """Stages that run in one call on one kind of instance."""

    service: str  # "builtin" or the third-party op's name
    stages: tuple[Stage, ...]


def parse_stage(text: str, catalog: Catalog) -> Stage:
    """Parse one fop (no pipes) against the catalog."""
    tokens = text.split("/")
    while len(tokens) > 1 and tokens[-1] == "":
        tokens.pop()  # tolerate a trailing slash, as Qiniu does
    name = tokens[0]
    if not name:
        raise BadRequest(f"empty fop in {text!r}")
    spec = catalog.get(name)
    if spec is None:
        raise BadRequest(f"unknown fop {name!r}")
    rest = tokens[1:]
    if spec.raw:
        return Stage(name, MappingProxyType({}), (), "/".join(tokens))
    items: list[tuple[str, Any]] = []
    pos = 0
    if spec.positional is not None:
        pname, ptype = spec.positional
        if rest and rest[0] not in spec.params and rest[0] not in spec.flags:
            items.append((pname, ptype.parse(name, pname, rest[0])))
            pos = 1
        elif spec.positional_required:
            raise InvalidArgument(name, pname, "missing")
    while pos < len(rest):
        key = rest[pos]
        if key in spec.flags:
            items.append((key, True))
            pos += 1
            continue
        ptype_for_key = spec.params.get(key)
        if ptype_for_key is None:
            if key == "":
                raise BadRequest(f"{name}: empty parameter name in {text!r}")
            raise InvalidArgument(name, key, "unknown parameter")
        if pos + 1 >= len(rest):
            raise InvalidArgument(name, key, "missing value")
        items.append((key, ptype_for_key.parse(name, key, rest[pos + 1])))
        pos += 2
    if not spec.ordered:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise InvalidArgument(name, key, "given more than once")
            seen.add(key)
    args = MappingProxyType(dict(items))
    for required in spec.required:
        if required not in args:
            raise InvalidArgument(name, required, "missing")
    if spec.check is not None:
        spec.check(args)
    return Stage(name, args, tuple(items), "/".join(tokens))


def _parse_saveas(text: str) -> SaveAs:
    tokens = text.split("/")
    if len(tokens) < 2 or not tokens[1]:
        raise InvalidArgument("saveas", "entry", "missing")
    try:
        bucket, key = decode_entry(tokens[1])
    except DoraError as exc:
        raise InvalidArgument("saveas", "entry", exc.message) from exc
    sign: str | None = None
    if len(tokens) > 2:
        if tokens[2] != "sign" or len(tokens) != 4 or ":" not in tokens[3]:
            raise BadRequest("saveas: expected saveas/<EncodedEntryURI>[/sign/<AK>:<sign>]")
        sign = tokens[3]
    return SaveAs(bucket, key, sign, "/".join(tokens[:2]))


def parse_fops(text: str, catalog: Catalog, *, max_stages: int = MAX_STAGES) -> FopChain:
    """Parse a pipe-separated fop chain with an optional trailing ``saveas``."""
    if not text:
        raise BadRequest("empty fop")
    if len(text) > MAX_FOP_CHARS:
        raise BadRequest(f"fop longer than {MAX_FOP_CHARS} characters")
    parts = text.split("|")
    if len(parts) > max_stages + 1:
        raise BadRequest(f"more than {max_stages} fops in one chain")
    saveas: SaveAs | None = None
    stages: list[Stage] = []
    signed_prefix_len = 0
    for index, part in enumerate(parts):
        if part.startswith("saveas/") or part == "saveas":
            if index != len(parts) - 1:
                raise BadRequest("saveas must be the last fop")
            saveas = _parse_saveas(part)
            signed_prefix_len += len(saveas.signed_text)
            continue
        stages.append(parse_stage(part, catalog))
        signed_prefix_len += len(part) + 1
    if not stages:
        raise BadRequest("no fop before saveas")
    if saveas is not None:
        saveas = dataclasses.replace(saveas, signed_text=text[:signed_prefix_len])
    return FopChain(tuple(stages), saveas, text)


def parse_pfop(text: str, catalog: Catalog) -> list[FopChain]:
    """Parse a pfop ``fops`` field: ``;``-separated chains."""
    chains = [chunk for chunk in text.split(";") if chunk.strip()]
    if not chains:
        raise BadRequest("empty fops")
    return [parse_fops(chunk.strip(), catalog) for chunk in chains]


def plan(chain: FopChain, catalog: Catalog) -> list[Segment]:
    """Cut a chain into segments: adjacent builtin ops fuse into one call."""
    segments: list[Segment] = []
    run: list[Stage] = []
    for stage in chain.stages:
        spec = catalog[stage.op]
        if spec.kind == "external":
            if run:
                segments.append(Segment("builtin", tuple(run)))
                run = []
            segments.append(Segment(stage.op, (stage,)))
        else:
            run.append(stage)
    if run:
        segments.append(Segment("builtin", tuple(run)))
    return segments
