"""prefect_aimlapi_video.flows.record_store, local directory: every write a compare-and-swap, atomic
between processes (the S3 store is tested against moto's server in tests/integration)."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import pytest

from prefect_aimlapi_video.flows.errors import InvalidInputError
from prefect_aimlapi_video.flows.record_store import LocalRecordStore, S3RecordStore, open_store


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
