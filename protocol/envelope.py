"""End-to-end envelopes for AMBER, AMBER+STRICT and RED bodies (docs/protocol.md §4).

A fresh 32-byte content key encrypts the payload with SecretBox
(XSalsa20-Poly1305); the key is sealed to each recipient's X25519 key with
libsodium's sealed-box construction. The body is::

    encode([[sealed_key_1, ..., sealed_key_n], nonce || secretbox_ciphertext])

with ``sealed_key_i`` for the recipient whose key id is ``audience[i]`` (the entry's
audience field, strictly ascending). Relays carry and verify the entry's signature,
which covers both the audience and the body, but cannot open it.

The sealed box is computed here from caller-supplied randomness (ephemeral seed)
rather than by ``crypto_box_seal``, so vectors are reproducible; the bytes are
exactly libsodium's sealed-box format (``epk || crypto_box(m, blake2b(epk||pk), pk, esk)``)
and open with ``crypto_box_seal_open``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import nacl.bindings
import nacl.exceptions
import nacl.secret

from protocol.encoding import Limits, decode, encode
from protocol.entries import MAX_AUDIENCE, MAX_BODY_BYTES
from protocol.errors import DecryptionError, EncodingError, NotARecipientError
from protocol.keys import Identity, PublicKey

__all__ = ["RandBytes", "open_envelope", "seal_envelope"]

RandBytes = Callable[[int], bytes]

_SEALED_KEY_BYTES = 32 + 32 + 16  # epk || (key + MAC)
_NONCE_BYTES = nacl.secret.SecretBox.NONCE_SIZE
_MAX_PAYLOAD = MAX_BODY_BYTES - MAX_AUDIENCE * (_SEALED_KEY_BYTES + 2) - 64
_ENVELOPE_LIMITS = Limits(max_bytes=MAX_BODY_BYTES, max_str=0, max_bin=MAX_BODY_BYTES,
                          max_array=MAX_AUDIENCE, max_map=0, max_depth=2)


def _seal_key(content_key: bytes, recipient_x25519: bytes, ephemeral_seed: bytes) -> bytes:
    epk, esk = nacl.bindings.crypto_box_seed_keypair(ephemeral_seed)
    nonce = hashlib.blake2b(epk + recipient_x25519, digest_size=24).digest()
    return epk + nacl.bindings.crypto_box(content_key, nonce, recipient_x25519, esk)


def seal_envelope(
    payload: bytes, recipients: Sequence[PublicKey], randbytes: RandBytes
) -> tuple[tuple[bytes, ...], bytes]:
    """Encrypt ``payload`` so only ``recipients`` can read it.

    Duplicate recipients are sealed once. Include the author among the recipients if
    it must read its own entry back.

    Returns:
        ``(audience, body)``: the strictly ascending recipient key ids for the entry's
        audience field, and the envelope bytes for its body.

    Raises:
        EncodingError: no recipients, too many, or a payload too large.
    """
    unique = {pk.key_id: pk for pk in recipients}
    if not unique:
        raise EncodingError("an envelope needs at least one recipient")
    if len(unique) > MAX_AUDIENCE:
        raise EncodingError(f"an envelope has at most {MAX_AUDIENCE} recipients")
    if len(payload) > _MAX_PAYLOAD:
        raise EncodingError(f"an encrypted payload is at most {_MAX_PAYLOAD} bytes")
    audience = tuple(sorted(unique))
    content_key = randbytes(32)
    nonce = randbytes(_NONCE_BYTES)
    ciphertext = nacl.secret.SecretBox(content_key).encrypt(payload, nonce)
    sealed = [_seal_key(content_key, unique[kid].x25519, randbytes(32)) for kid in audience]
    return audience, encode([sealed, bytes(ciphertext)])


def open_envelope(body: bytes, audience: Sequence[bytes], identity: Identity) -> bytes:
    """Decrypt an envelope as one of its recipients.

    Raises:
        EncodingError: the body is not an envelope matching ``audience``.
        NotARecipientError: ``identity`` is not in the audience.
        DecryptionError: in the audience, but the key or ciphertext does not open
            (a damaged or forged envelope).
    """
    value = decode(bytes(body), _ENVELOPE_LIMITS)
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], list)
            or not isinstance(value[1], bytes) or len(value[0]) != len(audience)
            or any(not isinstance(s, bytes) or len(s) != _SEALED_KEY_BYTES for s in value[0])
            or len(value[1]) < _NONCE_BYTES + 16):
        raise EncodingError("not an envelope for this audience")
    sealed_keys, ciphertext = value
    me = identity.public_key
    slots = [i for i, kid in enumerate(audience) if kid == me.key_id]
    if not slots:
        raise NotARecipientError("this node is not in the entry's audience")
    x_pk, x_sk = me.x25519, identity.x25519_secret
    for i in slots:  # a key-id collision is harmless: try every matching slot
        try:
            content_key = nacl.bindings.crypto_box_seal_open(sealed_keys[i], x_pk, x_sk)
            return nacl.secret.SecretBox(content_key).decrypt(ciphertext)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            continue
    raise DecryptionError("the envelope does not open with this node's key")
