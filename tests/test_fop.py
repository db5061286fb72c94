"""The fop grammar: parsing, validation against op schemas, saveas, planning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dora.b64 import encode_entry
from dora.errors import BadRequest, InvalidArgument
from dora.fop import parse_fops, parse_pfop, parse_stage, plan
from dora.schema import (
    B64TextParam,
    BoolParam,
    EnumParam,
    IntParam,
    OpSpec,
    PatternParam,
    Quality,
    QualityParam,
)


def _needs_w_or_h(args: Mapping[str, Any]) -> None:
    if "w" not in args and "h" not in args and args.get("mode") == 1:
        raise InvalidArgument("view", "w", "mode 1 needs w or h")


CATALOG = {
    "view": OpSpec(
        "view",
        positional=("mode", IntParam(0, 5)),
        params={
            "w": IntParam(1, 9999),
            "h": IntParam(1, 9999),
            "q": QualityParam(),
            "format": EnumParam(("jpg", "png", "webp")),
            "interlace": BoolParam(),
        },
        check=_needs_w_or_h,
    ),
    "mogr": OpSpec(
        "mogr",
        params={
            "thumbnail": PatternParam(r"[0-9x!%<>@^pr]+", "a geometry"),
            "rotate": IntParam(1, 360),
        },
        flags=frozenset({"auto-orient", "strip"}),
        ordered=True,
    ),
    "info": OpSpec("info", kind="info"),
    "mark": OpSpec(
        "mark",
        positional=("mode", IntParam(1, 3)),
        params={"text": B64TextParam()},
        required=frozenset({"text"}),
    ),
    "thirdparty": OpSpec("thirdparty", kind="external", raw=True),
}


def test_positional_and_params_are_typed() -> None:
    stage = parse_stage("view/2/w/300/h/200/q/80!/format/PNG", CATALOG)
    assert stage.op == "view"
    assert stage.args == {"mode": 2, "w": 300, "h": 200, "q": Quality(80, True), "format": "png"}
    assert stage.argtext == "2/w/300/h/200/q/80!/format/PNG"


def test_trailing_slash_is_tolerated() -> None:
    assert parse_stage("view/2/w/300/", CATALOG).args["w"] == 300


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nosuchop/1", "unknown fop 'nosuchop'"),
        ("view/9/w/1", "'mode': 9 is out of range [0, 5]"),
        ("view/2/w/0", "'w': 0 is out of range"),
        ("view/2/w/abc", "'w': expected an integer"),
        ("view/2/w", "'w': missing value"),
        ("view/2/zz/1", "'zz': unknown parameter"),
        ("view/2/w/1/w/2", "'w': given more than once"),
        ("view/2/format/gif", "'format': 'gif' is not one of"),
        ("view/2/interlace/2", "'interlace': expected 0 or 1"),
        ("view/1/format/jpg", "mode 1 needs w or h"),
        ("view", "'mode': missing"),
        ("mark/1", "'text': missing"),
        ("mark/1/text/%%%", "'text'"),
    ],
)
def test_bad_fops_name_the_op_and_argument(text: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_stage(text, CATALOG)
    assert fragment in info.value.message
    assert info.value.status == 400


def test_ordered_params_keep_url_order_and_flags() -> None:
    stage = parse_stage("mogr/auto-orient/thumbnail/300x/rotate/90/thumbnail/!50p/strip", CATALOG)
    assert stage.items == (
        ("auto-orient", True),
        ("thumbnail", "300x"),
        ("rotate", 90),
        ("thumbnail", "!50p"),
        ("strip", True),
    )


def test_chain_with_signed_saveas() -> None:
    entry = encode_entry("out", "thumbs/cat.jpg")
    text = f"view/2/w/300|info|saveas/{entry}/sign/AK:c2ln"
    chain = parse_fops(text, CATALOG)
    assert [s.op for s in chain.stages] == ["view", "info"]
    assert chain.saveas is not None
    assert (chain.saveas.bucket, chain.saveas.key) == ("out", "thumbs/cat.jpg")
    assert chain.saveas.sign == "AK:c2ln"
    assert chain.saveas.signed_text == f"view/2/w/300|info|saveas/{entry}"
    assert chain.fops_text == "view/2/w/300|info"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "|",
        "view/2/w/1||info",
        f"saveas/{encode_entry('b', 'k')}",
        f"saveas/{encode_entry('b', 'k')}|view/2/w/1",
        "view/2/w/1|saveas/!!!",
        f"view/2/w/1|saveas/{encode_entry('b', 'k')}/nosign/x",
        "|".join(["info"] * 30),
    ],
)
def test_malformed_chains_are_400(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_fops(text, CATALOG)


def test_plan_fuses_builtin_runs_around_external_ops() -> None:
    chain = parse_fops("view/2/w/10|mogr/strip|thirdparty/any/args|info", CATALOG)
    segments = plan(chain, CATALOG)
    assert [(s.service, [st.op for st in s.stages]) for s in segments] == [
        ("builtin", ["view", "mogr"]),
        ("thirdparty", ["thirdparty"]),
        ("builtin", ["info"]),
    ]
    assert segments[1].stages[0].argtext == "any/args"


def test_pfop_splits_chains() -> None:
    chains = parse_pfop("view/2/w/10;info ; view/0/w/5", CATALOG)
    assert [c.text for c in chains] == ["view/2/w/10", "info", "view/0/w/5"]


@given(
    mode=st.integers(0, 5),
    w=st.one_of(st.none(), st.integers(1, 9999)),
    h=st.one_of(st.none(), st.integers(1, 9999)),
)
def test_valid_view_fops_round_trip_their_text(mode: int, w: int | None, h: int | None) -> None:
    parts = ["view", str(mode)]
    if w is not None:
        parts += ["w", str(w)]
    if h is not None:
        parts += ["h", str(h)]
    text = "/".join(parts)
    if mode == 1 and w is None and h is None:
        with pytest.raises(InvalidArgument):
            parse_stage(text, CATALOG)
        return
    stage = parse_stage(text, CATALOG)
    assert stage.text == text
    assert parse_stage(f"view/{stage.argtext}", CATALOG) == stage
    assert stage.get("w") == w and stage.get("h") == h
