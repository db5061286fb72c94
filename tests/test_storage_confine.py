"""The confinement check of opened files, and the metadata cache of the local store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dora.config import Limits
from dora.errors import NotFound
from dora.storage.confine import O_PATH, RealDirs, fd_within, path_within
from dora.storage.local import LocalStore
from dora.storage.metacache import MetaCache, identity


def _opened(path: Path) -> int:
    return os.open(path, O_PATH | os.O_CLOEXEC)


def test_an_opened_file_is_within_its_real_directory(tmp_path: Path) -> None:
    inside = tmp_path / "root" / "a" / "b.txt"
    inside.parent.mkdir(parents=True)
    inside.write_text("x")
    outside = tmp_path / "secret.txt"
    outside.write_text("y")
    link = tmp_path / "root" / "a" / "link.txt"
    link.symlink_to(outside)
    real_root = os.path.realpath(tmp_path / "root")
    for path, expected in ((inside, True), (link, False), (outside, False)):
        fd = _opened(path)
        try:
            assert fd_within(fd, path, real_root) is expected
        finally:
            os.close(fd)
        assert path_within(path, real_root) is expected


def test_a_sibling_with_the_same_prefix_is_not_within(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    sibling = tmp_path / "root-2" / "f"
    sibling.parent.mkdir()
    sibling.write_text("z")
    fd = _opened(sibling)
    try:
        assert not fd_within(fd, sibling, os.path.realpath(tmp_path / "root"))
    finally:
        os.close(fd)


def test_a_file_deleted_since_it_was_opened_is_judged_by_its_path(tmp_path: Path) -> None:
    gone = tmp_path / "root" / "gone.txt"
    gone.parent.mkdir()
    gone.write_text("x")
    fd = _opened(gone)
    try:
        gone.unlink()  # the kernel now names it "... (deleted)"
        assert fd_within(fd, gone, os.path.realpath(tmp_path / "root"))
    finally:
        os.close(fd)


def test_real_dirs_resolve_links_and_stay_bounded(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "alias").symlink_to(target)
    dirs = RealDirs(capacity=2)
    assert dirs(tmp_path / "alias") == str(target.resolve())
    for index in range(5):
        assert dirs(tmp_path / f"d{index}") == str((tmp_path / f"d{index}").resolve())
    assert len(dirs._known) <= 2


def test_meta_cache_answers_only_for_the_same_files(tmp_path: Path) -> None:
    cache: MetaCache[str] = MetaCache(capacity=2)
    first = identity(os.stat(tmp_path), os.stat(tmp_path))
    cache.put(("b", "k"), first, "v1")
    assert cache.get(("b", "k"), first) == "v1"
    (tmp_path / "new").write_text("changes the directory's mtime")
    changed = identity(os.stat(tmp_path), os.stat(tmp_path))
    assert changed != first
    assert cache.get(("b", "k"), changed) is None
    assert cache.get(("b", "k"), first) is None  # a mismatch drops the entry
    for index in range(3):
        cache.put(("b", str(index)), first, str(index))
    assert len(cache) == 2 and cache.get(("b", "0"), first) is None
    cache.forget(("b", "2"))
    assert cache.get(("b", "2"), first) is None
    with pytest.raises(ValueError):
        MetaCache(capacity=-1)


async def test_the_store_never_answers_stale_metadata(tmp_path: Path) -> None:
    """Two stores on one directory (two gateway processes): each sees the
    other's writes at once, cached or not."""
    async with (
        LocalStore(tmp_path / "data", Limits()) as one,
        LocalStore(tmp_path / "data", Limits()) as two,
    ):
        await one.create_bucket("b")
        await one.put("b", "k", b"first version")
        seen = await two.stat("b", "k")
        assert (await two.stat("b", "k")).hash == seen.hash  # now cached in two
        newer = await one.put("b", "k", b"second, longer version")
        assert newer.hash != seen.hash
        assert (await two.stat("b", "k")).hash == newer.hash
        meta, data = await two.get("b", "k")
        assert (meta.hash, data) == (newer.hash, b"second, longer version")
        await one.delete("b", "k")
        with pytest.raises(NotFound, match="no such key"):
            await two.stat("b", "k")
