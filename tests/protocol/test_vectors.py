"""The fixed vectors in tests/vectors/core.json are the interop contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.entries import TLP, sign_entry, verify_entry
from protocol.envelope import open_envelope, seal_envelope
from protocol.errors import NotARecipientError
from protocol.keys import Identity, PublicKey
from tests.vectors.make_vectors import counter_rand

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "core.json").read_text())
IDS = {name: Identity(bytes.fromhex(k["seed"])) for name, k in VECTORS["keys"].items()}


@pytest.mark.parametrize("name", sorted(VECTORS["keys"]))
def test_vectors_keys_derive_exactly(name: str) -> None:
    k, pk = VECTORS["keys"][name], IDS[name].public_key
    assert pk.text == k["key"]
    assert pk.fingerprint == k["fingerprint"]
    assert pk.key_id.hex() == k["key_id"]
    assert pk.x25519.hex() == k["x25519"]
    assert PublicKey.from_text(k["key"]) == pk


@pytest.mark.parametrize("index", range(len(VECTORS["entries"])))
def test_vectors_entries_sign_and_verify_exactly(index: int) -> None:
    v = VECTORS["entries"][index]
    audience = tuple(bytes.fromhex(a) for a in v["audience"]) if v["audience"] else None
    entry = sign_entry(IDS[v["author"]], seq=v["seq"],
                       prev=bytes.fromhex(v["prev"]) if v["prev"] else None,
                       now_ms=v["ts"], tlp=TLP(v["tlp"]), audience=audience,
                       body=bytes.fromhex(v["body"]))
    assert entry.raw.hex() == v["raw"]
    assert entry.sig.hex() == v["sig"]
    assert entry.id == v["id"]
    assert verify_entry(bytes.fromhex(v["raw"])) == entry


def test_vectors_envelope_opens_for_readers_only() -> None:
    env = VECTORS["envelope"]
    entry = verify_entry(bytes.fromhex(VECTORS["entries"][env["entry_index"]]["raw"]))
    assert entry.audience is not None
    for name in env["readers"]:
        assert open_envelope(entry.body, entry.audience, IDS[name]).hex() == env["plaintext"]
    for name in env["non_readers"]:
        with pytest.raises(NotARecipientError):
            open_envelope(entry.body, entry.audience, IDS[name])
    # The same randomness reproduces the same envelope bytes.
    readers = [IDS[n].public_key for n in env["readers"]]
    audience, body = seal_envelope(bytes.fromhex(env["plaintext"]), readers,
                                   counter_rand(env["randomness_label"]))
    assert (audience, body) == (entry.audience, entry.body)
