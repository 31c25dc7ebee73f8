from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import decode, encode
from protocol.entries import (
    ENTRY_SIG_LABEL,
    MAX_BODY_BYTES,
    TLP,
    ForkProof,
    VerifiedEntry,
    _rebuild_verified,
    check_successor,
    decode_fork_proof,
    detect_fork,
    entry_hash,
    sign_entry,
    split_entry,
    verify_entry,
    verify_header,
)
from protocol.errors import (
    BadSignatureError,
    ChainError,
    EncodingError,
    EntraideError,
    OversizeError,
)
from protocol.keys import Identity

QC = Identity(hashlib.blake2b(b"test/QC", digest_size=32).digest())
ON = Identity(hashlib.blake2b(b"test/ON", digest_size=32).digest())


def entry(seq: int = 1, prev: bytes | None = None, body: bytes = b"body", ts: int = 1000,
          who: Identity = QC, tlp: TLP = TLP.GREEN,
          audience: tuple[bytes, ...] | None = None) -> VerifiedEntry:
    return sign_entry(who, seq=seq, prev=prev, now_ms=ts, tlp=tlp, audience=audience, body=body)


FIRST = entry()
SECOND = entry(seq=2, prev=FIRST.hash)
AMBER = entry(tlp=TLP.AMBER, audience=(b"\x01" * 8, b"\x02" * 8))


def fields_of(e: VerifiedEntry) -> list[object]:
    """The header's 11 decoded fields."""
    value = decode(e.header)
    assert isinstance(value, list)
    return value


def wire(header_fields: list[object], body: bytes | None) -> bytes:
    return encode([encode(header_fields), body])


def test_entries_round_trip() -> None:
    for e in (FIRST, SECOND, AMBER):
        again = verify_entry(e.raw)
        assert again == e
        assert again.id == e.id == hashlib.blake2b(e.header, digest_size=32).hexdigest()
        assert e.raw == encode([e.header, e.body]) and split_entry(e.raw) == (e.header, e.body)
        assert entry_hash(e.raw) == e.hash
        assert e.body_hash == hashlib.blake2b(e.body or b"", digest_size=32,
                                              person=b"entraide-body-v2").digest()
        assert e.body_len == len(e.body or b"")


def test_entries_header_only_is_a_chain_member_with_the_same_id() -> None:
    bare = SECOND.without_body()
    assert bare.body is None and not bare.has_body and bare.hash == SECOND.hash
    assert bare.raw == encode([SECOND.header, None]) and bare != SECOND
    again = verify_entry(bare.raw)
    assert again == bare and again.id == SECOND.id and again.header == SECOND.header
    assert verify_header(SECOND.header) == bare and bare.without_body() is bare
    check_successor((1, FIRST.hash), again)
    assert "header only" in repr(bare)


def test_entries_body_must_match_its_hash_and_length() -> None:
    with pytest.raises(EncodingError, match="body hash"):
        verify_entry(encode([SECOND.header, b"bodz"]))
    with pytest.raises(EncodingError, match="body hash"):
        verify_entry(encode([SECOND.header, b"body!"]))
    with pytest.raises(EncodingError, match="body hash"):
        verify_entry(encode([SECOND.header, b""]))


def test_entries_built_entries_are_whole_frozen_dataclasses() -> None:
    for e in (FIRST, SECOND, AMBER, verify_entry(AMBER.raw), _rebuild_verified(SECOND.raw),
              SECOND.without_body(), _rebuild_verified(SECOND.without_body().raw)):
        values = {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}
        assert values["hash"] == hashlib.blake2b(e.header, digest_size=32).digest()
        assert (values["v"], values["raw"]) == (2, e.raw)
        with pytest.raises(dataclasses.FrozenInstanceError):
            e.seq = 9  # type: ignore[misc]
        assert hash(e) == hash(verify_entry(e.raw)) and e == verify_entry(e.raw)


def test_entries_verified_entry_cannot_be_forged_by_construction() -> None:
    with pytest.raises(TypeError):
        VerifiedEntry(2, QC.public_key, 1, None, 0, TLP.GREEN, None, b"\0" * 32, 0,
                      b"\0" * 64, b"", None, b"", b"")


def test_entries_signature_is_domain_separated() -> None:
    fields = fields_of(FIRST)[:10]
    assert QC.public_key.verify(ENTRY_SIG_LABEL + encode(fields), FIRST.sig)
    with pytest.raises(BadSignatureError):
        QC.public_key.verify(encode(fields), FIRST.sig)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_entries_any_flipped_byte_fails(data: st.DataObject) -> None:
    raw = bytearray(SECOND.raw)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(EntraideError):
        verify_entry(bytes(raw))


FIELD_CHANGES = {
    1: ON.public_key.raw, 2: 3, 3: b"\x00" * 32, 4: 1001, 5: "CLEAR", 7: b"\x01" * 32,
    8: 5, 9: 999_999, 10: b"\x00" * 64,
}


@pytest.mark.parametrize("index", sorted(FIELD_CHANGES))
def test_entries_any_changed_field_fails(index: int) -> None:
    fields = fields_of(SECOND)
    fields[index] = FIELD_CHANGES[index]
    for body in (SECOND.body, None):
        with pytest.raises((BadSignatureError, EncodingError)):
            verify_entry(wire(fields, body))


@settings(max_examples=10_000, deadline=None)
@given(st.binary(max_size=200))
def test_entries_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    with pytest.raises(EntraideError):
        verify_entry(data)


def test_entries_random_prefix_of_valid_entry_raises_typed() -> None:
    for cut in range(len(SECOND.raw)):
        with pytest.raises(EncodingError):
            verify_entry(SECOND.raw[:cut])


def test_entries_non_canonical_encodings_rejected() -> None:
    fields = fields_of(SECOND)
    # Same value, non-shortest integer for seq (uint64 instead of fixint).
    packer = msgpack.Packer(use_bin_type=True)
    head = b"\x9b" + b"".join(packer.pack(f) for f in fields[:2])
    seq64 = b"\xcf" + (2).to_bytes(8, "big")
    tail = b"".join(packer.pack(f) for f in fields[3:])
    with pytest.raises(EncodingError):
        verify_entry(encode([head + seq64 + tail, SECOND.body]))
    # Array 16 framing instead of fixarray; bin 16 for a short header; trailing bytes.
    with pytest.raises(EncodingError):
        verify_entry(b"\xdc\x00\x02" + SECOND.raw[1:])
    header_len = len(SECOND.header)
    with pytest.raises(EncodingError):
        verify_entry(b"\x92\xc5" + header_len.to_bytes(2, "big") + SECOND.raw[3:])
    with pytest.raises(EncodingError):
        verify_entry(SECOND.raw + b"\x00")
    # A body that is neither bytes nor nil.
    with pytest.raises(EncodingError):
        verify_entry(encode([SECOND.header, 0]))


@pytest.mark.parametrize("kwargs", [
    {"seq": 0}, {"seq": 2, "prev": None}, {"seq": 1, "prev": b"\x00" * 32},
    {"seq": 2, "prev": b"short"}, {"ts": -1}, {"tlp": TLP.RED},
    {"tlp": TLP.CLEAR, "audience": (b"\x01" * 8,)},
    {"tlp": TLP.AMBER, "audience": (b"\x02" * 8, b"\x01" * 8)},
    {"tlp": TLP.AMBER, "audience": (b"\x01" * 8, b"\x01" * 8)},
    {"tlp": TLP.AMBER, "audience": (b"\x01" * 7,)},
    {"tlp": TLP.AMBER, "audience": ()},
    {"body": b"x" * (MAX_BODY_BYTES + 1)},
])
def test_entries_sign_refuses_inconsistent_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(EncodingError):
        entry(**kwargs)  # type: ignore[arg-type]


def test_entries_expiry_is_signed_and_after_ts() -> None:
    dated = sign_entry(QC, seq=1, prev=None, now_ms=1000, tlp=TLP.GREEN, audience=None,
                       body=b"body", expires_ms=5000)
    assert dated.expires_ms == 5000 and FIRST.expires_ms == 0
    assert verify_entry(dated.raw).expires_ms == 5000
    assert verify_entry(dated.without_body().raw).expires_ms == 5000
    assert dated.id != FIRST.id
    # A relay that stretches or removes the expiry breaks the signature.
    for changed in (0, 9000):
        fields = fields_of(dated)
        fields[9] = changed
        with pytest.raises(BadSignatureError):
            verify_entry(wire(fields, dated.body))
    for bad in (1000, 999, -1, 1 << 63):
        with pytest.raises(EncodingError):
            sign_entry(QC, seq=1, prev=None, now_ms=1000, tlp=TLP.GREEN, audience=None,
                       body=b"body", expires_ms=bad)
    with pytest.raises(EncodingError):
        sign_entry(QC, seq=1, prev=None, now_ms=1000, tlp=TLP.GREEN, audience=None,
                   body=b"body", expires_ms=True)


def test_entries_verify_refuses_unknown_version_and_oversize() -> None:
    fields = fields_of(FIRST)
    fields[0] = 1
    with pytest.raises(EncodingError, match="version"):
        verify_entry(wire(fields, FIRST.body))
    with pytest.raises(OversizeError):
        verify_entry(b"\x92" + b"\x00" * (400 * 1024))
    with pytest.raises(OversizeError):
        verify_entry(encode([b"\x00" * 5000, None]))


def test_entries_chain_checks() -> None:
    check_successor(None, FIRST)
    check_successor((1, FIRST.hash), SECOND)
    with pytest.raises(ChainError):
        check_successor(None, SECOND)
    with pytest.raises(ChainError):
        check_successor((2, SECOND.hash), SECOND)
    with pytest.raises(ChainError):
        check_successor((1, b"\x00" * 32), SECOND)


def test_entries_fork_proof_verifies_alone() -> None:
    other = entry(seq=2, prev=FIRST.hash, body=b"something else")
    proof = detect_fork(SECOND, other)
    assert proof is not None and proof == detect_fork(other, SECOND)
    again = decode_fork_proof(proof.encode())
    assert (again.origin, again.seq) == (QC.public_key, 2)
    assert {again.a, again.b} == {SECOND.without_body(), other.without_body()}
    assert proof.a.body is None and proof.b.body is None  # headers only
    assert proof.encode() == encode(["entraide/fork/v2", proof.a.header, proof.b.header])
    assert detect_fork(SECOND, SECOND) is None
    assert detect_fork(FIRST, SECOND) is None


def test_entries_fork_proof_refuses_non_conflicts() -> None:
    with pytest.raises(ChainError):
        ForkProof(FIRST, SECOND)
    with pytest.raises(ChainError):
        decode_fork_proof(encode(["entraide/fork/v2", SECOND.header, SECOND.header]))
    on_second = entry(seq=2, prev=FIRST.hash, who=ON)
    with pytest.raises(ChainError):
        decode_fork_proof(encode(["entraide/fork/v2", SECOND.header, on_second.header]))
    with pytest.raises(EncodingError):
        decode_fork_proof(encode(["other", SECOND.header, SECOND.header]))
    tampered = bytearray(SECOND.header)
    tampered[-1] ^= 1
    other = entry(seq=2, prev=FIRST.hash, body=b"x")
    with pytest.raises(BadSignatureError):
        decode_fork_proof(encode(["entraide/fork/v2", bytes(tampered), other.header]))
