"""The fixed vectors in tests/vectors/core.json are the interop contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from protocol.encoding import decode, encode
from protocol.entries import TLP, decode_fork_proof, detect_fork, sign_entry, verify_entry
from protocol.envelope import envelope_audience, open_envelope, seal_envelope
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
                       body=bytes.fromhex(v["body"]), expires_ms=v["expires_ms"])
    assert entry.raw.hex() == v["raw"]
    assert entry.expires_ms == v["expires_ms"] == decode(bytes.fromhex(v["header"]))[9]
    assert entry.header.hex() == v["header"]
    assert entry.sig.hex() == v["sig"]
    assert entry.id == v["id"]
    assert verify_entry(bytes.fromhex(v["raw"])) == entry
    # Recomputed from the published rules alone (docs/protocol.md §3), not the code.
    body, header = bytes.fromhex(v["body"]), bytes.fromhex(v["header"])
    assert v["body_hash"] == hashlib.blake2b(body, digest_size=32,
                                             person=b"entraide-body-v2").hexdigest()
    assert v["body_len"] == len(body) and entry.body_len == len(body)
    assert v["id"] == hashlib.blake2b(header, digest_size=32).hexdigest()
    assert v["raw"] == encode([header, body]).hex()
    signed = b"entraide/entry/v2\x00" + encode(decode(header)[:10])
    assert IDS[v["author"]].public_key.verify(signed, bytes.fromhex(v["sig"])) is not None


def test_vectors_header_only_entry_keeps_its_id() -> None:
    v = VECTORS["header_only"]
    full = VECTORS["entries"][v["entry_index"]]
    bare = verify_entry(bytes.fromhex(v["raw"]))
    assert bare.body is None and bare.id == v["id"] == full["id"]
    assert v["raw"] == encode([bytes.fromhex(full["header"]), None]).hex()
    assert verify_entry(bytes.fromhex(full["raw"])).without_body().raw.hex() == v["raw"]


def test_vectors_fork_proof_pins_its_bytes() -> None:
    v = VECTORS["fork"]
    other = sign_entry(IDS["QC"], seq=2, prev=bytes.fromhex(VECTORS["entries"][0]["id"]),
                       now_ms=v["other"]["ts"], tlp=TLP(v["other"]["tlp"]), audience=None,
                       body=bytes.fromhex(v["other"]["body"]))
    assert other.raw.hex() == v["other"]["raw"] and other.id == v["other"]["id"]
    mine = verify_entry(bytes.fromhex(VECTORS["entries"][1]["raw"]))
    proof = detect_fork(mine, other)
    assert proof is not None and proof.encode().hex() == v["proof"]
    again = decode_fork_proof(bytes.fromhex(v["proof"]))
    assert {again.a.id, again.b.id} == {mine.id, other.id} and again.a.body is None


def test_vectors_envelope_opens_for_readers_only() -> None:
    env = VECTORS["envelope"]
    entry = verify_entry(bytes.fromhex(VECTORS["entries"][env["entry_index"]]["raw"]))
    assert entry.audience is not None and entry.body is not None
    for name in env["readers"]:
        assert open_envelope(entry.body, entry.audience, IDS[name]).hex() == env["plaintext"]
        ids, _ = envelope_audience(entry.body, entry.audience, IDS[name])
        assert [i.hex() for i in ids] == env["key_ids"]
    assert not {a.hex() for a in entry.audience} & set(env["key_ids"])  # blinded (§4)
    for name in env["non_readers"]:
        with pytest.raises(NotARecipientError):
            open_envelope(entry.body, entry.audience, IDS[name])
    # The same randomness reproduces the same envelope bytes.
    readers = [IDS[n].public_key for n in env["readers"]]
    audience, body = seal_envelope(bytes.fromhex(env["plaintext"]), readers,
                                   counter_rand(env["randomness_label"]))
    assert (audience, body) == (entry.audience, entry.body)
