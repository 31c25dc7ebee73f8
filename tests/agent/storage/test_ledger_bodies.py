"""Ledger, protocol v2: headers and bodies apart, bodies dropped, header-only entries,
and ledgers of protocol v1 entries refused (docs/protocol.md §3)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage.ledger import BodyState, Ledger
from agent.storage.schema import MIGRATIONS, migrate
from protocol.entries import verify_entry
from tests.agent._ledger_helpers import (
    Trust,
    chain,
    draft,
    identity,
    ip,
    observation,
    open_ledger,
    sighting,
)

ME = identity(1)
ALICE = identity(2)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def stored(path: Path, sql: str, args: tuple = ()) -> list:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_ledger_drop_bodies_keeps_the_chain_and_deletes_derived_rows(path: Path) -> None:
    entries = chain(ALICE, 4)
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        await ledger.ingest(entries)
        own = await ledger.append_own([draft(observation(ip(9))),
                                       draft(sighting(entries[1]))])
        assert (await ledger.list_observations()).items
        dropped = await ledger.drop_bodies([entries[1].hash, own[1].hash], BodyState.ERASED)
        assert set(dropped.entries) == {entries[1].hash, own[1].hash}
        # The own sighting had an expiry (default policy): its expiry row goes too.
        assert dropped.rows == {"observations": 1, "sightings": 1, "expiries": 1}
        expired = await ledger.drop_bodies([entries[2].hash, entries[2].hash, b"\0" * 32],
                                           BodyState.EXPIRED)
        assert expired.entries == (entries[2].hash,)
        again = await ledger.drop_bodies([entries[1].hash], BodyState.EXPIRED)
        assert again.entries == () and again.rows == {}
        assert await ledger.get_observation(entries[1].id) is None
        kept = await ledger.get_entry(entries[1].id)
        assert kept is not None and kept.body is None and kept.header == entries[1].header
        # Catch-up serves the dropped ones header-only, the others whole.
        sent = [r async for chunk in ledger.read_range(ALICE.public_key, 1, 4) for r in chunk]
        assert sent == [entries[0].raw, entries[1].without_body().raw,
                        entries[2].without_body().raw, entries[3].raw]
        report = await ledger.verify()
        assert report.ok, report.problems
        assert report.entries == 6
        assert report.bodies == {"present": 3, "expired": 1, "erased": 2, "absent": 0}
        with pytest.raises(ValueError):
            await ledger.drop_bodies([entries[0].hash], BodyState.PRESENT)
    # The bytes are gone from the table, not just hidden.
    rows = stored(path, "SELECT body, body_state, readable FROM entries WHERE hash = ?",
                  (entries[1].hash,))
    assert rows == [(None, "erased", 0)]


async def test_ledger_stores_and_relays_header_only_entries(path: Path) -> None:
    entries = chain(ALICE, 3)
    bare = [entries[0], entries[1].without_body(), entries[2]]
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        result = await ledger.ingest(bare)
        assert result.stored == 3
        assert ledger.head(ALICE.public_key) == (3, entries[2].hash)
        # The same entry with its body later is a duplicate (same id), not a fork.
        again = await ledger.ingest([entries[1]])
        assert again.stored == 0 and not again.fork_proofs
        sent = [r async for chunk in ledger.read_range(ALICE.public_key, 1, 3) for r in chunk]
        assert [verify_entry(r).body is None for r in sent] == [False, True, False]
        page = await ledger.list_observations()
        assert {o["id"] for o in page.items} == {entries[0].id, entries[2].id}
        report = await ledger.verify()
        assert report.ok and report.bodies["absent"] == 1 and report.bodies["present"] == 2


async def test_ledger_verify_reports_a_body_swapped_behind_its_back(path: Path) -> None:
    entries = chain(ALICE, 2)
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        await ledger.ingest(entries)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE entries SET body = ? WHERE hash = ?", (b"tampered", entries[1].hash))
    conn.commit()
    conn.close()
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        report = await ledger.verify()
    assert not report.ok and report.first is not None and report.first.seq == 2
    assert "body" in report.first.what


async def test_ledger_of_protocol_v1_entries_is_refused_with_one_line(path: Path) -> None:
    # A ledger as this build's predecessor left it: schema 2, v1 entries in ``raw``.
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, now_ms=0, software="old", migrations=MIGRATIONS[:2])
    conn.execute("INSERT INTO origins (origin_id, key, head_seq) VALUES (1, ?, 1)",
                 (ALICE.public_key.raw,))
    conn.execute("INSERT INTO entries (entry_no, origin_id, seq, hash, readable, raw) "
                 "VALUES (1, 1, 1, ?, 0, ?)", (b"\1" * 32, b"\x99v1 entry bytes"))
    conn.close()
    with pytest.raises(StorageError) as info:
        await Ledger.open(path, identity=ME, is_trusted_origin=Trust(ALICE.public_key))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "protocol v1" in message
    assert "move the ledger aside" in message
    # Nothing changed: still schema 2.
    assert stored(path, "SELECT max(version) FROM schema_version") == [(2,)]
