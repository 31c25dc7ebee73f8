"""The hand-over entry of a key rotation (protocol/handover.py, docs/protocol.md §9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.entries import TLP, sign_entry, verify_entry
from protocol.handover import Handover, HandoverError, check_handover, countersign
from protocol.keys import Identity, PublicKey
from protocol.payloads import decode_payload, encode_payload

VECTOR = json.loads((Path(__file__).parent.parent / "vectors" / "handover.json").read_text())
OLD = Identity(bytes.fromhex(VECTOR["old_seed"]))
NEW = Identity(bytes.fromhex(VECTOR["new_seed"]))
OTHER = Identity(b"\x07" * 32)


def _entry(payload: Handover, who: Identity = OLD, tlp: TLP = TLP.GREEN):  # type: ignore[no-untyped-def]
    return sign_entry(who, seq=3, prev=b"\x01" * 32, now_ms=1, tlp=tlp, audience=None,
                      body=encode_payload(payload))


def test_handover_vector_verifies_and_names_the_new_key() -> None:
    entry = verify_entry(bytes.fromhex(VECTOR["entry"]))
    assert entry.hash.hex() == VECTOR["id"] and entry.origin.text == VECTOR["old_key"]
    payload = decode_payload(entry.body or b"")
    assert isinstance(payload, Handover)
    assert payload.model_dump(mode="json") == VECTOR["payload"]
    assert check_handover(entry, payload) == PublicKey.from_text(VECTOR["new_key"])


def test_handover_countersign_is_deterministic_as_in_the_vector() -> None:
    payload = countersign(NEW, OLD.public_key)
    assert encode_payload(payload).hex() == VECTOR["body"]


def test_handover_countersig_for_another_old_key_is_refused() -> None:
    stolen = countersign(NEW, OTHER.public_key)  # NEW consented to succeed OTHER only
    with pytest.raises(HandoverError, match="countersignature"):
        check_handover(_entry(stolen), stolen)


def test_handover_with_a_forged_countersig_is_refused() -> None:
    good = countersign(NEW, OLD.public_key)
    forged = Handover(new_key=good.new_key, countersig=countersign(OTHER, OLD.public_key)
                      .countersig)
    with pytest.raises(HandoverError, match="countersignature"):
        check_handover(_entry(forged), forged)


def test_handover_to_itself_and_encrypted_handover_are_refused() -> None:
    with pytest.raises(HandoverError, match="itself"):
        countersign(OLD, OLD.public_key)
    selfish = Handover(new_key=OLD.public_key.text,
                       countersig=countersign(NEW, OLD.public_key).countersig)
    with pytest.raises(HandoverError, match="itself"):
        check_handover(_entry(selfish), selfish)
    good = countersign(NEW, OLD.public_key)
    entry = _entry(good)
    with pytest.raises(HandoverError, match="CLEAR or GREEN"):
        check_handover(_Labelled(entry, TLP.AMBER), good)  # type: ignore[arg-type]


class _Labelled:
    """An entry's view with another TLP (a real AMBER entry needs an envelope)."""

    def __init__(self, entry: object, tlp: TLP) -> None:
        self.origin = entry.origin  # type: ignore[attr-defined]
        self.tlp = tlp
