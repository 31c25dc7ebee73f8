"""Entraide's sans-I/O protocol core: formats, crypto and state machines.

Nothing here does I/O, reads a clock or draws randomness: time arrives as ``now``
and randomness as bytes (or a ``randbytes(n)`` callable) from the caller. The map,
low to high: ``errors`` (the one exception tree), ``encoding`` (canonical msgpack),
``keys``, ``entries`` (signed chained entries), ``envelope``, ``cards``,
``indicators`` and ``payloads`` (what an entry says; fields and models in
``payload_fields``/``payload_models``), ``stix`` (the STIX 2.1 mapping), ``handshake``
and ``session`` (the peer session; its state table in ``session_states``),
``messages`` and ``gossip`` (the replication engine, with ``gossip_receive``,
``gossip_send``, ``pull``, ``origins``, ``peer_state`` and ``tree``).

The exception tree is imported with the package; the other names below are loaded
from their module on first use (PEP 562), so ``import protocol`` stays as cheap as
the errors module (``entraide id`` must not pay for pydantic or the engine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from protocol.errors import (
    BadSignatureError,
    ChainError,
    ChecksumError,
    CryptoError,
    DecryptionError,
    EncodingError,
    EntraideError,
    FrameTooLargeError,
    HandshakeError,
    KeyFormatError,
    LocalProtocolError,
    NotARecipientError,
    OversizeError,
    PassphraseError,
    PayloadError,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    from protocol.encoding import Limits, decode, encode
    from protocol.entries import TLP, VerifiedEntry, sign_entry, verify_entry
    from protocol.gossip import GossipEngine, GossipParams
    from protocol.keys import Identity, PublicKey
    from protocol.payloads import Observation, Payload, decode_payload, encode_payload
    from protocol.session import CloseReason, Session

_LAZY = {
    "Limits": "encoding", "decode": "encoding", "encode": "encoding",
    "TLP": "entries", "VerifiedEntry": "entries", "sign_entry": "entries",
    "verify_entry": "entries",
    "GossipEngine": "gossip", "GossipParams": "gossip",
    "Identity": "keys", "PublicKey": "keys",
    "Observation": "payloads", "Payload": "payloads", "decode_payload": "payloads",
    "encode_payload": "payloads",
    "CloseReason": "session", "Session": "session",
}

__all__ = [
    "TLP",
    "BadSignatureError",
    "ChainError",
    "ChecksumError",
    "CloseReason",
    "CryptoError",
    "DecryptionError",
    "EncodingError",
    "EntraideError",
    "FrameTooLargeError",
    "GossipEngine",
    "GossipParams",
    "HandshakeError",
    "Identity",
    "KeyFormatError",
    "Limits",
    "LocalProtocolError",
    "NotARecipientError",
    "Observation",
    "OversizeError",
    "PassphraseError",
    "Payload",
    "PayloadError",
    "PublicKey",
    "RemoteProtocolError",
    "Session",
    "VerifiedEntry",
    "decode",
    "decode_payload",
    "encode",
    "encode_payload",
    "sign_entry",
    "verify_entry",
]


def __getattr__(name: str) -> object:
    """Load a lazily re-exported name from its module (only protocol's own modules)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"protocol.{module}"), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value
