"""End-to-end envelopes for AMBER, AMBER+STRICT and RED bodies (docs/protocol.md §4).

A fresh 32-byte content key ``K`` encrypts the payload with SecretBox
(XSalsa20-Poly1305). One ephemeral X25519 key pair ``(E, e)`` per envelope is
agreed with each recipient ``r``: ``S_r = X25519(e, x25519(r))``. From ``S_r`` come
the recipient's **blinded id** (8 bytes, what the entry's audience field carries)
and the key that wraps ``K`` for it. The body is::

    encode([E, [wrapped_1, ..., wrapped_n], nonce || secretbox(encode([ids, payload]))])

with ``wrapped_i`` for the recipient whose blinded id is ``audience[i]`` (strictly
ascending) and ``ids`` the recipients' real key ids, sorted, inside the ciphertext.

Why blinded ids (issue 15 item 5): with real key ids in the signed header, any member
could map a RED audience to names. A blinded id depends on a secret only the author
(``e``) and that recipient (its X25519 key) can compute, and is fresh for every
entry, so a non-recipient learns only the audience's size. A recipient recognises
itself with one X25519 and one hash whatever the audience's size (no trial of every
slot), then reads the real audience inside the ciphertext, so it can answer to the
same audience (sightings, offers, receipts). Relays carry and verify the entry's
signature, which covers the audience and the body, but cannot open it.

Randomness is caller-supplied (vectors are reproducible).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence

import nacl.bindings
import nacl.exceptions
import nacl.secret

from protocol.encoding import Limits, decode, encode
from protocol.entries import MAX_AUDIENCE, MAX_BODY_BYTES
from protocol.errors import DecryptionError, EncodingError, NotARecipientError
from protocol.keys import KEY_ID_BYTES, Identity, PublicKey

__all__ = ["RandBytes", "envelope_audience", "is_recipient", "open_envelope",
           "seal_envelope"]

RandBytes = Callable[[int], bytes]

_EPK_BYTES = 32
_KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
_WRAPPED_BYTES = _KEY_BYTES + nacl.secret.SecretBox.MACBYTES
_NONCE_BYTES = nacl.secret.SecretBox.NONCE_SIZE
# Each wrap key is used once (fresh E per envelope), so a fixed nonce is safe.
_WRAP_NONCE = bytes(_NONCE_BYTES)
_TAG_PERSON = b"entraide-aud-id"
_WRAP_PERSON = b"entraide-aud-key"
# Outer framing, wrapped keys, the inner id list and the SecretBox overhead.
_MAX_PAYLOAD = (MAX_BODY_BYTES - _EPK_BYTES - MAX_AUDIENCE * (_WRAPPED_BYTES + 2)
                - MAX_AUDIENCE * (KEY_ID_BYTES + 2) - 128)
_ENVELOPE_LIMITS = Limits(max_bytes=MAX_BODY_BYTES, max_str=0, max_bin=MAX_BODY_BYTES,
                          max_array=MAX_AUDIENCE, max_map=0, max_depth=2)
_INNER_LIMITS = _ENVELOPE_LIMITS


def _agree(shared: bytes, epk: bytes, recipient_x25519: bytes) -> tuple[bytes, bytes]:
    """(blinded id, wrap key) of one recipient; both bind E and the recipient's key,
    as libsodium's sealed box binds them in its nonce."""
    material = shared + epk + recipient_x25519
    tag = hashlib.blake2b(material, digest_size=KEY_ID_BYTES, person=_TAG_PERSON).digest()
    wrap = hashlib.blake2b(material, digest_size=_KEY_BYTES, person=_WRAP_PERSON).digest()
    return tag, wrap


def _scalarmult(secret: bytes, public: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_scalarmult(secret, public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        # libsodium refuses low-order points (an all-zero shared secret).
        raise DecryptionError("the envelope's ephemeral key is not usable") from exc


def seal_envelope(
    payload: bytes, recipients: Sequence[PublicKey], randbytes: RandBytes
) -> tuple[tuple[bytes, ...], bytes]:
    """Encrypt ``payload`` so only ``recipients`` can read it.

    Duplicate recipients are sealed once. Include the author among the recipients if
    it must read its own entry back. Draws, in order: ``K`` (32), the nonce (24), the
    ephemeral seed (32).

    Returns:
        ``(audience, body)``: the recipients' blinded ids, strictly ascending, for the
        entry's audience field, and the envelope bytes for its body.

    Raises:
        EncodingError: no recipients, too many, a payload too large, or (chance
            about n^2 / 2^65) two blinded ids equal: seal again.
    """
    unique = {pk.key_id: pk for pk in recipients}
    if not unique:
        raise EncodingError("an envelope needs at least one recipient")
    if len(unique) > MAX_AUDIENCE:
        raise EncodingError(f"an envelope has at most {MAX_AUDIENCE} recipients")
    if len(payload) > _MAX_PAYLOAD:
        raise EncodingError(f"an encrypted payload is at most {_MAX_PAYLOAD} bytes")
    content_key = randbytes(_KEY_BYTES)
    nonce = randbytes(_NONCE_BYTES)
    epk, esk = nacl.bindings.crypto_box_seed_keypair(randbytes(32))
    inner = encode([sorted(unique), bytes(payload)])
    ciphertext = bytes(nacl.secret.SecretBox(content_key).encrypt(inner, nonce))
    slots = []
    for pk in unique.values():
        tag, wrap = _agree(_scalarmult(esk, pk.x25519), epk, pk.x25519)
        slots.append((tag, nacl.bindings.crypto_secretbox(content_key, _WRAP_NONCE, wrap)))
    slots.sort()
    if any(a[0] == b[0] for a, b in itertools.pairwise(slots)):
        raise EncodingError("two recipients drew the same blinded id; seal again")
    audience = tuple(tag for tag, _ in slots)
    return audience, encode([epk, [wrapped for _, wrapped in slots], ciphertext])


def _parse(body: bytes, audience: Sequence[bytes]) -> tuple[bytes, list[bytes], bytes]:
    value = decode(bytes(body), _ENVELOPE_LIMITS)
    if (not isinstance(value, list) or len(value) != 3
            or not isinstance(value[0], bytes) or len(value[0]) != _EPK_BYTES
            or not isinstance(value[1], list) or len(value[1]) != len(audience)
            or any(not isinstance(w, bytes) or len(w) != _WRAPPED_BYTES for w in value[1])
            or not isinstance(value[2], bytes) or len(value[2]) < _NONCE_BYTES + 16):
        raise EncodingError("not an envelope for this audience")
    return value[0], value[1], value[2]


def _my_slot(epk: bytes, audience: Sequence[bytes], identity: Identity) -> tuple[int, bytes]:
    me = identity.public_key
    tag, wrap = _agree(_scalarmult(identity.x25519_secret, epk), epk, me.x25519)
    for i, blinded in enumerate(audience):
        if blinded == tag:
            return i, wrap
    raise NotARecipientError("this node is not in the entry's audience")


def is_recipient(body: bytes, audience: Sequence[bytes], identity: Identity) -> bool:
    """True when ``identity`` holds a slot of this envelope: one X25519 and one hash,
    whatever the audience's size; no decryption. False for a malformed envelope."""
    try:
        epk, _wrapped, _ct = _parse(body, audience)
        _my_slot(epk, audience, identity)
    except (EncodingError, DecryptionError):
        return False
    return True


def envelope_audience(body: bytes, audience: Sequence[bytes], identity: Identity
                      ) -> tuple[tuple[bytes, ...], bytes]:
    """Decrypt an envelope as one of its recipients.

    Returns:
        ``(key_ids, payload)``: the real key ids of every recipient (sorted, this
        identity's among them) and the payload.

    Raises:
        EncodingError: the body is not an envelope matching ``audience``, or its
            decrypted inner part is malformed.
        NotARecipientError: ``identity`` is not in the audience.
        DecryptionError: in the audience, but the key or ciphertext does not open
            (a damaged or forged envelope).
    """
    epk, wrapped, ciphertext = _parse(body, audience)
    slot, wrap = _my_slot(epk, audience, identity)
    try:
        content_key = nacl.bindings.crypto_secretbox_open(wrapped[slot], _WRAP_NONCE, wrap)
        inner = nacl.secret.SecretBox(content_key).decrypt(ciphertext)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise DecryptionError("the envelope does not open with this node's key") from exc
    value = decode(inner, _INNER_LIMITS)
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], list)
            or not isinstance(value[1], bytes) or len(value[0]) != len(audience)
            or any(not isinstance(k, bytes) or len(k) != KEY_ID_BYTES for k in value[0])
            or any(a >= b for a, b in itertools.pairwise(value[0]))
            or identity.public_key.key_id not in value[0]):
        raise EncodingError("the envelope's recipient list is malformed")
    return tuple(value[0]), value[1]


def open_envelope(body: bytes, audience: Sequence[bytes], identity: Identity) -> bytes:
    """The payload of an envelope, as one of its recipients (see
    :func:`envelope_audience` for what it raises)."""
    return envelope_audience(body, audience, identity)[1]
