"""submission.log_pacing: usage-log reads booked in the record store, so that processes sharing it keep
one pace between them (the provider's limit is the key's, and a work pool runs a process per flow run)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import pytest

from prefect_aimlapi_video.storage.record_store import LocalRecordStore
from prefect_aimlapi_video.submission import log_pacing
from prefect_aimlapi_video.submission.log_pacing import StorePace

SPACING = 0.2

BOOKER = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from prefect_aimlapi_video.storage.record_store import LocalRecordStore
    from prefect_aimlapi_video.submission.log_pacing import StorePace

    class Recording(LocalRecordStore):
        \"\"\"Keeps the slot each booking that took won (its `next` less one spacing).\"\"\"
        won = []

        async def create(self, key, data):
            return self._won(await super().create(key, data), data)

        async def replace(self, key, data, version):
            return self._won(await super().replace(key, data, version), data)

        def _won(self, version, data):
            if version is not None:
                self.won.append(json.loads(data)["next"] - float(sys.argv[3]))
            return version

    async def main(directory, reads, spacing, go):
        store = Recording(directory)
        pace = StorePace(store, "account")
        print("ready", flush=True)
        while not os.path.exists(go):  # every process books from the same moment
            await asyncio.sleep(0.005)
        sent = []
        for _ in range(reads):
            wait = await pace.book(spacing)
            await asyncio.sleep(max(0.0, wait))
            sent.append(time.time())
        print(json.dumps({"slots": store.won, "sent": sent}))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
""")


def test_processes_sharing_a_store_read_at_one_pace_between_them(tmp_path):
    """Four processes, five reads each, at once: the slots they book in the store are one spacing apart,
    whichever process booked them (each process's own pace would let four go out together), and no read
    goes out before its slot. The slots are what the bookings wrote, not clock readings: a process the
    machine wakes late sends late, which this must not mistake for a booking one spacing short."""
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", BOOKER, str(tmp_path / "records"), "5", str(SPACING),
                                   str(go)], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    assert [p.stdout.readline().strip() for p in processes] == ["ready"] * 4
    go.touch()
    runs = [json.loads(p.communicate(timeout=60)[0]) for p in processes]
    assert [len(run["slots"]) for run in runs] == [5] * 4  # every read booked in the store, none alone
    slots = sorted(slot for run in runs for slot in run["slots"])
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert min(gaps) >= SPACING - 1e-6, gaps
    for run in runs:  # asyncio.sleep may wake a little early, never a spacing early
        assert all(sent >= slot - 0.02 for slot, sent in zip(run["slots"], run["sent"])), run


async def test_readers_in_one_process_share_the_booking_too(tmp_path):
    store = LocalRecordStore(tmp_path)
    first, second = StorePace(store, "account"), StorePace(store, "account")
    other_account = StorePace(store, "another")
    waits = [await first.book(10.0), await second.book(10.0), await other_account.book(10.0)]
    assert waits[0] <= 0 and 9.5 <= waits[1] <= 10.0 and waits[2] <= 0


class BrokenStore(LocalRecordStore):
    async def read(self, key):
        raise OSError("the store is down")


async def test_a_store_that_cannot_book_falls_back_to_this_processes_own_spacing(tmp_path):
    pace = StorePace(BrokenStore(tmp_path), "account")
    assert await pace.book(10.0) <= 0
    assert 9.5 <= await pace.book(10.0) <= 10.0  # still spaced, within this process


async def test_a_booking_far_ahead_is_waited_for_no_longer_than_the_cap(tmp_path, monkeypatch):
    """A host whose clock runs an hour fast booked the next read an hour from now (by our clock)."""
    monkeypatch.setattr(log_pacing, "MAX_AHEAD_SECONDS", 5.0)
    store = LocalRecordStore(tmp_path)
    pace = StorePace(store, "account")
    await store.create(pace.key, json.dumps({"next": time.time() + 3600}).encode())
    assert 4.5 <= await pace.book(1.0) <= 5.0


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"next": "soon"}', b'{"next": true}'])
async def test_an_unreadable_booking_is_booked_over(tmp_path, content):
    store = LocalRecordStore(tmp_path)
    pace = StorePace(store, "account")
    await store.create(pace.key, content)
    assert await pace.book(10.0) <= 0
    assert json.loads((await store.read(pace.key))[0])["next"] == pytest.approx(time.time() + 10.0, abs=1.0)


async def test_concurrent_bookings_in_one_loop_never_share_a_slot(tmp_path):
    store = LocalRecordStore(tmp_path)
    paces = [StorePace(store, "account") for _ in range(8)]
    started = time.time()
    waits = await asyncio.gather(*(pace.book(1.0) for pace in paces))
    slots = sorted(started + w for w in waits)
    assert all(b - a >= 0.9 for a, b in zip(slots, slots[1:])), waits
