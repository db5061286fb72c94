"""Storing job outputs: automatic keys, saveas without force, files, HLS sets (real LocalStore)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dora.b64 import urlsafe_b64encode
from dora.builtin_ops.av import AV_SPECS
from dora.config import Limits
from dora.errors import BadRequest, ProcessingFailed
from dora.etag import qiniu_etag
from dora.fop import Stage, parse_stage
from dora.ops import Output
from dora.scheduler.jobsave import auto_key, hls_keys, rewrite_playlist, save_output
from dora.storage.local import LocalStore

PLAIN = parse_stage("avthumb/m3u8/segtime/2", AV_SPECS)
PLAYLIST = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-KEY:METHOD=AES-128,URI="playlist.key",IV=0x0
#EXTINF:2.0,
segment-000000.ts
#EXTINF:1.5,
segment-000001.ts
#EXT-X-ENDLIST
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "buckets", Limits()) as objects:
        yield objects


def hls_output(folder: Path, *, key_file: bool = True) -> Output:
    """What the worker answers for HLS: the playlist's path, its segments in meta."""
    folder.mkdir(parents=True)
    (folder / "playlist.m3u8").write_text(PLAYLIST)
    for n in range(2):
        (folder / f"segment-00000{n}.ts").write_bytes(bytes([n]) * 188)
    meta: dict[str, object] = {
        "playlist": "playlist.m3u8",
        "segments": ["segment-000000.ts", "segment-000001.ts"],
    }
    if key_file:
        (folder / "playlist.key").write_bytes(bytes(16))
        meta["key"] = "playlist.key"
    return Output(
        mime="application/vnd.apple.mpegurl", path=str(folder / "playlist.m3u8"), meta=meta
    )


def test_segment_keys_sit_next_to_the_playlist() -> None:
    names = ["segment-000000.ts", "segment-000001.ts"]
    assert hls_keys("v/a.m3u8", names, "playlist.key", PLAIN) == {
        "segment-000000.ts": "v/a-segment-000000.ts",
        "segment-000001.ts": "v/a-segment-000001.ts",
        "playlist.key": "v/a.key",
    }
    pattern = urlsafe_b64encode("p-$(count).ts")
    patterned = parse_stage(f"avthumb/m3u8/pattern/{pattern}", AV_SPECS)
    assert hls_keys("v/a.m3u8", ["p-000000.ts"], None, patterned) == {
        "p-000000.ts": "v/p-000000.ts"
    }
    assert hls_keys("top.m3u8", ["s.ts"], None, PLAIN) == {"s.ts": "top-s.ts"}
    clash = urlsafe_b64encode("a$(count).m3u8")
    with pytest.raises(BadRequest, match="overwrite the playlist"):
        hls_keys(
            "v/a0.m3u8", ["a0.m3u8"], None, parse_stage(f"avthumb/m3u8/pattern/{clash}", AV_SPECS)
        )


def test_the_playlist_is_rewritten_to_the_stored_keys() -> None:
    keys = {
        "segment-000000.ts": "v/a-segment-000000.ts",
        "segment-000001.ts": "v/a-segment-000001.ts",
        "playlist.key": "v/a.key",
    }
    relative = rewrite_playlist(PLAYLIST, keys, "v/", None)
    assert 'URI="a.key"' in relative
    assert [ln for ln in relative.splitlines() if ln.endswith(".ts")] == [
        "a-segment-000000.ts",
        "a-segment-000001.ts",
    ]
    base = "http://cdn.example.com/"
    domained = PLAYLIST.replace("\nsegment-", f"\n{base}segment-")
    absolute = rewrite_playlist(domained, keys, "v/", base)
    assert f"{base}v/a-segment-000001.ts" in absolute.splitlines()
    assert f'URI="{base}v/a.key"' in absolute
    with pytest.raises(ProcessingFailed, match="unexpected entry"):
        rewrite_playlist(PLAYLIST + "other.ts\n", keys, "v/", None)
    # A key served from elsewhere (hlsKeyUrl) is left as it is.
    remote = PLAYLIST.replace('URI="playlist.key"', 'URI="https://keys.example.com/k"')
    assert 'URI="https://keys.example.com/k"' in rewrite_playlist(remote, keys, "v/", None)


async def test_outputs_without_a_key_are_stored_under_their_hash(store: LocalStore) -> None:
    body = b"\x89PNG pretend"
    out = Output(mime="image/png", body=body)
    assert auto_key("z0.job", 3, out) is None
    saved = await save_output(
        store, out, "b", None, overwrite=False, last_stage=PLAIN, max_keys=100
    )
    assert saved.key == saved.hash == qiniu_etag(body)
    assert (await store.stat("b", saved.key)).mime == "image/png"
    again = await save_output(
        store, out, "b", None, overwrite=False, last_stage=PLAIN, max_keys=100
    )
    assert again == saved  # the same output, stored once, no returnOld


async def test_saveas_keeps_or_overwrites_and_files_stream_in(
    store: LocalStore, tmp_path: Path
) -> None:
    old = await store.put("b", "k.mp4", b"old")
    movie = tmp_path / "work" / "avthumb.mp4"
    movie.parent.mkdir()
    movie.write_bytes(b"m" * (3 * 1024 * 1024 + 7))  # several chunks
    out = Output(mime="video/mp4", path=str(movie), meta={"files": ["avthumb.mp4"]})
    kept = await save_output(
        store, out, "b", "k.mp4", overwrite=False, last_stage=PLAIN, max_keys=9
    )
    assert (kept.key, kept.hash, kept.return_old) == ("k.mp4", old.hash, True)
    written = await save_output(
        store, out, "b", "k.mp4", overwrite=True, last_stage=PLAIN, max_keys=9
    )
    meta = await store.stat("b", "k.mp4")
    assert (written.hash, written.return_old, meta.size) == (meta.hash, False, movie.stat().st_size)


async def test_an_hls_set_is_stored_segments_first(store: LocalStore, tmp_path: Path) -> None:
    out = hls_output(tmp_path / "work" / "stage-0")
    assert auto_key("z0.job", 1, out) == "z0.job/1.m3u8"
    saved = await save_output(
        store, out, "b", "v/a.m3u8", overwrite=False, last_stage=PLAIN, max_keys=9
    )
    assert saved.key == "v/a.m3u8"
    assert saved.keys == ("v/a-segment-000000.ts", "v/a-segment-000001.ts", "v/a.key")
    playlist = store.local_path("b", "v/a.m3u8")
    assert playlist is not None
    text = playlist.read_text()
    assert "a-segment-000001.ts" in text.splitlines()
    assert 'URI="a.key"' in text
    # Every name in the playlist resolves next to it, in the store's directory.
    assert (playlist.parent / "a-segment-000000.ts").read_bytes() == bytes(188)
    assert (playlist.parent / "a.key").read_bytes() == bytes(16)
    assert saved.hash == (await store.stat("b", "v/a.m3u8")).hash
    with pytest.raises(BadRequest, match="at most 2"):
        await save_output(
            store, hls_output(tmp_path / "w2"), "b", "x.m3u8", overwrite=True,
            last_stage=PLAIN, max_keys=3,
        )  # fmt: skip


def test_a_stage_without_args_is_fine_for_hls_keys() -> None:
    bare = Stage("avthumb", {}, (), "avthumb/m3u8")
    assert hls_keys("a.m3u8", ["s.ts"], None, bare) == {"s.ts": "a-s.ts"}
