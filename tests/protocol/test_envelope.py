from __future__ import annotations

import hashlib
import os

import pytest

from protocol.encoding import decode, encode
from protocol.entries import MAX_AUDIENCE
from protocol.envelope import envelope_audience, is_recipient, open_envelope, seal_envelope
from protocol.errors import DecryptionError, EncodingError, NotARecipientError
from protocol.keys import Identity

IDS = [Identity(hashlib.blake2b(f"env/{i}".encode(), digest_size=32).digest()) for i in range(4)]


def test_envelope_every_recipient_opens_it() -> None:
    audience, body = seal_envelope(b"payload", [i.public_key for i in IDS[:3]], os.urandom)
    assert list(audience) == sorted(audience) and len(audience) == 3
    for ident in IDS[:3]:
        assert open_envelope(body, audience, ident) == b"payload"


def test_envelope_non_recipient_gets_typed_error_not_plaintext() -> None:
    audience, body = seal_envelope(b"payload", [IDS[0].public_key], os.urandom)
    with pytest.raises(NotARecipientError):
        open_envelope(body, audience, IDS[1])
    assert b"payload" not in body


def test_envelope_duplicates_are_sealed_once() -> None:
    audience, _ = seal_envelope(b"p", [IDS[0].public_key, IDS[0].public_key], os.urandom)
    assert len(audience) == 1


def test_envelope_tampering_is_detected() -> None:
    audience, body = seal_envelope(b"payload", [IDS[0].public_key], os.urandom)
    epk, wrapped, ciphertext = decode(body)
    bad_ct = encode([epk, wrapped, ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])])
    with pytest.raises(DecryptionError):
        open_envelope(bad_ct, audience, IDS[0])
    bad_key = encode([epk, [wrapped[0][:-1] + bytes([wrapped[0][-1] ^ 1])], ciphertext])
    with pytest.raises(DecryptionError):
        open_envelope(bad_key, audience, IDS[0])
    # Another ephemeral key: the blinded id no longer matches.
    other_epk = encode([bytes(31) + b"\x09", wrapped, ciphertext])
    with pytest.raises(NotARecipientError):
        open_envelope(other_epk, audience, IDS[0])
    # A slot moved to another recipient's id does not open either.
    with pytest.raises(DecryptionError):
        _, other = seal_envelope(b"x", [IDS[1].public_key], os.urandom)
        open_envelope(other, audience, IDS[0])


def test_envelope_audience_is_blinded_per_entry() -> None:
    """docs/protocol.md §4: a non-recipient cannot name the audience; the same
    recipients get different ids in every envelope, and none is a real key id."""
    readers = [i.public_key for i in IDS[:2]]
    a1, b1 = seal_envelope(b"p", readers, os.urandom)
    a2, b2 = seal_envelope(b"p", readers, os.urandom)
    real = {pk.key_id for pk in readers}
    assert len(a1) == len(a2) == 2
    assert not set(a1) & set(a2) and not (set(a1) | set(a2)) & real
    outsider = IDS[3]
    assert not is_recipient(b1, a1, outsider)
    assert all(is_recipient(b1, a1, i) for i in IDS[:2])
    # A recipient reads the real audience inside, so it can answer to the same one.
    ids, payload = envelope_audience(b2, a2, IDS[1])
    assert payload == b"p" and ids == tuple(sorted(real))


def test_envelope_inner_audience_must_match_the_slots() -> None:
    audience, body = seal_envelope(b"p", [IDS[0].public_key, IDS[1].public_key], os.urandom)
    assert not is_recipient(body, audience[:1], IDS[0])  # slot count differs
    with pytest.raises(EncodingError):
        open_envelope(body, audience[:1], IDS[0])


@pytest.mark.parametrize("body", [b"", b"\x90", encode([[], b""]),
                                  encode([b"e" * 32, [b"x" * 48], b"y"])])
def test_envelope_garbage_is_an_encoding_error(body: bytes) -> None:
    with pytest.raises(EncodingError):
        open_envelope(body, [IDS[0].public_key.key_id], IDS[0])


def test_envelope_bounds() -> None:
    with pytest.raises(EncodingError):
        seal_envelope(b"p", [], os.urandom)
    many = [Identity(hashlib.blake2b(f"m/{i}".encode(), digest_size=32).digest()).public_key
            for i in range(MAX_AUDIENCE + 1)]
    with pytest.raises(EncodingError):
        seal_envelope(b"p", many, os.urandom)
