"""Ledger: ingesting remote entries (order, gaps, duplicates, trust, forks)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.storage.ledger import BufferLimits, Gap, Ledger
from protocol.entries import TLP, decode_fork_proof, detect_fork, sign_entry
from protocol.errors import OversizeError
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
MALLORY = identity(4)


@pytest.fixture
async def ledger(tmp_path: Path) -> Ledger:
    trust = Trust(ALICE.public_key, BOB.public_key)
    ledger = await open_ledger(tmp_path / "ledger.sqlite3", ME, trust)
    yield ledger  # type: ignore[misc]
    await ledger.close()


def forked_twin(entries: list, seq: int) -> object:
    """A different, validly signed entry of the same author at ``seq``."""
    base = entries[seq - 1]
    prev = None if seq == 1 else entries[seq - 2].hash
    return sign_entry(ALICE, seq=seq, prev=prev, now_ms=base.ts + 999, tlp=TLP.GREEN,
                      audience=None, body=encode_payload(observation("192.0.2.99")))


async def test_ingest_stores_entries_in_order(ledger: Ledger) -> None:
    entries = chain(ALICE, 5)
    result = await ledger.ingest(entries)
    assert (result.stored, result.duplicates, result.refused) == (5, 0, 0)
    assert list(result.new_entries) == entries
    assert ledger.head(ALICE.public_key) == head_of(entries)
    assert ledger.counts().entries == 5
    assert (await ledger.verify()).ok


async def test_ingest_is_idempotent_on_duplicates(ledger: Ledger) -> None:
    entries = chain(ALICE, 4)
    await ledger.ingest(entries[:3])
    result = await ledger.ingest(entries)
    assert (result.stored, result.duplicates) == (1, 3)
    again = await ledger.ingest(entries + entries)
    assert (again.stored, again.duplicates, again.refused, again.forks) == (0, 4, 0, 0)
    assert ledger.counts().entries == 4


async def test_ingest_sorts_out_of_order_arrival_within_a_batch(ledger: Ledger) -> None:
    entries = chain(ALICE, 6)
    result = await ledger.ingest([entries[i] for i in (4, 1, 5, 0, 3, 2)])
    assert result.stored == 6 and result.buffered == 0 and not result.gaps
    assert [e.seq for e in result.new_entries] == [1, 2, 3, 4, 5, 6]


async def test_ingest_holds_entries_ahead_of_a_gap_and_reports_it(ledger: Ledger) -> None:
    entries = chain(ALICE, 10)
    first = await ledger.ingest(entries[:3])
    ahead = await ledger.ingest(entries[5:7] + entries[8:])
    assert first.stored == 3
    assert (ahead.stored, ahead.buffered) == (0, 4)
    key = ALICE.public_key
    assert ahead.gaps == (Gap(key, 4, 5), Gap(key, 8, 8))
    assert ledger.counts().held_ahead_of_gaps == 4
    assert ledger.head(key) == head_of(entries[:3])
    # A held entry arriving again is a duplicate, not a second copy.
    assert (await ledger.ingest([entries[6]])).duplicates == 1

    filled = await ledger.ingest(entries[3:5])
    assert filled.stored == 4  # 4, 5, then 6 and 7 released
    assert filled.gaps == (Gap(key, 8, 8),)
    last = await ledger.ingest([entries[7]])
    assert [e.seq for e in last.new_entries] == [8, 9, 10]
    assert not last.gaps
    assert ledger.counts().held_ahead_of_gaps == 0
    assert ledger.head(key) == head_of(entries)
    assert (await ledger.verify()).ok


async def test_ingest_reports_the_gap_before_a_first_entry(ledger: Ledger) -> None:
    entries = chain(BOB, 3)
    result = await ledger.ingest([entries[2]])
    assert result.gaps == (Gap(BOB.public_key, 1, 2),)
    assert ledger.head(BOB.public_key) is None
    assert ledger.version_vector() == {}


async def test_ingest_bounds_the_ahead_buffer(tmp_path: Path) -> None:
    limits = BufferLimits(per_origin_entries=3, total_entries=5)
    trust = Trust(ALICE.public_key, BOB.public_key)
    async with await open_ledger(tmp_path / "l.sqlite3", ME, trust,
                                 buffer_limits=limits) as ledger:
        alice = chain(ALICE, 10)
        result = await ledger.ingest(alice[5:])  # seqs 6..10, only 3 fit
        assert (result.buffered, result.dropped) == (3, 2)
        # A nearer entry evicts the farthest one: it is the one a filled gap releases.
        nearer = await ledger.ingest([alice[2]])  # seq 3
        assert (nearer.buffered, nearer.dropped) == (1, 1)
        bob = await ledger.ingest(chain(BOB, 10)[4:])  # the total cap (5) leaves room for 2
        assert (bob.buffered, bob.dropped) == (2, 4)
        assert ledger.counts().held_ahead_of_gaps == 5
        filled = await ledger.ingest(alice[:2])
        assert [e.seq for e in filled.new_entries] == [1, 2, 3]
        assert filled.gaps[0] == Gap(ALICE.public_key, 4, 5)
        assert ledger.counts().held_ahead_of_gaps == 4


async def test_ingest_refuses_an_untrusted_origin(ledger: Ledger) -> None:
    result = await ledger.ingest(chain(MALLORY, 3) + chain(ALICE, 1))
    assert (result.stored, result.refused) == (1, 3)
    assert {r.origin for r in result.refusals} == {MALLORY.public_key}
    assert "trust" in result.refusals[0].reason
    assert MALLORY.public_key not in ledger.version_vector()


async def test_ingest_refuses_an_origin_once_removed_from_the_trust_list(tmp_path: Path) -> None:
    trust = Trust(ALICE.public_key)
    entries = chain(ALICE, 6)
    async with await open_ledger(tmp_path / "l.sqlite3", ME, trust) as ledger:
        await ledger.ingest(entries[:2] + entries[4:])
        assert ledger.counts().held_ahead_of_gaps == 2
        trust.keys.clear()
        result = await ledger.ingest(entries[2:4])
        assert (result.stored, result.refused) == (0, 2)
        assert ledger.counts().held_ahead_of_gaps == 0  # its held entries are dropped
        assert ledger.head(ALICE.public_key) == head_of(entries[:2])  # what it had stays


async def test_ingest_accepts_this_nodes_own_entries_back(ledger: Ledger) -> None:
    # A node restored from an old backup gets its newer entries back from peers.
    own = await ledger.append_own([])
    assert own == []
    mine = chain(ME, 3)
    result = await ledger.ingest(mine)
    assert result.stored == 3
    [next_entry] = await ledger.append_own([draft()])
    assert next_entry.seq == 4 and next_entry.prev == mine[-1].hash


async def test_ingest_refuses_an_entry_that_breaks_the_chain(ledger: Ledger) -> None:
    entries = chain(ALICE, 2)
    stray = sign_entry(ALICE, seq=3, prev=bytes(32), now_ms=1, tlp=TLP.GREEN, audience=None,
                       body=encode_payload(observation()))
    result = await ledger.ingest([*entries, stray])
    assert (result.stored, result.refused, result.forks) == (2, 1, 0)
    assert "prev" in result.refusals[0].reason


async def test_ingest_refuses_a_consecutive_run_from_its_broken_link_on(ledger: Ledger) -> None:
    # Consecutive seqs from the head with nothing held ahead (catch-up's fast path): a
    # broken link in the middle refuses it and every entry after it, nothing else.
    entries = chain(ALICE, 4)
    stray = sign_entry(ALICE, seq=3, prev=bytes(32), now_ms=1, tlp=TLP.GREEN, audience=None,
                       body=encode_payload(observation()))
    after = sign_entry(ALICE, seq=4, prev=stray.hash, now_ms=2, tlp=TLP.GREEN, audience=None,
                       body=encode_payload(observation()))
    result = await ledger.ingest([*entries[:2], stray, after])
    assert (result.stored, result.refused, result.forks) == (2, 2, 0)
    assert [r.seq for r in result.refusals] == [3, 4]
    assert all(r.reason.startswith("chain:") for r in result.refusals)
    assert ledger.head(ALICE.public_key) == head_of(entries[:2])
    result = await ledger.ingest(entries[2:])
    assert (result.stored, result.refused) == (2, 0)
    assert (await ledger.verify()).ok


async def test_ingest_detects_a_fork_with_a_stored_entry(ledger: Ledger) -> None:
    entries = chain(ALICE, 5)
    await ledger.ingest(entries[:3])
    twin = forked_twin(entries, 2)
    result = await ledger.ingest([twin, *entries[3:]])
    assert result.forks == 1 and result.stored == 0
    assert result.refused == 2  # entries 4 and 5 come after the fork in the batch
    [proof] = result.fork_proofs
    assert proof == detect_fork(entries[1], twin)
    assert ledger.is_forked(ALICE.public_key)
    # The stored proof verifies alone.
    [record] = await ledger.forks()
    alone = decode_fork_proof(record.proof)
    assert (alone.origin, alone.seq) == (ALICE.public_key, 2)
    assert {alone.a.id, alone.b.id} == {entries[1].id, twin.id}
    assert record.cleared_ms is None
    # Quarantined: later entries are refused until an admin clears the fork.
    later = await ledger.ingest(entries[3:])
    assert (later.stored, later.refused) == (0, 2)
    assert "fork" in later.refusals[0].reason
    assert ledger.counts().forked_origins == 1
    assert await ledger.clear_fork(ALICE.public_key)
    assert not await ledger.clear_fork(ALICE.public_key)
    cleared = await ledger.ingest(entries[3:])
    assert cleared.stored == 2
    # The same conflict seen again does not quarantine the origin a second time.
    again = await ledger.ingest([twin])
    assert (again.forks, again.refused) == (0, 1)
    assert not ledger.is_forked(ALICE.public_key)
    [record] = await ledger.forks()
    assert record.cleared_ms is not None
    assert (await ledger.verify()).ok


async def test_ingest_detects_a_fork_inside_one_batch(ledger: Ledger) -> None:
    entries = chain(ALICE, 2)
    twin = forked_twin(entries, 1)
    result = await ledger.ingest([entries[0], twin, entries[1]])
    assert result.forks == 1
    assert ledger.is_forked(ALICE.public_key)
    assert ledger.counts().entries == 1  # the one stored before the conflict stays


async def test_ingest_detects_a_fork_against_a_held_entry(ledger: Ledger) -> None:
    entries = chain(ALICE, 4)
    await ledger.ingest([entries[0], entries[3]])
    twin = forked_twin(entries, 4)
    result = await ledger.ingest([twin])
    assert result.forks == 1 and ledger.is_forked(ALICE.public_key)
    assert ledger.counts().held_ahead_of_gaps == 0


async def test_ingest_fork_proof_from_gossip_quarantines_the_origin(ledger: Ledger,
                                                                   tmp_path: Path) -> None:
    entries = chain(BOB, 2)
    twin = sign_entry(BOB, seq=2, prev=entries[0].hash, now_ms=5, tlp=TLP.GREEN, audience=None,
                      body=encode_payload(observation(ip(77))))
    proof = detect_fork(entries[1], twin)
    assert proof is not None
    assert await ledger.ingest_fork_proof(proof)
    assert not await ledger.ingest_fork_proof(proof)  # known already
    assert ledger.is_forked(BOB.public_key)
    assert (await ledger.ingest(entries)).refused == 2
    mallory = chain(MALLORY, 1)[0]
    mallory_twin = sign_entry(MALLORY, seq=1, prev=None, now_ms=9, tlp=TLP.GREEN,
                              audience=None, body=encode_payload(observation(ip(1))))
    untrusted = detect_fork(mallory, mallory_twin)
    assert untrusted is not None
    assert not await ledger.ingest_fork_proof(untrusted)
    assert (await ledger.verify()).ok


async def test_fork_state_survives_reopening(tmp_path: Path) -> None:
    trust = Trust(ALICE.public_key)
    path = tmp_path / "l.sqlite3"
    entries = chain(ALICE, 3)
    async with await open_ledger(path, ME, trust) as ledger:
        await ledger.ingest(entries[:2])
        await ledger.ingest([forked_twin(entries, 2)])
    async with await open_ledger(path, ME, trust) as ledger:
        assert ledger.is_forked(ALICE.public_key)
        assert (await ledger.ingest(entries[2:])).refused == 1


async def test_ingest_stores_but_never_indexes_entries_it_cannot_read(ledger: Ledger,
                                                                      tmp_path: Path) -> None:
    to_bob = chain(ALICE, 2, tlp=TLP.AMBER, recipients=[BOB.public_key])
    to_me = chain(ALICE, 1, start=head_of(to_bob), tlp=TLP.AMBER,
                  recipients=[ME.public_key, BOB.public_key],
                  payload=lambda _seq: observation("secret.example", "domain-name"))
    result = await ledger.ingest(to_bob + to_me)
    assert (result.stored, result.unreadable) == (3, 2)
    listed = await ledger.list_observations()
    assert [o["id"] for o in listed.items] == [to_me[0].id]
    assert listed.items[0]["value"] == "secret.example"
    assert await ledger.get_observation(to_bob[0].id) is None
    assert await ledger.get_entry(to_bob[0].id) == to_bob[0]  # stored and replicated
    chunks = [c async for c in ledger.read_range(ALICE.public_key, 1, 3)]
    assert chunks == [[e.raw for e in to_bob + to_me]]
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    readable = conn.execute("SELECT seq, readable FROM entries ORDER BY seq").fetchall()
    assert readable == [(1, 0), (2, 0), (3, 1)]
    assert conn.execute("SELECT count(*) FROM observations").fetchone()[0] == 1
    conn.close()


async def test_ingest_stores_an_unparseable_payload_without_indexing_it(ledger: Ledger) -> None:
    odd = sign_entry(ALICE, seq=1, prev=None, now_ms=1, tlp=TLP.CLEAR, audience=None,
                     body=b"\x81\xa4kind\xa5weird")
    result = await ledger.ingest([odd])
    assert (result.stored, result.unreadable) == (1, 1)
    assert (await ledger.list_observations()).items == []


async def test_ingest_limits_and_types(ledger: Ledger) -> None:
    assert await ledger.ingest([]) == type(await ledger.ingest([]))()
    with pytest.raises(TypeError):
        await ledger.ingest([b"raw bytes are not verified"])  # type: ignore[list-item]
    entry = chain(ALICE, 1)[0]
    with pytest.raises(OversizeError):
        await ledger.ingest([entry] * 10_001)


async def test_ingest_of_many_origins_in_one_batch(ledger: Ledger) -> None:
    alice, bob = chain(ALICE, 50), chain(BOB, 50)
    mixed = [e for pair in zip(alice, bob, strict=True) for e in pair]
    result = await ledger.ingest(mixed)
    assert result.stored == 100
    vector = ledger.version_vector()
    assert vector == {ALICE.public_key: head_of(alice), BOB.public_key: head_of(bob)}


async def test_on_commit_wakes_listeners_after_own_and_received_commits(ledger: Ledger) -> None:
    """The aid and erasure watchers wake on this hook instead of polling."""
    seen: list[int] = []
    remove = ledger.on_commit(lambda: seen.append(ledger.counts().entries))
    await ledger.append_own([draft()])
    await ledger.ingest(chain(ALICE, 2))
    await ledger.ingest(chain(ALICE, 2))  # duplicates only: nothing committed anew
    # Called after each commit: the new entries are already counted.
    assert seen[:2] == [1, 3] and set(seen) == {1, 3}
    remove()
    await ledger.append_own([draft()])
    assert ledger.counts().entries == 4 and 4 not in seen
