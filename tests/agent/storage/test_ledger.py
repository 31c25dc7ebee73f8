"""Ledger: opening, schema versions and migrations, and own appends."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage import schema
from agent.storage.cursors import format_ms
from agent.storage.ledger import MAX_APPEND_BATCH, OwnDraft
from agent.storage.observation_rows import SEALED_ONLY
from protocol.entries import TLP, check_successor, verify_entry
from protocol.envelope import envelope_audience
from protocol.errors import EncodingError, OversizeError, PayloadError
from protocol.payloads import decode_payload, encode_payload
from tests.agent._ledger_helpers import draft, identity, ip, observation, open_ledger

ME = identity(1)
PEER = identity(2)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


async def test_open_creates_wal_schema_with_version_row(db_path: Path) -> None:
    ledger = await open_ledger(db_path, ME)
    await ledger.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = conn.execute("SELECT version, software FROM schema_version").fetchall()
    assert [v for v, _ in versions] == [m.version for m in schema.MIGRATIONS]
    assert versions[0][1].startswith("entraide ")
    conn.close()


async def test_open_refuses_a_ledger_written_by_a_newer_version(db_path: Path) -> None:
    await (await open_ledger(db_path, ME)).close()
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_version VALUES (?, 0, 'entraide 9.9')",
                 (schema.SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="newer Entraide"):
        await open_ledger(db_path, ME)
    # The refusal leaves the lock free and the file untouched.
    conn = sqlite3.connect(db_path)
    newest = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    assert newest == schema.SCHEMA_VERSION + 1
    conn.close()


async def test_open_applies_forward_migrations_in_order(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.storage.schema")
    ledger = await open_ledger(db_path, ME)
    assert "ledger schema" not in caplog.text  # a new ledger's steps are not logged
    await ledger.append_own([draft()])
    await ledger.close()

    def add_note_column(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE origins ADD COLUMN note TEXT")

    newest = schema.SCHEMA_VERSION + 1
    steps = (*schema.MIGRATIONS, schema.Migration(newest, "origin notes", add_note_column))
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    ledger = await open_ledger(db_path, ME)
    assert ledger.counts().entries == 1
    await ledger.close()
    # An upgrade says what it does before it starts, and how long it took.
    assert f"ledger schema {newest - 1} -> {newest}: origin notes" in caplog.text
    assert f"ledger schema {newest} applied in " in caplog.text
    conn = sqlite3.connect(db_path)
    applied = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert applied == [m.version for m in steps]
    assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(origins)")]
    conn.close()


async def test_an_empty_version_1_ledger_migrates_to_the_newest_schema(db_path: Path) -> None:
    # Schema 1 and 2 ledgers hold protocol v1 entries: one with entries is refused
    # (tests/agent/storage/test_ledger_bodies.py); an empty one migrates.
    conn = sqlite3.connect(db_path, isolation_level=None)
    schema.migrate(conn, now_ms=0, software="old", migrations=schema.MIGRATIONS[:1])
    conn.close()
    ledger = await open_ledger(db_path, ME)
    try:
        entries = await ledger.append_own([draft(observation(ip(i))) for i in range(1, 4)])
        entries += await ledger.append_own([draft(observation(ip(4)), tlp=TLP.AMBER,
                                                  recipients=[ME.public_key])])
        found = await ledger.indicator("ipv4-addr", ip(3))
        assert [(o["id"], o["seq"], o["value"]) for o in found["observations"]] == [
            (entries[2].id, entries[2].seq, ip(3))]
        sealed = await ledger.indicator("ipv4-addr", ip(4))
        assert [(o["id"], o["tlp"], o["value"]) for o in sealed["observations"]] == [
            (entries[3].id, "AMBER", ip(4))]
    finally:
        await ledger.close()
    conn = sqlite3.connect(db_path)
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    # Schema 8: a plaintext observation's row keeps no JSON (its body is the answer);
    # a sealed one's keeps the JSON this node opened.
    docs = [r[0] for r in conn.execute("SELECT doc FROM observations ORDER BY obs_no")]
    assert docs[:3] == [None, None, None]
    assert docs[3] is not None and ip(4) in docs[3]
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE observations SET doc = '{}' WHERE obs_no = 1")
    conn.close()


async def test_observation_rows_keep_only_the_times_their_entry_does_not_give(
        db_path: Path) -> None:
    ledger = await open_ledger(db_path, ME)
    try:
        await ledger.append_own([
            draft(observation(ip(1))),
            draft(observation(ip(2), first_seen="2026-01-02T00:00:00Z")),
            draft(observation(ip(3), first_seen="2026-01-02T00:00:00Z",
                              last_seen="2026-01-02T00:00:00Z")),
            draft(observation(ip(4), first_seen="2026-01-02T00:00:00Z",
                              last_seen="2026-01-09T00:00:00Z"))])
        await ledger.append_own([draft(observation(ip(5)), tlp=TLP.AMBER,
                                       recipients=[ME.public_key])])
        found = {i: await ledger.indicator("ipv4-addr", ip(i)) for i in range(1, 6)}
        sealed = await ledger.list_observations(tlp=TLP.AMBER)
        assert [o["value"] for o in sealed.items] == [ip(5)]
        assert (await ledger.list_observations(tlp=TLP.CLEAR)).items == []
        assert len((await ledger.list_observations(tlp=TLP.GREEN)).items) == 4
    finally:
        await ledger.close()
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT value, ts, first_seen, last_seen FROM observations "
                        "ORDER BY obs_no").fetchall()
    jan2, jan9 = 1767312000000, 1767916800000
    assert [r[2:] for r in rows] == [(None, None), (jan2, rows[1][1]), (jan2, None),
                                     (jan2, jan9), (None, None)]
    # The answers still carry every time: the entry's ts where the row stores none.
    times = [(found[i]["first_seen"], found[i]["last_seen"]) for i in range(1, 6)]
    jan2_text, jan9_text = "2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"
    assert times == [(format_ms(rows[0][1]), format_ms(rows[0][1])),
                     (jan2_text, format_ms(rows[1][1])), (jan2_text, jan2_text),
                     (jan2_text, jan9_text), (format_ms(rows[4][1]), format_ms(rows[4][1]))]
    # The TLP index holds the sealed rows only, and a sealed-TLP filter uses it.
    plan = " ".join(r[3] for r in conn.execute(
        f"EXPLAIN QUERY PLAN SELECT o.obs_no FROM observations o WHERE o.tlp = 'AMBER' "
        f"AND o.{SEALED_ONLY} ORDER BY o.obs_no DESC"))
    assert "observations_by_tlp" in plan
    indexed = conn.execute("SELECT count(*) FROM observations INDEXED BY observations_by_tlp "
                           f"WHERE {SEALED_ONLY}").fetchone()[0]
    assert indexed == 1
    conn.close()


def test_migrate_rolls_back_a_failed_step(db_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        conn.execute("THIS IS NOT SQL")

    conn = sqlite3.connect(db_path, isolation_level=None)
    steps = (*schema.MIGRATIONS, schema.Migration(schema.SCHEMA_VERSION + 1, "broken", broken))
    with pytest.raises(StorageError, match="migrate"):
        schema.migrate(conn, now_ms=0, software="test", migrations=steps)
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None
    conn.close()


async def test_open_refuses_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, not at all" * 200)
    with pytest.raises(StorageError):
        await open_ledger(garbage, ME)
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="not an Entraide ledger"):
        await open_ledger(other, ME)


async def test_open_refuses_another_identity(db_path: Path) -> None:
    await (await open_ledger(db_path, ME)).close()
    with pytest.raises(StorageError, match="another node identity"):
        await open_ledger(db_path, PEER)


async def test_open_refuses_a_ledger_in_use(db_path: Path) -> None:
    first = await open_ledger(db_path, ME)
    try:
        with pytest.raises(StorageError, match="in use"):
            await open_ledger(db_path, ME)
    finally:
        await first.close()
    await (await open_ledger(db_path, ME)).close()


async def test_closed_ledger_refuses_work(db_path: Path) -> None:
    ledger = await open_ledger(db_path, ME)
    await ledger.close()
    await ledger.close()
    with pytest.raises(StorageError, match="closed"):
        await ledger.append_own([draft()])


async def test_append_own_chains_entries_in_order(db_path: Path) -> None:
    async with await open_ledger(db_path, ME) as ledger:
        first = await ledger.append_own([draft(observation(ip(i))) for i in range(3)])
        second = await ledger.append_own([draft(observation(ip(9)))])
    entries = first + second
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert all(e.origin == ME.public_key for e in entries)
    check_successor(None, entries[0])
    for before, after in itertools.pairwise(entries):
        check_successor((before.seq, before.hash), after)
    assert [decode_payload(e.body).value for e in first] == [ip(0), ip(1), ip(2)]  # type: ignore[union-attr]
    assert entries[0].ts == 1_800_000_000_000


async def test_append_own_is_there_after_reopening(db_path: Path) -> None:
    async with await open_ledger(db_path, ME) as ledger:
        entries = await ledger.append_own([draft(observation(ip(i))) for i in range(5)])
    async with await open_ledger(db_path, ME) as ledger:
        assert ledger.version_vector() == {ME.public_key: (5, entries[-1].hash)}
        assert await ledger.get_entry(entries[2].id) == entries[2]
        more = await ledger.append_own([draft()])
    assert more[0].seq == 6 and more[0].prev == entries[-1].hash


async def test_append_own_accepts_encoded_payload_bytes(db_path: Path) -> None:
    data = encode_payload(observation("example.org", "domain-name"))
    async with await open_ledger(db_path, ME) as ledger:
        [entry] = await ledger.append_own([OwnDraft(data, TLP.CLEAR)])
    assert entry.body == data and entry.tlp is TLP.CLEAR


async def test_append_own_with_an_invalid_payload_appends_nothing(db_path: Path) -> None:
    async with await open_ledger(db_path, ME) as ledger:
        with pytest.raises(PayloadError):
            await ledger.append_own([draft(), OwnDraft(b"\x81\xa4kind\xa3bad", TLP.GREEN)])
        assert ledger.counts().entries == 0
        [entry] = await ledger.append_own([draft()])
    assert entry.seq == 1


async def test_append_own_checks_recipients_against_the_tlp(db_path: Path) -> None:
    async with await open_ledger(db_path, ME) as ledger:
        with pytest.raises(EncodingError, match="recipients"):
            await ledger.append_own([draft(tlp=TLP.GREEN, recipients=[PEER.public_key])])
        with pytest.raises(EncodingError, match="recipients"):
            await ledger.append_own([draft(tlp=TLP.RED)])
        with pytest.raises(OversizeError):
            await ledger.append_own([draft()] * (MAX_APPEND_BATCH + 1))
        assert ledger.counts().entries == 0


async def test_append_own_seals_encrypted_tlp_to_recipients_and_self(db_path: Path) -> None:
    payload = observation("evil.example", "domain-name")
    async with await open_ledger(db_path, ME) as ledger:
        [entry] = await ledger.append_own([draft(payload, TLP.AMBER, [PEER.public_key])])
        listed = await ledger.list_observations()
    assert entry.tlp is TLP.AMBER
    assert entry.audience is not None and len(entry.audience) == 2  # blinded ids (§4)
    for reader in (ME, PEER):
        ids, opened = envelope_audience(entry.body, entry.audience, reader)
        assert decode_payload(opened) == payload
        assert ids == tuple(sorted([ME.public_key.key_id, PEER.public_key.key_id]))
    assert [o["id"] for o in listed.items] == [entry.id]
    assert listed.items[0]["tlp"] == "AMBER"


async def test_append_own_uses_injected_randomness(db_path: Path) -> None:
    calls: list[int] = []

    def randbytes(n: int) -> bytes:
        calls.append(n)
        return bytes(n)

    async with await open_ledger(db_path, ME, randbytes=randbytes) as ledger:
        await ledger.append_own([draft(tlp=TLP.RED, recipients=[PEER.public_key])])
    assert calls  # content key, nonce, one ephemeral seed per recipient


async def test_append_own_concurrent_batches_never_share_a_seq(db_path: Path) -> None:
    async with await open_ledger(db_path, ME) as ledger:
        results = await asyncio.gather(*(
            ledger.append_own([draft(observation(ip(10 * b + i))) for i in range(10)])
            for b in range(8)))
        report = await ledger.verify()
    seqs = sorted(e.seq for batch in results for e in batch)
    assert seqs == list(range(1, 81))
    for batch in results:  # each batch is contiguous: one transaction
        assert [e.seq for e in batch] == list(range(batch[0].seq, batch[0].seq + 10))
    assert report.ok, report.problems


async def test_append_own_survives_caller_cancellation(db_path: Path) -> None:
    async with await open_ledger(db_path, ME) as ledger:
        pending = [draft() for _ in range(50)]
        task = asyncio.create_task(ledger.append_own(pending))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The write ran to its end (or never started): state and file agree.
        [after] = await ledger.append_own([draft()])
        assert after.seq in (1, 51)
        assert (await ledger.verify()).ok


async def test_get_entry_reverifies_and_handles_unknown_ids(db_path: Path) -> None:
    async with await open_ledger(db_path, ME) as ledger:
        [entry] = await ledger.append_own([draft()])
        assert await ledger.get_entry(entry.id) == verify_entry(entry.raw)
        assert await ledger.get_entry("00" * 32) is None
        assert await ledger.get_entry("not hex") is None
        assert await ledger.has_entry(entry.hash)
        assert not await ledger.has_entry(bytes(32))
