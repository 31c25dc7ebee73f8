"""The TAXII index serves each STIX id from one publisher only (agent/storage/
taxii_owners.py, docs/protocol.md "Whose STIX object is it"), whatever order the
entries reached the node in: one member cannot publish a newer version of another's
object, a copy of its identity or sightings in its name. Real ledgers, real keys,
real signed entries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.storage.taxii_index import Collection, TaxiiIndex, VersionFilter, forget_entries
from protocol.entries import VerifiedEntry
from protocol.keys import Identity
from protocol.payloads import StixObject
from protocol.stix import identity_id
from tests.agent._ledger_helpers import chain, identity, open_ledger

ME, ALICE, BOB, MALLORY = identity(1), identity(2), identity(3), identity(4)
T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-06-01T00:00:00.000Z"
X = "indicator--5f3c0a1e-8d5e-4d2b-9a61-0b7e6f1c2a10"


def text(who: Identity) -> str:
    return who.public_key.text


def indicator(modified: str = T0, **extra: Any) -> dict[str, Any]:
    return {"type": "indicator", "spec_version": "2.1", "id": X, "created": T0,
            "modified": modified, "name": "C2", "pattern": "[ipv4-addr:value = '192.0.2.1']",
            "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z", **extra}


def signed(author: Identity, objects: Sequence[dict[str, Any]], ts: int) -> list[VerifiedEntry]:
    return chain(author, len(objects), ts=ts,
                 payload=lambda seq: StixObject.from_object(objects[seq - 1]))


async def served(tmp_path: Path, name: str, *batches: list[VerifiedEntry]
                 ) -> tuple[list[dict[str, Any]], int]:
    """Every version the node's federation collection serves after ingesting (and
    indexing) the batches in that order, and how many rows its index refused."""
    folder = tmp_path / name
    folder.mkdir()
    ledger = await open_ledger(folder / "ledger.sqlite3", ME)
    index = await TaxiiIndex.open(folder / "taxii.sqlite3", folder / "ledger.sqlite3",
                                  ME.public_key, lambda _o: (None, None), lambda: 1.8e9)
    try:
        for batch in batches:
            await ledger.ingest(batch)
            await index.sync()
        page = await index.page(Collection.ALL, limit=1000, versions=VersionFilter(all=True))
        return [json.loads(r.json) for r in page.rows], await index.refused()
    finally:
        await index.close()
        await ledger.close()


def carried(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects served but the origins' identities Entraide adds."""
    ids = {identity_id(text(who)) for who in (ME, ALICE, BOB, MALLORY)}
    return [o for o in objects if o["id"] not in ids]


async def test_taxii_owner_a_newer_revoked_version_by_another_member_is_not_served(
        tmp_path: Path) -> None:
    alice = signed(ALICE, [indicator()], ts=1_700_000_000_000)
    revoked = signed(MALLORY, [indicator(T1, revoked=True)], ts=1_700_000_100_000)
    one, refused_one = await served(tmp_path, "one", alice, revoked)
    two, refused_two = await served(tmp_path, "two", revoked, alice)  # the other order
    assert carried(one) == carried(two) == [indicator()]  # Alice's, on every node
    assert refused_one == refused_two == 1  # counted; Mallory's row kept, never served


async def test_taxii_owner_an_object_naming_its_signer_as_creator_cannot_be_taken(
        tmp_path: Path) -> None:
    mine = indicator(created_by_ref=identity_id(text(ALICE)))
    alice = signed(ALICE, [mine], ts=1_700_000_000_000)
    # Backdated, and without the creator (naming Alice would be refused outright).
    backdated = signed(MALLORY, [indicator(T1, revoked=True)], ts=1_600_000_000_000)
    one, _ = await served(tmp_path, "one", alice, backdated)
    two, _ = await served(tmp_path, "two", backdated, alice)
    assert carried(one) == carried(two) == [mine]


async def test_taxii_owner_copies_of_identities_and_sightings_in_anothers_name_are_refused(
        tmp_path: Path) -> None:
    alice_id = identity_id(text(ALICE))
    renamed = {"type": "identity", "spec_version": "2.1", "id": alice_id, "created": T0,
               "modified": T1, "name": "Alice (compromised)", "identity_class": "organization"}
    sighting = {"type": "sighting", "spec_version": "2.1",
                "id": "sighting--0d6c5d3e-3b7e-4c1e-9a1f-5c2b1e0f9a11", "created": T0,
                "modified": T0, "sighting_of_ref": X, "where_sighted_refs": [alice_id]}
    spoken = {**sighting, "id": "sighting--0d6c5d3e-3b7e-4c1e-9a1f-5c2b1e0f9a12",
              "where_sighted_refs": [identity_id(text(MALLORY))], "created_by_ref": alice_id}
    mallory = signed(MALLORY, [renamed, sighting, spoken], ts=1_700_000_000_000)
    alice = signed(ALICE, [indicator()], ts=1_700_000_100_000)
    one, refused_one = await served(tmp_path, "one", alice, mallory)
    two, refused_two = await served(tmp_path, "two", mallory, alice)
    assert carried(one) == carried(two) == [indicator()]
    assert refused_one == refused_two == 3
    names = {o["name"] for o in one if o["id"] == alice_id}
    assert "Alice (compromised)" not in names


async def test_taxii_owner_a_claim_seen_before_its_victim_is_refused_when_the_victim_appears(
        tmp_path: Path) -> None:
    # Node two sees Mallory's sighting "at Bob" before any entry of Bob: it is served
    # until Bob is known, then refused, as on node one which knew Bob first.
    sighting = {"type": "sighting", "spec_version": "2.1",
                "id": "sighting--0d6c5d3e-3b7e-4c1e-9a1f-5c2b1e0f9a13", "created": T0,
                "modified": T0, "sighting_of_ref": X,
                "where_sighted_refs": [identity_id(text(BOB))]}
    mallory = signed(MALLORY, [sighting], ts=1_700_000_000_000)
    bob = signed(BOB, [indicator()], ts=1_700_000_100_000)
    one, _ = await served(tmp_path, "one", bob, mallory)
    two, refused = await served(tmp_path, "two", mallory, bob)
    assert carried(one) == carried(two) == [indicator()]
    assert refused == 1


async def test_taxii_owner_of_an_erased_object_is_forgotten_with_it(tmp_path: Path) -> None:
    alice = signed(ALICE, [indicator()], ts=1_700_000_000_000)
    await served(tmp_path, "one", alice)
    path = tmp_path / "one" / "taxii.sqlite3"
    assert forget_entries(path, [alice[0].hash]) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM owners WHERE stix_id = ?", (X,)).fetchone() == (0,)
