"""Argument schemas of the audio/video ops: every mistake is a 400 before any work."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dora.builtin_ops.av as av
from dora.b64 import urlsafe_b64encode as b64
from dora.builtin_ops.av import AV_SPECS, validate_av_stage
from dora.builtin_ops.av.filters import escape_value
from dora.errors import InvalidArgument
from dora.fop import parse_fops, parse_stage

QUOTED = b64('https://k.example/"x"')


def test_the_public_api() -> None:
    assert av.__all__ == ["AV_SPECS", "JOB_TIMEOUT", "run_av", "validate_av_stage"]
    params = inspect.signature(av.run_av).parameters
    assert list(params) == [
        "stage",
        "src_path",
        "out_dir",
        "limits",
        "progress",
        "cancel",
        "timeout",
        "resolve_url",
    ]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(params)[4:])


def test_the_table() -> None:
    assert set(AV_SPECS) == {"avinfo", "vframe", "avthumb", "avconcat"}
    assert all(spec.kind == "av" for spec in AV_SPECS.values())
    # Processing URLs may use avinfo and vframe; transcoding is for jobs.
    assert {name for name, spec in AV_SPECS.items() if spec.sync} == {"avinfo", "vframe"}


def test_a_full_avthumb_parses_to_typed_values() -> None:
    stage = parse_stage(
        "avthumb/mp4/ab/128k/vb/1.25m/r/29.97/s/1280x720/autoscale/1/ss/2.5/t/10"
        "/rotate/90/stripmeta/1/aspect/16:9/acodec/libfaac/wmGravity/SouthEast"
        f"/wmText/{b64('hi')}/wmFontSize/400/wmFontColor/{b64('#ff0000')}",
        AV_SPECS,
    )
    assert stage.args["ab"] == 128_000 and stage.args["vb"] == 1_250_000
    assert stage.args["s"] == (1280, 720) and stage.args["autoscale"] is True
    assert (stage.args["ss"], stage.args["t"], stage.args["r"]) == (2.5, 10.0, 29.97)
    assert stage.args["wmText"] == "hi" and stage.args["wmGravity"] == "SouthEast"


def test_hls_parameters() -> None:
    stage = parse_stage(
        f"avthumb/m3u8/segtime/6/pattern/{b64('seg-$(count).ts')}/hlsKey/{b64(bytes(16))}"
        f"/hlsKeyUrl/{b64('https://k.example/1')}",
        AV_SPECS,
    )
    assert stage.args["segtime"] == 6 and stage.args["hlsKey"] == bytes(16)
    assert parse_stage("avthumb/hls/noDomain/1", AV_SPECS).args["format"] == "hls"


@pytest.mark.parametrize(
    ("fop", "argument"),
    [
        ("vframe/jpg", "offset"),
        ("vframe/gif/offset/1", "format"),
        ("vframe/jpg/offset/1/w/3841", "w"),
        ("vframe/jpg/offset/1/h/0", "h"),
        ("vframe/jpg/offset/-1", "offset"),
        ("vframe/jpg/offset/1/rotate/45", "rotate"),
        ("avthumb/avi", "format"),
        ("avthumb/mp4/s/10x10", "s"),
        ("avthumb/mp4/s/3840x3840", "s"),
        ("avthumb/mp4/s/big", "s"),
        ("avthumb/mp4/vb/fast", "vb"),
        ("avthumb/mp4/vb/1g", "vb"),
        ("avthumb/mp4/ab/2m", "ab"),
        ("avthumb/mp4/ab/128k/aq/3", "aq"),
        ("avthumb/mp4/an/1/vn/1", "vn"),
        ("avthumb/mp4/r/0", "r"),
        ("avthumb/mp4/acodec/libopus", "acodec"),
        ("avthumb/mp3/vcodec/libx264", "vcodec"),
        ("avthumb/webm/ar/44100", "ar"),
        ("avthumb/mp3/ac/6", "ac"),
        ("avthumb/mp4/vcodec/copy/s/640x480", "s"),
        ("avthumb/mp4/acodec/copy/ab/64k", "ab"),
        ("avthumb/mp4/segtime/10", "segtime"),
        ("avthumb/m3u8/segtime/1", "segtime"),
        ("avthumb/m3u8/segtime/121", "segtime"),
        (f"avthumb/m3u8/hlsKey/{b64(bytes(15))}", "hlsKey"),
        (f"avthumb/m3u8/hlsKeyUrl/{b64('https://k')}", "hlsKeyUrl"),
        (f"avthumb/m3u8/hlsKey/{b64(bytes(16))}/hlsKeyUrl/{QUOTED}", "hlsKeyUrl"),
        (f"avthumb/m3u8/pattern/{b64('seg.ts')}", "pattern"),
        (f"avthumb/m3u8/pattern/{b64('../$(count).ts')}", "pattern"),
        (f"avthumb/m3u8/pattern/{b64('%d$(count).ts')}", "pattern"),
        (f"avthumb/m3u8/noDomain/1/domain/{b64('cdn.example.com')}", "domain"),
        (f"avthumb/mp4/wmFont/{b64('x:y')}", "wmFont"),
        (f"avthumb/mp4/wmFontColor/{b64('red;drop')}", "wmFontColor"),
        ("avthumb/mp4/wmGravity/Middle", "wmGravity"),
        ("avthumb/mp4/wmImage/!!!", "wmImage"),
    ],
)
def test_bad_arguments_are_400s_naming_the_argument(fop: str, argument: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_stage(fop, AV_SPECS)
    assert caught.value.status == 400
    assert caught.value.arg == argument


@pytest.mark.parametrize(
    ("argtext", "argument"),
    [
        ("", "mode"),
        ("1/format/mp4/" + b64("https://a/b"), "mode"),
        ("2/mp4/" + b64("https://a/b"), "format"),
        ("2/format/gif/" + b64("https://a/b"), "format"),
        ("2/format/m3u8/" + b64("https://a/b"), "format"),
        ("2/format/mp4", "url"),
        ("2/format/mp4/" + "/".join([b64("https://a/b")] * 21), "url"),
        ("2/format/mp4/%%%", "url 1"),
        ("2/format/mp4/" + b64("https://a/b") + "/" + b64("two\nlines"), "url 2"),
    ],
)
def test_avconcat_text_is_validated(argtext: str, argument: str) -> None:
    stage = parse_stage(f"avconcat/{argtext}" if argtext else "avconcat", AV_SPECS)
    with pytest.raises(InvalidArgument) as caught:
        validate_av_stage(stage)
    assert caught.value.arg == argument


def test_avconcat_in_a_job_chain() -> None:
    urls = "/".join(b64(f"https://a/{n}.mp4") for n in range(3))
    chain = parse_fops(f"avconcat/2/format/mp4/{urls}|saveas/{b64('b:k.mp4')}", AV_SPECS)
    validate_av_stage(chain.stages[0])
    assert chain.stages[0].argtext.startswith("2/format/mp4/")


def unquote(text: str, specials: str) -> str:
    """One level of ffmpeg's backslash quoting; no special character may stay bare."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 1
            assert index < len(text), "a dangling backslash"
            out.append(text[index])
        else:
            assert char not in specials, f"bare {char!r} in {text!r}"
            out.append(char)
        index += 1
    return "".join(out)


@given(st.text(max_size=40))
def test_escaped_values_survive_ffmpegs_two_levels_of_quoting(value: str) -> None:
    graph_level = unquote(escape_value(value), "[],;'")
    assert unquote(graph_level, ":'") == value
