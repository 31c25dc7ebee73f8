"""Who a STIX object speaks for and who owns its id (protocol/stix_claims.py): pure
rules, so every node reaches the same owner whatever order entries arrive in."""

from __future__ import annotations

import itertools

from protocol.stix_claims import claim_key, could_claim, foreign_claim, proven_id
from protocol.stix_common import EXTENSION_ID, entry_stix_id, identity_id

ALICE, MALLORY = "ed25519:alice", "ed25519:mallory"
IDENTITIES = {identity_id(ALICE): ALICE, identity_id(MALLORY): MALLORY}
X = "indicator--5f3c0a1e-8d5e-4d2b-9a61-0b7e6f1c2a10"


def test_stix_claims_an_object_naming_another_member_is_a_foreign_claim() -> None:
    alice_id = identity_id(ALICE)
    assert foreign_claim({"type": "identity", "id": alice_id}, MALLORY, IDENTITIES) == (
        ALICE, "id")
    assert foreign_claim({"id": X, "created_by_ref": alice_id}, MALLORY, IDENTITIES) == (
        ALICE, "created_by_ref")
    assert foreign_claim({"id": "sighting--1", "where_sighted_refs": ["x", alice_id]},
                         MALLORY, IDENTITIES) == (ALICE, "where_sighted_refs")
    assert foreign_claim({"id": X, "extensions": {EXTENSION_ID: {"origin": ALICE}}},
                         MALLORY, IDENTITIES) == (ALICE, "extensions")
    # Its own name, or a name no member has, is no claim.
    assert foreign_claim({"id": X, "created_by_ref": alice_id}, ALICE, IDENTITIES) is None
    assert foreign_claim({"id": X, "created_by_ref": "identity--other"}, MALLORY,
                         IDENTITIES) is None
    assert not could_claim('{"id": "x", "created_by_ref": "identity--other"}', IDENTITIES)
    assert could_claim(f'{{"created_by_ref": "{alice_id}"}}', IDENTITIES)


def test_stix_claims_derived_ids_are_proven_for_their_origin_only() -> None:
    entry = bytes(range(32))
    derived = entry_stix_id("indicator", entry.hex())
    assert proven_id(derived, ALICE, entry) and proven_id(identity_id(ALICE), ALICE, None)
    assert not proven_id(derived, MALLORY, bytes(32))
    assert not proven_id(identity_id(ALICE), MALLORY, None)


def test_stix_claims_the_owner_is_the_same_whatever_order_claims_arrive_in() -> None:
    entry = bytes(range(32))
    derived = entry_stix_id("indicator", entry.hex())
    cases = {
        # the earliest entry; a backdated one wins here (the documented limit)
        X: [claim_key(X, ALICE, entry, 100), claim_key(X, MALLORY, bytes(32), 200)],
        # an object naming its signer as creator comes before one that does not
        "indicator--2": [claim_key("indicator--2", ALICE, entry, 100, identity_id(ALICE)),
                         claim_key("indicator--2", MALLORY, bytes(32), 1)],
        # an id derived from an entry belongs to that entry's origin
        derived: [claim_key(derived, ALICE, entry, 500),
                  claim_key(derived, MALLORY, bytes(32), 1, identity_id(MALLORY))],
    }
    for claims in cases.values():
        owners = set()
        for order in itertools.permutations(claims):
            owner = None
            for claim in order:  # as the index meets them: the smaller claim takes the id
                owner = claim if owner is None or claim < owner else owner
            assert owner is not None
            owners.add(owner[2])
        assert owners == {ALICE}
    # Equal times: the smaller key text, so still one answer everywhere.
    assert min(claim_key(X, MALLORY, None, 5), claim_key(X, ALICE, None, 5))[2] == ALICE
