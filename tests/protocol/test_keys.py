from __future__ import annotations

import pytest

from protocol.errors import BadSignatureError, KeyFormatError, PassphraseError
from protocol.keys import (
    Identity,
    PublicKey,
    b64url_decode,
    b64url_encode,
    decode_key_file,
    encode_key_file,
    key_file_is_sealed,
)

SEED = bytes(range(32))
FAST_KDF = {"opslimit": 1, "memlimit": 8192}


def test_keys_text_form_round_trips() -> None:
    pk = Identity(SEED).public_key
    assert pk.text.startswith("ed25519:") and "=" not in pk.text
    assert PublicKey.from_text(pk.text) == pk
    assert len(pk.fingerprint) == 24 and pk.fingerprint.count(" ") == 4


@pytest.mark.parametrize("text", [
    "", "ed25519:", "ed25519:AAAA", "ed25519:" + "A" * 43 + "=", "curve25519:" + "A" * 43,
    "ed25519:" + "!" * 43, "ed25519:" + "A" * 44,
])
def test_keys_from_text_refuses_malformed(text: str) -> None:
    with pytest.raises(KeyFormatError):
        PublicKey.from_text(text)


def test_keys_public_key_refuses_wrong_length() -> None:
    with pytest.raises(KeyFormatError):
        PublicKey(b"\x01" * 31)


def test_keys_b64url_rejects_non_canonical_trailing_bits() -> None:
    text = b64url_encode(b"\xff")  # "_w"
    assert b64url_decode(text) == b"\xff"
    with pytest.raises(KeyFormatError):
        b64url_decode("_x")


def test_keys_sign_and_verify() -> None:
    ident = Identity(SEED)
    sig = ident.sign(b"msg")
    assert ident.public_key.verify(b"msg", sig) == b"msg"
    with pytest.raises(BadSignatureError):
        ident.public_key.verify(b"msh", sig)
    with pytest.raises(BadSignatureError):
        ident.public_key.verify(b"msg", sig[:-1])


def test_keys_identity_repr_hides_secret() -> None:
    ident = Identity(SEED)
    shown = repr(ident) + str(ident)
    assert SEED.hex() not in shown and b64url_encode(SEED) not in shown
    assert ident.public_key.text in shown


def test_keys_identity_refuses_bad_seed() -> None:
    with pytest.raises(KeyFormatError):
        Identity(b"short")


def test_keys_plain_key_file_round_trips() -> None:
    data = encode_key_file(Identity(SEED))
    assert not key_file_is_sealed(data)
    assert decode_key_file(data).seed == SEED


def test_keys_sealed_key_file_needs_the_passphrase() -> None:
    data = encode_key_file(Identity(SEED), b"correct horse", salt=b"s" * 16, nonce=b"n" * 24,
                           **FAST_KDF)
    assert key_file_is_sealed(data)
    assert SEED.hex().encode() not in data and b64url_encode(SEED).encode() not in data
    assert decode_key_file(data, b"correct horse").seed == SEED
    with pytest.raises(PassphraseError):
        decode_key_file(data, b"wrong")
    with pytest.raises(PassphraseError):
        decode_key_file(data)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\xff\xfe", b"entraide-key-v1:argon2id:1:2",
                                  b"entraide-key-v1:argon2id:99:8192:AAAAAAAAAAAAAAAAAAAAAA:AA",
                                  b"entraide-key-v1:plain:AAAA"])
def test_keys_key_file_refuses_garbage(data: bytes) -> None:
    with pytest.raises(KeyFormatError):
        decode_key_file(data, b"pw")


def test_keys_sealing_needs_salt_and_nonce() -> None:
    with pytest.raises(KeyFormatError):
        encode_key_file(Identity(SEED), b"pw")
