"""Ledger: replication reads (version vector, digest, ranges) and export/import."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage.ledger import Ledger
from protocol.entries import TLP, detect_fork, sign_entry
from protocol.payloads import encode_payload
from tests.agent._ledger_helpers import (
    Trust,
    chain,
    draft,
    head_of,
    identity,
    ip,
    observation,
    open_ledger,
)

ME = identity(1)
ALICE = identity(2)
BOB = identity(3)
CAROL = identity(5)


@pytest.fixture
async def ledger(tmp_path: Path) -> Ledger:
    ledger = await open_ledger(tmp_path / "ledger.sqlite3", ME,
                               Trust(ALICE.public_key, BOB.public_key))
    yield ledger  # type: ignore[misc]
    await ledger.close()


async def test_version_vector_lists_each_origin_head(ledger: Ledger) -> None:
    assert ledger.version_vector() == {}
    alice = chain(ALICE, 3)
    own = await ledger.append_own([draft(), draft()])
    await ledger.ingest(alice)
    assert ledger.version_vector() == {ME.public_key: head_of(own),
                                       ALICE.public_key: head_of(alice)}


async def test_read_range_yields_bounded_chunks_in_order(ledger: Ledger) -> None:
    entries = chain(ALICE, 25)
    await ledger.ingest(entries)
    key = ALICE.public_key
    chunks = [c async for c in ledger.read_range(key, 3, 20, max_entries=7)]
    assert [len(c) for c in chunks] == [7, 7, 4]
    assert [raw for c in chunks for raw in c] == [e.raw for e in entries[2:20]]
    size = len(entries[0].raw)
    by_bytes = [c async for c in ledger.read_range(key, 1, 25, max_bytes=size * 3 + 1)]
    assert all(sum(map(len, c)) <= size * 3 + 1 for c in by_bytes)
    assert [raw for c in by_bytes for raw in c] == [e.raw for e in entries]
    # Beyond the head, reversed, or an unknown origin: nothing.
    assert [c async for c in ledger.read_range(key, 24, 1000)] == [[entries[23].raw,
                                                                   entries[24].raw]]
    assert [c async for c in ledger.read_range(key, 30, 40)] == []
    assert [c async for c in ledger.read_range(key, 5, 4)] == []
    assert [c async for c in ledger.read_range(BOB.public_key, 1, 5)] == []
    # A single entry larger than max_bytes still comes, alone.
    assert [len(c) async for c in ledger.read_range(key, 1, 2, max_bytes=1)] == [1, 1]


async def make_source(path: Path) -> tuple[list, list]:
    """A ledger with own entries, two origins, an unreadable entry and a fork proof."""
    alice = chain(ALICE, 5)
    bob = chain(BOB, 3, tlp=TLP.AMBER, recipients=[CAROL.public_key])
    async with await open_ledger(path, ME, Trust(ALICE.public_key, BOB.public_key)) as source:
        own = await source.append_own([draft(observation(ip(i))) for i in range(4)])
        await source.ingest(alice + bob)
        twin = sign_entry(BOB, seq=2, prev=bob[0].hash, now_ms=7, tlp=TLP.GREEN, audience=None,
                          body=encode_payload(observation(ip(99))))
        proof = detect_fork(bob[1], twin)
        assert proof is not None
        assert await source.ingest_fork_proof(proof)
        assert await source.export_entries(path.with_suffix(".export")) == 12
    return own, alice


async def test_export_then_import_round_trips(tmp_path: Path) -> None:
    own, alice = await make_source(tmp_path / "a.sqlite3")
    export = tmp_path / "a.export"
    trust = Trust(ALICE.public_key, BOB.public_key)
    async with await open_ledger(tmp_path / "a.sqlite3", ME, trust) as source:
        vector = source.version_vector()
        listed = (await source.list_observations(limit=50)).items
    # Restoring onto a fresh ledger of the same node.
    async with await open_ledger(tmp_path / "restored.sqlite3", ME, trust) as restored:
        result = await restored.import_entries(export)
        assert result.complete and result.invalid == 0
        assert (result.records, result.stored, result.forks) == (13, 12, 1)
        assert restored.version_vector() == vector
        assert restored.is_forked(BOB.public_key)
        assert (await restored.list_observations(limit=50)).items == listed
        assert (await restored.verify()).ok
        again = await restored.import_entries(export)
        # Bob is quarantined now, so his entries are refused rather than duplicates.
        assert (again.stored, again.duplicates, again.refused, again.forks) == (0, 9, 3, 0)
    # Seeding another node that trusts the same authors.
    seeded_trust = Trust(ME.public_key, ALICE.public_key)
    async with await open_ledger(tmp_path / "c.sqlite3", CAROL, seeded_trust) as seeded:
        result = await seeded.import_entries(export)
        assert (result.stored, result.refused) == (9, 3)  # Bob is not trusted there
        assert seeded.head(ALICE.public_key) == head_of(alice)
        assert seeded.head(ME.public_key) == head_of(own)


async def test_import_refuses_entries_that_do_not_verify(tmp_path: Path) -> None:
    own, alice = await make_source(tmp_path / "a.sqlite3")
    export = tmp_path / "a.export"
    data = bytearray(export.read_bytes())
    where = data.find(alice[1].raw)
    data[where + len(alice[1].raw) - 70] ^= 0x04
    export.write_bytes(bytes(data))
    trust = Trust(ALICE.public_key, BOB.public_key)
    async with await open_ledger(tmp_path / "b.sqlite3", ME, trust) as ledger:
        result = await ledger.import_entries(export)
        assert result.invalid == 1 and result.first_invalid is not None
        assert "BadSignatureError" in result.first_invalid
        assert result.complete
        # Alice's chain stops before the bad entry; the rest waits for a peer to fill it.
        assert ledger.head(ALICE.public_key) == head_of(alice[:1])
        assert ledger.head(ME.public_key) == head_of(own)
        assert await ledger.get_entry(alice[1].id) is None
        assert (await ledger.verify()).ok


async def test_import_reports_a_truncated_export(tmp_path: Path) -> None:
    own, _alice = await make_source(tmp_path / "a.sqlite3")
    export = tmp_path / "a.export"
    data = export.read_bytes()
    export.write_bytes(data[:len(data) // 2])
    async with await open_ledger(tmp_path / "b.sqlite3", ME,
                                 Trust(ALICE.public_key, BOB.public_key)) as ledger:
        result = await ledger.import_entries(export)
        assert not result.complete
        assert ledger.head(ME.public_key) == head_of(own)  # own entries come first


async def test_import_refuses_a_file_that_is_not_an_export(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"hello")
    huge = tmp_path / "huge"
    huge.write_bytes(b"ENTRAIDE-LEDGER\x02" + struct.pack(">cI", b"E", 1 << 30))
    old = tmp_path / "v1"
    old.write_bytes(b"ENTRAIDE-LEDGER\x01" + struct.pack(">cI", b"E", 10))
    async with await open_ledger(tmp_path / "b.sqlite3", ME) as ledger:
        with pytest.raises(StorageError, match="holds protocol v1 entries"):
            await ledger.import_entries(old)
        with pytest.raises(StorageError, match="not an Entraide ledger export"):
            await ledger.import_entries(bogus)
        with pytest.raises(StorageError, match="damaged export"):
            await ledger.import_entries(huge)
        with pytest.raises(StorageError, match="cannot read"):
            await ledger.import_entries(tmp_path / "missing")


async def test_export_leaves_no_partial_file_on_error(tmp_path: Path) -> None:
    async with await open_ledger(tmp_path / "a.sqlite3", ME) as ledger:
        await ledger.append_own([draft()])
        with pytest.raises((StorageError, OSError)):
            await ledger.export_entries(tmp_path / "no-such-dir" / "x.export")
        target = tmp_path / "x.export"
        assert await ledger.export_entries(target) == 1
        assert not (tmp_path / "x.export.tmp").exists()
