"""LocalStore: the file-system ObjectStore, driven through its public surface."""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import qiniu.utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dora.config import Limits
from dora.errors import BadRequest, FileExists, NotFound, PayloadTooLarge, ServiceUnavailable
from dora.etag import qiniu_etag
from dora.storage.base import ObjectMeta, ObjectStore
from dora.storage.keys import is_valid_key, validate_bucket, validate_key
from dora.storage.local import LocalStore

MiB = 1024 * 1024
LIMITS = Limits()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    async with LocalStore(tmp_path / "data", LIMITS) as opened:
        yield opened


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for pos in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[pos : pos + size]


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(out, format="PNG")
    return out.getvalue()


def visible_files(root: Path) -> list[str]:
    """Every file under root, the internal lock stripes aside."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts
    )


# -- round trips and metadata -------------------------------------------------


async def test_is_an_object_store(store: LocalStore) -> None:
    assert isinstance(store, ObjectStore)


async def test_put_get_stat_round_trip(store: LocalStore) -> None:
    data = b"hello, dora\n"
    put = await store.put("photos", "greeting.txt", data)
    assert put == ObjectMeta(
        bucket="photos",
        key="greeting.txt",
        size=len(data),
        mime="text/plain",
        hash=str(qiniu.utils.etag_stream(io.BytesIO(data))),
        mtime=put.mtime,
        put_time_ns=put.put_time_ns,
    )
    assert abs(put.mtime - put.put_time_ns / 1e9) < 1e-6
    assert put.put_time == put.put_time_ns // 100
    assert await store.stat("photos", "greeting.txt") == put
    meta, body = await store.get("photos", "greeting.txt")
    assert (meta, body) == (put, data)


async def test_streamed_multi_block_put_matches_the_sdk(store: LocalStore) -> None:
    data = os.urandom(9 * MiB + 123)
    meta = await store.put("media", "big/blob.bin", chunks(data, 100_000))
    assert meta.size == len(data)
    path = store.local_path("media", "big/blob.bin")
    assert path is not None and path.read_bytes() == data
    assert meta.hash == qiniu.utils.etag(str(path)) == qiniu_etag(data)
    assert meta.mime == "application/octet-stream"


async def test_mime_sniffed_from_content_not_the_lying_extension(store: LocalStore) -> None:
    png = await store.put("b", "photo.jpg", png_bytes())
    assert png.mime == "image/png"
    css = await store.put("b", "site/style.css", chunks(b"body { margin: 0 }\n", 4))
    assert css.mime == "text/css"
    unknown = await store.put("b", "clip.mkv", bytes(range(256)) * 4)
    assert unknown.mime == "video/x-matroska"  # no signature: the extension decides
    given_type = await store.put("b", "data.bin", png_bytes(), mime="application/x-custom")
    assert given_type.mime == "application/x-custom"
    assert (await store.stat("b", "photo.jpg")).mime == "image/png"


async def test_empty_object(store: LocalStore) -> None:
    meta = await store.put("b", "empty", b"")
    assert (meta.size, meta.hash) == (0, "Fto5o-5ea0sNMlW_75VgGJCv2AcJ")
    assert await store.get("b", "empty") == (meta, b"")
    _, stream = await store.open_range("b", "empty")
    assert [c async for c in stream] == []


async def test_overwrite_replaces_and_overwrite_false_is_614(store: LocalStore) -> None:
    await store.put("b", "k", b"one")
    second = await store.put("b", "k", b"two")
    assert (await store.get("b", "k")) == (second, b"two")
    with pytest.raises(FileExists) as caught:
        await store.put("b", "k", chunks(b"three"), overwrite=False)
    assert caught.value.status == 614
    assert (await store.get("b", "k"))[1] == b"two"
    created = await store.put("b", "fresh", b"x", overwrite=False)
    assert created.size == 1


async def test_missing_things_are_404(store: LocalStore) -> None:
    with pytest.raises(NotFound, match="no such bucket"):
        await store.stat("nobucket", "k")
    with pytest.raises(NotFound, match="no such bucket"):
        await store.list("nobucket")
    await store.put("b", "dir/k", b"x")
    for key in ("missing", "dir", "dir/k/deeper"):
        with pytest.raises(NotFound) as caught:
            await store.stat("b", key)
        assert caught.value.status == 404
        with pytest.raises(NotFound):
            await store.get("b", key)
        with pytest.raises(NotFound):
            await store.delete("b", key)


async def test_get_refuses_objects_over_max_bytes(store: LocalStore) -> None:
    await store.put("b", "k", b"x" * 1000)
    with pytest.raises(PayloadTooLarge) as caught:
        await store.get("b", "k", max_bytes=999)
    assert caught.value.status == 413
    assert (await store.get("b", "k", max_bytes=1000))[1] == b"x" * 1000


# -- nested keys, deletion and file/folder conflicts --------------------------


async def test_nested_keys_and_delete_prunes_empty_folders(
    store: LocalStore, tmp_path: Path
) -> None:
    await store.put("b", "a/b/c.txt", b"deep")
    await store.put("b", "a/x", b"shallow")
    assert (await store.get("b", "a/b/c.txt"))[1] == b"deep"
    await store.delete("b", "a/b/c.txt")
    assert not (tmp_path / "data" / "b" / "a" / "b").exists()
    assert not (tmp_path / "data" / ".meta" / "b" / "a" / "b").exists()
    assert (await store.get("b", "a/x"))[1] == b"shallow"
    await store.delete("b", "a/x")
    assert list((tmp_path / "data" / "b").iterdir()) == []
    await store.put("b", "a", b"now a file")  # the folder is gone, so the name is free
    assert (await store.get("b", "a"))[1] == b"now a file"


async def test_a_key_cannot_be_both_an_object_and_a_folder(store: LocalStore) -> None:
    await store.put("b", "a/b", b"1")
    with pytest.raises(FileExists, match="folder"):
        await store.put("b", "a", b"2")
    await store.put("b", "c", b"3")
    with pytest.raises(FileExists, match="leading part"):
        await store.put("b", "c/d", b"4")
    assert (await store.get("b", "a/b"))[1] == b"1"
    assert (await store.get("b", "c"))[1] == b"3"


# -- listing --------------------------------------------------------------------


async def test_list_lexical_order_prefix_marker_limit(store: LocalStore) -> None:
    keys = ["a", "a-c", "a/b", "a/b0", "a0", "b/z/y", "é/x", "Z", "a/c/d"]
    for key in keys:
        # "a" and "a/b" cannot coexist on a file system: store "a" in another bucket
        if key != "a":
            await store.put("b", key, key.encode())
    stored = sorted(k for k in keys if k != "a")
    everything, marker = await store.list("b")
    assert [m.key for m in everything] == stored and marker == ""
    assert everything[0].hash == qiniu_etag(everything[0].key.encode())

    pages: list[str] = []
    marker = ""
    while True:
        page, marker = await store.list("b", marker=marker, limit=2)
        assert len(page) <= 2
        pages += [m.key for m in page]
        if not marker:
            break
    assert pages == stored

    by_prefix, _ = await store.list("b", prefix="a/")
    assert [m.key for m in by_prefix] == ["a/b", "a/b0", "a/c/d"]
    by_prefix, _ = await store.list("b", prefix="a/b")
    assert [m.key for m in by_prefix] == ["a/b", "a/b0"]
    after, _ = await store.list("b", prefix="a", marker="a/b0")
    assert [m.key for m in after] == ["a/c/d", "a0"]
    exact, marker = await store.list("b", limit=len(stored))
    assert len(exact) == len(stored) and marker == ""  # no phantom next page
    assert (await store.list("b", prefix="zzz")) == ([], "")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.sets(st.text(alphabet="ab-/.0é", min_size=1, max_size=6), max_size=12),
    prefix=st.text(alphabet="ab/-", max_size=3),
    marker=st.text(alphabet="ab/-", max_size=4),
    limit=st.integers(min_value=1, max_value=5),
)
def test_list_agrees_with_sorting(
    tmp_path_factory: pytest.TempPathFactory, keys: set[str], prefix: str, marker: str, limit: int
) -> None:
    valid = {k for k in keys if is_valid_key(k, LIMITS.max_key_bytes)}
    # drop keys that would be a folder of another key: the local store refuses those
    valid = {k for k in valid if not any(o.startswith(k + "/") for o in valid)}

    async def scenario() -> None:
        async with LocalStore(tmp_path_factory.mktemp("list"), LIMITS) as s:
            await s.create_bucket("b")
            for key in valid:
                await s.put("b", key, b"")
            expected = sorted(k for k in valid if k.startswith(prefix) and k > marker)
            page, next_marker = await s.list("b", prefix=prefix, marker=marker, limit=limit)
            assert [m.key for m in page] == expected[:limit]
            assert next_marker == (expected[limit - 1] if len(expected) > limit else "")

    asyncio.run(scenario())


# -- ranges ---------------------------------------------------------------------


async def test_open_range(store: LocalStore) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    await store.put("b", "r", data)

    async def read(start: int = 0, end: int | None = None, chunk: int = 1000) -> bytes:
        meta, stream = await store.open_range("b", "r", start, end, chunk)
        assert meta.size == len(data)
        parts = [c async for c in stream]
        assert all(0 < len(p) <= chunk for p in parts)
        return b"".join(parts)

    assert await read() == data
    assert await read(0, 0) == data[:1]
    assert await read(5, 9) == data[5:10]
    assert await read(10000) == data[10000:]
    assert await read(10, 10**9) == data[10:]  # an end past the object is cut
    assert await read(3, 700, chunk=1) == data[3:701]
    assert await read(chunk=10**9) == data  # chunks are capped
    for start, end in ((len(data), None), (-1, None), (5, 4)):
        with pytest.raises(BadRequest):
            await store.open_range("b", "r", start, end)
    with pytest.raises(BadRequest):
        await store.open_range("b", "r", chunk=0)
    with pytest.raises(NotFound):
        await store.open_range("b", "nope")


async def test_abandoned_range_stream_closes(store: LocalStore) -> None:
    await store.put("b", "r", b"z" * 5000)
    _, stream = await store.open_range("b", "r", chunk=100)
    assert await anext(stream) == b"z" * 100
    await stream.aclose()
    await stream.aclose()
    assert [c async for c in stream] == []


# -- invalid names --------------------------------------------------------------

BAD_KEYS = [
    "",
    "../x",
    "a/../../b",
    "..",
    ".",
    "a/./b",
    "/abs",
    "a//b",
    "a/",
    "a\x00b",
    "tab\there",
    "del\x7f",
    "\ud800lone-surrogate",
    "x" * (LIMITS.max_key_bytes + 1),
    "é" * (LIMITS.max_key_bytes // 2 + 1),  # short in characters, long in UTF-8 bytes
    "s" * 256,  # one segment longer than a file name may be
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=range(len(BAD_KEYS)))
async def test_bad_keys_are_400_everywhere(store: LocalStore, tmp_path: Path, key: str) -> None:
    await store.create_bucket("b")
    calls = [
        store.put("b", key, b"x"),
        store.stat("b", key),
        store.get("b", key),
        store.delete("b", key),
        store.open_range("b", key),
    ]
    for call in calls:
        with pytest.raises(BadRequest) as caught:
            await call
        assert caught.value.status == 400
    with pytest.raises(BadRequest):
        store.local_path("b", key)
    assert visible_files(tmp_path) == []


def test_key_messages_are_precise() -> None:
    cases = {
        "../x": "'..' path segment",
        "/abs": "start with '/'",
        "a\x00b": "control character U+0000 at position 1",
        "x" * 751: "751 bytes long; the limit is 750",
        "a//b": "empty path segment",
        "": "key is empty",
    }
    for key, message in cases.items():
        with pytest.raises(BadRequest, match=re.escape(message)):
            validate_key(key, 750)
    assert validate_key("a/b c/ü\\x.jpg", 750) == "a/b c/ü\\x.jpg"


@pytest.mark.parametrize("name", ["", "a" * 64, "has/slash", ".meta", ".tmp", "sp ace", "ü", "a.b"])
async def test_bad_bucket_names_are_400(store: LocalStore, name: str) -> None:
    with pytest.raises(BadRequest, match="invalid bucket name"):
        validate_bucket(name)
    with pytest.raises(BadRequest):
        await store.put(name, "k", b"x")
    with pytest.raises(BadRequest):
        await store.create_bucket(name)
    with pytest.raises(BadRequest):
        await store.list(name)


@settings(max_examples=300, deadline=None)
@given(key=st.text(alphabet=st.sampled_from("ab./\\~\x00 é-"), max_size=24) | st.text(max_size=40))
def test_any_accepted_key_stays_inside_its_bucket(key: str) -> None:
    root = Path("/srv/dora-data")
    s = LocalStore(root, LIMITS)
    if not is_valid_key(key, LIMITS.max_key_bytes):
        with pytest.raises(BadRequest):
            s.local_path("b", key)
        return
    path = s.local_path("b", key)
    assert path is not None
    normalized = Path(os.path.normpath(path))
    assert normalized == path  # nothing for the OS to collapse: one key, one file
    assert normalized.is_relative_to(root / "b") and normalized != root / "b"
    assert normalized.relative_to(root / "b").as_posix() == key


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(alphabet=st.sampled_from("ab./\\~ é-"), min_size=1, max_size=16))
def test_any_accepted_key_round_trips_on_disk(
    tmp_path_factory: pytest.TempPathFactory, key: str
) -> None:
    if not is_valid_key(key, LIMITS.max_key_bytes):
        return
    root = tmp_path_factory.mktemp("keys")

    async def scenario() -> None:
        async with LocalStore(root / "data", LIMITS) as s:
            meta = await s.put("b", key, key.encode())
            assert (await s.get("b", key)) == (meta, key.encode())
            assert [m.key for m in (await s.list("b"))[0]] == [key]
            await s.delete("b", key)

    asyncio.run(scenario())
    outside = [p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(root / "data")]
    assert outside == []


async def test_symlink_out_of_the_bucket_is_refused(store: LocalStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    await store.create_bucket("b")
    os.symlink(secret, tmp_path / "data" / "b" / "link")
    with pytest.raises(BadRequest, match="outside"):
        await store.get("b", "link")


# -- all or nothing -------------------------------------------------------------


async def test_oversized_stream_is_413_and_leaves_nothing(
    store: LocalStore, tmp_path: Path
) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        await store.put("b", "big", chunks(b"x" * 300_000, 10_000), max_bytes=250_000)
    assert caught.value.status == 413
    with pytest.raises(PayloadTooLarge):
        await store.put("b", "big", b"x" * 11, max_bytes=10)
    with pytest.raises(NotFound):
        await store.stat("b", "big")
    assert await store.buckets() == []
    assert visible_files(tmp_path) == []


async def test_upload_limit_is_the_default_bound(tmp_path: Path) -> None:
    async with LocalStore(tmp_path, Limits(max_upload_bytes=100)) as s:
        with pytest.raises(PayloadTooLarge):
            await s.put("b", "k", chunks(b"y" * 101, 7))
        assert (await s.put("b", "k", chunks(b"y" * 100, 7))).size == 100


async def test_cancelled_put_leaves_nothing(store: LocalStore, tmp_path: Path) -> None:
    written = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"p" * 100_000  # several write batches reach the temp file
        written.set()
        await asyncio.Event().wait()  # the client goes silent
        yield b"never"

    task = asyncio.create_task(store.put("b", "half", stalled()))
    await asyncio.wait_for(written.wait(), 5)
    assert any((tmp_path / "data" / ".tmp").iterdir())  # the temp file really existed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(NotFound):
        await store.stat("b", "half")
    assert visible_files(tmp_path) == []


async def test_failing_source_leaves_nothing(store: LocalStore, tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"q" * 300_000
        raise ConnectionResetError("client went away")

    await store.put("b", "k", b"old")
    with pytest.raises(ConnectionResetError):
        await store.put("b", "k", broken())
    assert (await store.get("b", "k"))[1] == b"old"
    assert visible_files(tmp_path) == ["data/.meta/b/k", "data/b/k"]


async def test_concurrent_puts_and_readers_stay_consistent(store: LocalStore) -> None:
    payloads = [bytes([i]) * (1000 + 7919 * i) for i in range(12)]
    await store.put("b", "hot", payloads[0])
    done = False

    async def reader() -> int:
        reads = 0
        while not done:
            meta, body = await store.get("b", "hot")
            assert body in payloads
            assert (meta.size, meta.hash) == (len(body), qiniu_etag(body))
            reads += 1
        return reads

    readers = [asyncio.create_task(reader()) for _ in range(3)]
    results = await asyncio.gather(*(store.put("b", "hot", chunks(p, 3000)) for p in payloads))
    done = True
    assert sum(await asyncio.gather(*readers)) > 0
    final, body = await store.get("b", "hot")
    assert final in results and body == payloads[results.index(final)]


# -- metadata repair ------------------------------------------------------------


async def test_files_placed_by_hand_get_metadata(store: LocalStore, tmp_path: Path) -> None:
    await store.create_bucket("b")
    (tmp_path / "data" / "b" / "sub").mkdir()
    (tmp_path / "data" / "b" / "sub" / "pic.dat").write_bytes(png_bytes())
    meta = await store.stat("b", "sub/pic.dat")
    assert (meta.mime, meta.hash, meta.size) == ("image/png", qiniu_etag(png_bytes()), meta.size)
    assert [m.key for m in (await store.list("b"))[0]] == ["sub/pic.dat"]


async def test_metadata_of_other_bytes_is_never_served(store: LocalStore, tmp_path: Path) -> None:
    await store.put("b", "k", b"original bytes")
    # Simulate a crash between the data rename and the metadata rename.
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"replaced!")
    os.replace(replacement, tmp_path / "data" / "b" / "k")
    meta, body = await store.get("b", "k")
    assert body == b"replaced!"
    assert (meta.size, meta.hash) == (9, qiniu_etag(b"replaced!"))
    (tmp_path / "data" / ".meta" / "b" / "k").write_text("{garbage")
    assert (await store.stat("b", "k")).hash == qiniu_etag(b"replaced!")


# -- buckets and life cycle -----------------------------------------------------


async def test_buckets(store: LocalStore) -> None:
    assert await store.buckets() == []
    await store.create_bucket("zeta")
    await store.put("alpha_1", "k", b"x")  # a put creates its bucket
    assert await store.buckets() == ["alpha_1", "zeta"]
    with pytest.raises(FileExists):
        await store.create_bucket("zeta")
    assert (await store.list("zeta")) == ([], "")


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = LocalStore(tmp_path, LIMITS)
    async with s:
        await s.put("b", "k", b"x")
    await s.close()  # closing twice is harmless
    with pytest.raises(ServiceUnavailable):
        await s.stat("b", "k")
    with pytest.raises(ServiceUnavailable):
        await s.open()


async def test_stale_temp_files_are_swept_on_open(tmp_path: Path) -> None:
    (tmp_path / ".tmp").mkdir()
    stale, fresh = tmp_path / ".tmp" / "old.part", tmp_path / ".tmp" / "new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    async with LocalStore(tmp_path, LIMITS):
        pass
    assert not stale.exists() and fresh.exists()
