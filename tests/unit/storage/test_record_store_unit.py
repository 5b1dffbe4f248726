"""prefect_aimlapi_video.storage.record_store, local directory: every write a compare-and-swap, atomic
between processes (the S3 store is tested against moto's server in tests/integration)."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.storage.record_store import LocalRecordStore, S3RecordStore, open_store


async def test_create_only_if_absent_and_replace_only_if_unchanged(tmp_path):
    store = LocalRecordStore(tmp_path / "records")
    first = await store.create("k", b'{"v": 1}')
    assert first and await store.create("k", b'{"v": 2}') is None
    assert await store.read("k") == (b'{"v": 1}', first)
    second = await store.replace("k", b'{"v": 3}', first)
    assert second and second != first
    assert await store.replace("k", b'{"v": 4}', first) is None  # stale version: someone wrote since
    assert (await store.read("k"))[0] == b'{"v": 3}'
    assert await store.replace("missing", b"{}", first) is None
    assert await store.read("missing") is None
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == [".lock", "k.json"]  # no temp files


def _race(directory: str, version: str, start, index: int, results) -> None:
    start.wait()
    results.put(asyncio.run(LocalRecordStore(directory).replace("k", f'{{"writer": {index}}}'.encode(), version)))


def test_many_processes_replacing_one_version_only_one_wins(tmp_path):
    store = LocalRecordStore(tmp_path)
    for _ in range(5):
        version = asyncio.run(store.create("k", b"{}")) or asyncio.run(store.read("k"))[1]
        context = multiprocessing.get_context("fork")
        start, results = context.Event(), context.Queue()
        workers = [context.Process(target=_race, args=(str(tmp_path), version, start, i, results)) for i in range(8)]
        for worker in workers:
            worker.start()
        start.set()
        for worker in workers:
            worker.join(30)
        outcomes = [results.get(timeout=5) for _ in workers]
        assert sum(o is not None for o in outcomes) == 1, outcomes


async def test_open_store_picks_the_backend_and_refuses_other_schemes(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMLAPI_SUBMISSIONS_DIR", str(tmp_path / "from-env"))
    assert (await open_store()).location == str(tmp_path / "from-env")
    assert isinstance(await open_store(str(tmp_path / "given")), LocalRecordStore)
    assert not (await open_store(str(tmp_path))).shared
    with pytest.raises(InvalidInputError, match="s3://bucket/prefix"):
        await open_store("gs://bucket/records")
    with pytest.raises(InvalidInputError):
        await open_store("s3:///no-bucket")
    assert S3RecordStore("b", "p/q/", client=None).location == "s3://b/p/q"


async def test_an_unwritable_directory_is_refused_before_anything_is_spent(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(InvalidInputError, match="cannot keep records"):
        await LocalRecordStore(Path(blocker) / "records").check()


class _IgnoresIfNoneMatch(LocalRecordStore):
    """A store that writes a create whatever is there (as some S3-compatible stores do)."""

    async def create(self, key, data):
        found = await self.read(key)
        return await super().create(key, data) if found is None else await super().replace(key, data, found[1])


class _IgnoresIfMatch(LocalRecordStore):
    """A store that honours create-if-absent but replaces whatever the version."""

    async def replace(self, key, data, version):
        found = await self.read(key)
        return None if found is None else await super().replace(key, data, found[1])


@pytest.mark.parametrize("store_class, what", [(_IgnoresIfNoneMatch, "If-None-Match"), (_IgnoresIfMatch, "If-Match")])
async def test_a_store_that_only_pretends_to_compare_and_swap_is_refused_by_name(tmp_path, store_class, what):
    store = store_class(tmp_path / "records")
    with pytest.raises(InvalidInputError) as refused:
        await store.check()
    assert "does not compare and swap" in str(refused.value) and what in str(refused.value)
    assert str(store.directory) in str(refused.value)


async def test_an_honest_store_proves_itself_once_per_process(tmp_path, monkeypatch):
    from prefect_aimlapi_video.storage import record_store

    monkeypatch.setattr(record_store, "_PROVEN", set())
    store = LocalRecordStore(tmp_path / "records")
    await store.check()
    assert (await store.read(record_store.CAS_SENTINEL)) is not None
    writes = []
    monkeypatch.setattr(store, "replace", lambda *args: writes.append(args))
    await LocalRecordStore(tmp_path / "records").check()  # proven: nothing written again
    assert writes == []


async def test_a_replace_survives_a_crash_of_the_host(tmp_path, monkeypatch):
    """After the rename, the directory itself is synced: the new name is on disk, not only in cache."""
    import os

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    store = LocalRecordStore(tmp_path / "records")
    version = await store.create("k", b"{}")
    synced.clear()
    await store.replace("k", b'{"v": 2}', version)
    assert synced == [False, True]  # the staged file, then the directory
