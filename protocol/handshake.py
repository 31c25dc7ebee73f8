"""Peer handshake messages, transcript and signature inputs (docs/protocol.md, "Peer session").

Three messages, each one WebSocket binary message holding one canonical map
(protocol/encoding.py)::

    initiator -> responder   HELLO   {type: "hello",  label, key, eph}
    responder -> initiator   REPLY   {type: "reply",  key, eph, hdr, sig}
    initiator -> responder   FINISH  {type: "finish", hdr, sig}

``key`` is the sender's static Ed25519 public key, ``eph`` a fresh X25519 public key,
``hdr`` the header of the sender's outgoing secretstream, ``sig`` an Ed25519 signature
by ``key`` over :func:`signature_input`. This module only encodes, decodes and builds
the bytes that get hashed and signed; the state machine lives in protocol/session.py.

Invariants:
- Decoders accept exactly the canonical encoding of a map with exactly the listed
  keys and the listed types and lengths; anything else is a ``HandshakeError``.
- A decoded ``key`` is a valid ``PublicKey``; nothing here decides whether it is trusted.
- No randomness is drawn here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

from protocol.encoding import Limits, decode, encode
from protocol.errors import EncodingError, HandshakeError, KeyFormatError
from protocol.keys import PublicKey

__all__ = [
    "EPHEMERAL_KEY_BYTES",
    "MAX_HANDSHAKE_BYTES",
    "MAX_LABEL_BYTES",
    "PROTOCOL_LABEL",
    "PROTOCOL_VERSION",
    "SIGNATURE_BYTES",
    "SIG_LABEL",
    "STREAM_HEADER_BYTES",
    "TRANSCRIPT_HASH_BYTES",
    "Finish",
    "Hello",
    "Reply",
    "check_label",
    "decode_finish",
    "decode_hello",
    "decode_reply",
    "signature_input",
    "transcript",
    "transcript_hash",
]

PROTOCOL_VERSION = 2
"""The protocol version this build speaks: v2 entries sign a hash of the body (§3)."""

_LABEL_PREFIX = b"entraide/peer/v"
PROTOCOL_LABEL = _LABEL_PREFIX + str(PROTOCOL_VERSION).encode("ascii")
"""The protocol label and version; both sides must use the very same bytes."""

SIG_LABEL = b"entraide/handshake-sig/v1\x00"
"""Domain separation for handshake signatures (entries use b"entraide/entry/v2\\x00")."""

MAX_LABEL_BYTES = 64
MAX_HANDSHAKE_BYTES = 256
EPHEMERAL_KEY_BYTES = 32
STREAM_HEADER_BYTES = 24
SIGNATURE_BYTES = 64
TRANSCRIPT_HASH_BYTES = 32

_ROLE_INITIATOR = b"I"
_ROLE_RESPONDER = b"R"

# Handshake maps are flat, small and fixed: anything bigger is refused before msgpack
# allocates for it.
_LIMITS = Limits(
    max_bytes=MAX_HANDSHAKE_BYTES,
    max_str=16,
    max_bin=max(MAX_LABEL_BYTES, SIGNATURE_BYTES),
    max_array=0,
    max_map=5,
    max_depth=1,
)


@dataclass(frozen=True)
class Hello:
    """First message, initiator to responder: who I am, my ephemeral key, the protocol."""

    TYPE: ClassVar[str] = "hello"
    label: bytes
    key: PublicKey
    eph: bytes

    def encode(self) -> bytes:
        return encode({"type": self.TYPE, "label": self.label, "key": self.key.raw,
                       "eph": self.eph})


@dataclass(frozen=True)
class Reply:
    """Second message, responder to initiator: its identity, ephemeral key, stream
    header and signature (role ``R``)."""

    TYPE: ClassVar[str] = "reply"
    key: PublicKey
    eph: bytes
    hdr: bytes
    sig: bytes

    def encode(self) -> bytes:
        return encode({"type": self.TYPE, "key": self.key.raw, "eph": self.eph,
                       "hdr": self.hdr, "sig": self.sig})


@dataclass(frozen=True)
class Finish:
    """Third message, initiator to responder: its stream header and signature (role ``I``)."""

    TYPE: ClassVar[str] = "finish"
    hdr: bytes
    sig: bytes

    def encode(self) -> bytes:
        return encode({"type": self.TYPE, "hdr": self.hdr, "sig": self.sig})


def decode_hello(frame: bytes) -> Hello:
    """Parse a HELLO frame (label equality is the caller's check).

    Raises:
        HandshakeError: not exactly a canonical HELLO (size, keys, types, lengths,
            invalid Ed25519 key).
    """
    fields = _decode_map(frame, Hello.TYPE, ("eph", "key", "label", "type"))
    label = _bin(fields, "label", None)
    if not 1 <= len(label) <= MAX_LABEL_BYTES:
        raise HandshakeError(f"HELLO label must be 1..{MAX_LABEL_BYTES} bytes")
    return Hello(label=label, key=_key(fields), eph=_bin(fields, "eph", EPHEMERAL_KEY_BYTES))


def check_label(peer_label: bytes, own_label: bytes) -> None:
    """Refuse a HELLO whose label is not ``own_label``, naming both versions when the
    peer speaks another version of this protocol (the version negotiation, §7).

    Raises:
        HandshakeError: the labels differ; e.g. "peer speaks protocol v1; this node
            needs v2".
    """
    if peer_label == own_label:
        return
    theirs, ours = _label_version(peer_label), _label_version(own_label)
    if theirs is not None and ours is not None:
        raise HandshakeError(f"peer speaks protocol v{theirs}; this node needs v{ours}")
    raise HandshakeError("the peer speaks another protocol label or version")


def _label_version(label: bytes) -> int | None:
    digits = label[len(_LABEL_PREFIX):]
    if (label.startswith(_LABEL_PREFIX) and 1 <= len(digits) <= 4 and digits.isdigit()
            and not digits.startswith(b"0")):
        return int(digits)
    return None


def decode_reply(frame: bytes) -> Reply:
    """Parse a REPLY frame (the signature is checked by the caller).

    Raises:
        HandshakeError: not exactly a canonical REPLY.
    """
    fields = _decode_map(frame, Reply.TYPE, ("eph", "hdr", "key", "sig", "type"))
    return Reply(key=_key(fields), eph=_bin(fields, "eph", EPHEMERAL_KEY_BYTES),
                 hdr=_bin(fields, "hdr", STREAM_HEADER_BYTES),
                 sig=_bin(fields, "sig", SIGNATURE_BYTES))


def decode_finish(frame: bytes) -> Finish:
    """Parse a FINISH frame (the signature is checked by the caller).

    Raises:
        HandshakeError: not exactly a canonical FINISH.
    """
    fields = _decode_map(frame, Finish.TYPE, ("hdr", "sig", "type"))
    return Finish(hdr=_bin(fields, "hdr", STREAM_HEADER_BYTES),
                  sig=_bin(fields, "sig", SIGNATURE_BYTES))


def transcript(label: bytes, initiator_key: PublicKey, initiator_eph: bytes,
               responder_key: PublicKey, responder_eph: bytes) -> bytes:
    """The transcript both signatures bind: ``encode([label, Ki, Ei, Kr, Er])``."""
    return encode([label, initiator_key.raw, initiator_eph, responder_key.raw, responder_eph])


def transcript_hash(label: bytes, initiator_key: PublicKey, initiator_eph: bytes,
                    responder_key: PublicKey, responder_eph: bytes) -> bytes:
    """BLAKE2b-256 of :func:`transcript`: the session id, unique per session."""
    data = transcript(label, initiator_key, initiator_eph, responder_key, responder_eph)
    return hashlib.blake2b(data, digest_size=TRANSCRIPT_HASH_BYTES).digest()


def signature_input(*, initiator: bool, th: bytes, hdr: bytes) -> bytes:
    """What a side signs: ``SIG_LABEL || role || transcript hash || own stream header``.

    The role byte (``I`` or ``R``) stops a signature made in one role from being
    replayed in the other; the header is covered so that nothing in REPLY or FINISH
    is unauthenticated.
    """
    role = _ROLE_INITIATOR if initiator else _ROLE_RESPONDER
    return SIG_LABEL + role + th + hdr


# --- decoding helpers -------------------------------------------------------------


def _decode_map(frame: bytes, type_: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if len(frame) > MAX_HANDSHAKE_BYTES:
        raise HandshakeError(f"handshake message over {MAX_HANDSHAKE_BYTES} bytes")
    try:
        value = decode(frame, _LIMITS)
    except EncodingError as exc:
        raise HandshakeError(f"handshake message is not canonical msgpack: {exc}") from exc
    if not isinstance(value, dict):
        raise HandshakeError("handshake message is not a map")
    if value.get("type") != type_:
        raise HandshakeError(f"expected a {type_.upper()} message")
    if tuple(value) != keys:
        raise HandshakeError(f"{type_.upper()} must have exactly the fields {', '.join(keys)}")
    return value


def _bin(fields: dict[str, Any], name: str, size: int | None) -> bytes:
    value = fields[name]
    if not isinstance(value, bytes):
        raise HandshakeError(f"field {name!r} must be binary")
    if size is not None and len(value) != size:
        raise HandshakeError(f"field {name!r} must be {size} bytes")
    return value


def _key(fields: dict[str, Any]) -> PublicKey:
    try:
        return PublicKey(_bin(fields, "key", PublicKey.SIZE))
    except KeyFormatError as exc:
        raise HandshakeError("field 'key' is not a valid Ed25519 public key") from exc
