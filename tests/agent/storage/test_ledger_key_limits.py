"""Ledger: a key trusted only up to a seq (a retired key after its hand-over, a key
declared compromised; agent/node/keys.py) has its later entries refused on ingest."""

from __future__ import annotations

from pathlib import Path

from agent.config.trust import PeerEntry, RetiredKey, TrustList
from protocol.keys import PublicKey
from tests.agent._ledger_helpers import chain, identity, open_ledger

ME = identity(1)
ALICE = identity(2)
ALICE_NEW = identity(3)
BOB = identity(4)


async def test_ledger_key_limits_refuse_entries_past_the_trusted_seq(tmp_path: Path) -> None:
    limits: dict[PublicKey, int] = {ALICE.public_key: 3}
    ledger = await open_ledger(tmp_path / "ledger.sqlite3", ME,
                               trusted_until=limits.get)
    try:
        entries = chain(ALICE, 5)
        result = await ledger.ingest(entries)
        assert (result.stored, result.refused) == (3, 2)
        assert {r.seq for r in result.refusals} == {4, 5}
        assert all("quarantined" in r.reason for r in result.refusals)
        assert ledger.head(ALICE.public_key) == (3, entries[2].hash)
        # Another key has no limit; lifting the limit lets the rest in.
        assert (await ledger.ingest(chain(BOB, 4))).stored == 4
        del limits[ALICE.public_key]
        assert (await ledger.ingest(entries[3:])).stored == 2
        assert (await ledger.verify()).ok
    finally:
        await ledger.close()


def test_ledger_key_limits_from_the_trust_list() -> None:
    alice = PeerEntry.build(name="ALICE", key=ALICE_NEW.public_key.text, url=None,
                            jurisdiction=None).model_copy(update={
        "retired": [RetiredKey(key=ALICE.public_key, last_seq=7)]})
    bob = PeerEntry.build(name="BOB", key=BOB.public_key.text, url=None,
                          jurisdiction=None).model_copy(update={"compromised_since_seq": 5})
    trust = TrustList((alice, bob))
    assert trust.trusted_until(ALICE_NEW.public_key) is None
    assert trust.trusted_until(ALICE.public_key) == 7
    assert trust.trusted_until(BOB.public_key) == 4
    assert trust.trusted_until(ME.public_key) == -1
    assert trust.author_of(ALICE.public_key) is alice
    assert trust.by_key(ALICE.public_key) is None  # the retired key is no member's key
    assert set(trust.authors()) == {ALICE_NEW.public_key, ALICE.public_key, BOB.public_key}
