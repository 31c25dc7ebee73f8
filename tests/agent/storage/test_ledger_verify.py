"""Ledger: verification of the stored bytes, and tampering behind the node's back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.storage.ledger import VerifyProblem
from protocol.entries import TLP, detect_fork, sign_entry
from protocol.payloads import encode_payload
from tests.agent._ledger_helpers import Trust, chain, draft, identity, ip, observation, open_ledger

ME = identity(1)
ALICE = identity(2)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


async def populate(path: Path, count: int = 6) -> list:
    """Own entries and ``count`` entries of Alice; returns Alice's entries."""
    entries = chain(ALICE, count)
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        await ledger.append_own([draft(observation(ip(i))) for i in range(3)])
        await ledger.ingest(entries)
    return entries


async def verify(path: Path) -> tuple:
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        report = await ledger.verify()
    return report


def edit(path: Path, sql: str, args: tuple) -> None:
    conn = sqlite3.connect(path)
    alice_id = conn.execute("SELECT origin_id FROM origins WHERE key = ?",
                            (ALICE.public_key.raw,)).fetchone()[0]
    conn.execute(sql, (*args, alice_id))
    conn.commit()
    conn.close()


async def test_verify_passes_on_an_untouched_ledger(path: Path) -> None:
    await populate(path)
    report = await verify(path)
    assert report.ok and report.first is None
    assert (report.entries, report.origins) == (9, 2)


async def test_verify_detects_an_entry_blob_edited_with_sqlite(path: Path) -> None:
    entries = await populate(path)
    damaged = bytearray(entries[2].header)
    damaged[-70] ^= 0x01  # inside the signed header (its body length), before the signature
    edit(path, "UPDATE entries SET header = ? WHERE seq = 3 AND origin_id = ?",
         (bytes(damaged),))
    report = await verify(path)
    assert not report.ok
    assert report.first is not None
    assert (report.first.origin, report.first.seq) == (ALICE.public_key, 3)
    assert "do not verify" in report.first.what


async def test_verify_detects_a_validly_signed_substitute(path: Path) -> None:
    entries = await populate(path)
    # Whoever holds Alice's key could re-sign seq 3; the chain still gives it away.
    twin = sign_entry(ALICE, seq=3, prev=entries[1].hash, now_ms=1, tlp=TLP.GREEN,
                      audience=None, body=encode_payload(observation("192.0.2.1")))
    edit(path, "UPDATE entries SET header = ?, body = ?, hash = ? WHERE seq = 3 AND "
         "origin_id = ?", (twin.header, twin.body, twin.hash))
    report = await verify(path)
    assert report.first == VerifyProblem(
        ALICE.public_key, 4, "chain broken: seq 4: prev does not match the hash of seq 3")


async def test_verify_detects_a_swapped_id_column(path: Path) -> None:
    await populate(path)
    edit(path, "UPDATE entries SET hash = ? WHERE seq = 2 AND origin_id = ?", (bytes(32),))
    report = await verify(path)
    assert report.first is not None
    assert (report.first.seq, report.first.what) == (2, "stored id differs from the entry's hash")


async def test_verify_detects_a_deleted_entry(path: Path) -> None:
    await populate(path)
    edit(path, "DELETE FROM entries WHERE seq = 4 AND origin_id = ?", ())
    report = await verify(path)
    assert report.first is not None
    assert report.first.origin == ALICE.public_key
    assert "expected seq 4, got 5" in report.first.what


async def test_verify_detects_a_rewritten_head(path: Path) -> None:
    await populate(path)
    edit(path, "UPDATE origins SET head_seq = 5 WHERE origin_id = ?", ())
    report = await verify(path)
    assert report.first is not None
    assert "recorded head is seq 5" in report.first.what


async def test_verify_detects_a_byte_flipped_in_the_file(path: Path) -> None:
    entries = await populate(path)
    data = bytearray(path.read_bytes())
    body = entries[4].body
    where = data.find(body)
    assert where > 0 and data.find(body, where + 1) == -1
    data[where + len(body) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    report = await verify(path)
    assert report.first is not None
    assert (report.first.origin, report.first.seq) == (ALICE.public_key, 5)
    assert "do not verify" in report.first.what
    # Every other origin is still checked and fine.
    assert len(report.problems) == 1


async def test_verify_rechecks_stored_fork_proofs(path: Path) -> None:
    entries = await populate(path)
    twin = sign_entry(ALICE, seq=2, prev=entries[0].hash, now_ms=3, tlp=TLP.GREEN,
                      audience=None, body=encode_payload(observation(ip(200))))
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        proof = detect_fork(entries[1], twin)
        assert proof is not None
        assert await ledger.ingest_fork_proof(proof)
        report = await ledger.verify()
        assert report.ok and report.fork_proofs == 1
    conn = sqlite3.connect(path)
    (stored,) = conn.execute("SELECT proof FROM forks").fetchone()
    damaged = bytearray(stored)
    damaged[-1] ^= 0x01  # the last byte of the second header's signature
    conn.execute("UPDATE forks SET proof = ?", (bytes(damaged),))
    conn.commit()
    conn.close()
    report = await verify(path)
    assert report.first is not None and "fork proof" in report.first.what


async def test_get_observation_reports_verification_status(path: Path) -> None:
    entries = await populate(path)
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        found = await ledger.get_observation(entries[1].id)
        assert found is not None and found["verified"] is True
    damaged = bytearray(entries[1].header)
    damaged[-70] ^= 0x01
    edit(path, "UPDATE entries SET header = ? WHERE seq = 2 AND origin_id = ?",
         (bytes(damaged),))
    async with await open_ledger(path, ME, Trust(ALICE.public_key)) as ledger:
        found = await ledger.get_observation(entries[1].id)
        assert found is not None and found["verified"] is False
