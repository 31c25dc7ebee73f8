"""The ledger's WAL checkpoints run on a connection of their own, never inside a write
transaction (agent/storage/checkpoint.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.storage.checkpoint import TRANSACTION_WEIGHT, Checkpointer
from agent.storage.ledger import Ledger
from tests.agent._ledger_helpers import chain, head_of, identity

ME = identity(1)
A = identity(2)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    db = await Ledger.open(tmp_path / "ledger.sqlite3", identity=ME,
                           is_trusted_origin=lambda _key: True)
    yield db
    await db.close()


async def test_checkpoint_the_writer_never_checkpoints_by_itself(ledger: Ledger) -> None:
    assert ledger._db is not None
    rows = await ledger._db.execute_fetchall("PRAGMA wal_autocheckpoint")
    assert list(rows) == [(0,)]


async def test_checkpoint_runs_in_the_background_past_its_threshold(
        ledger: Ledger, tmp_path: Path) -> None:
    ledger._checkpointer._every = 60
    entries = chain(A, 200)
    for at in range(0, 200, 25):  # 8 transactions of 25 entries: 33 units each
        await ledger.ingest(entries[at:at + 25])
    async with ledger._checkpointer.exclusive():
        done = ledger._checkpointer.checkpoints
    assert 2 <= done <= 4
    # Everything written is there, through the reader and a fresh connection.
    assert ledger.counts().entries == 200
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (200,)
    conn.close()


async def test_checkpoint_below_its_threshold_none_runs(ledger: Ledger) -> None:
    await ledger.ingest(chain(A, 10))
    await asyncio.sleep(0.05)
    assert ledger._checkpointer.checkpoints == 0


async def test_checkpoint_scrub_still_truncates_the_wal_while_checkpoints_run(
        ledger: Ledger, tmp_path: Path) -> None:
    ledger._checkpointer._every = 1 + TRANSACTION_WEIGHT
    entries = chain(A, 20)
    await ledger.ingest(entries)
    scrub = asyncio.create_task(ledger.scrub())
    await ledger.ingest(chain(A, 20, start=head_of(entries)))
    assert await scrub
    wal = tmp_path / "ledger.sqlite3-wal"
    assert ledger.counts().entries == 40
    await ledger.close()
    assert not wal.exists() or wal.stat().st_size == 0


async def test_checkpointer_closes_after_a_running_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    async with await Ledger.open(path, identity=ME, is_trusted_origin=lambda _key: True) as db:
        await db.ingest(chain(A, 5))
    checkpointer = Checkpointer(path, every=1)
    await checkpointer.open()
    checkpointer.wrote(1)
    await checkpointer.close()
    assert checkpointer.checkpoints == 1
    await checkpointer.close()  # idempotent
    checkpointer.wrote(100)  # after close: nothing starts
    assert checkpointer.checkpoints == 1
