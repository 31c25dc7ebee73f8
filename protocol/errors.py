"""The one exception tree of Entraide.

Every error the protocol core raises is an ``EntraideError``; no msgpack, nacl,
pydantic, KeyError or IndexError exception escapes a decode, verify or open call
(they are translated at the boundary with ``raise ... from exc``). The agent adds
its own branches (storage, configuration, untrusted peer) under the same root, in
``agent/errors.py``::

    EntraideError
    ├── EncodingError            bytes that are not the one canonical form
    │   └── OversizeError        a field, frame or document over its cap
    ├── KeyFormatError           a key, card or key file that does not parse
    │   └── ChecksumError        a mistyped peer card (checksum mismatch)
    ├── CryptoError
    │   ├── BadSignatureError    a signature that does not verify
    │   ├── DecryptionError      a ciphertext that does not open (tampered, wrong key)
    │   │   └── NotARecipientError   an envelope not sealed to this key
    │   └── PassphraseError      a sealed key file opened with the wrong passphrase
    ├── PayloadError             a payload that is not a valid model (bad indicator ...)
    ├── ChainError               an entry that does not extend its origin's chain
    ├── LocalProtocolError       *we* did something the protocol forbids (a bug, or misuse)
    └── RemoteProtocolError      the *peer* did something the protocol forbids
        ├── HandshakeError       the handshake failed (bad label, signature, untrusted key)
        └── FrameTooLargeError   a peer frame over the session cap (also an OversizeError)

``ValueError`` is kept as a second base of the errors that describe bad input, so
callers that only know the standard library still catch them.
"""

from __future__ import annotations

__all__ = [
    "BadSignatureError",
    "ChainError",
    "ChecksumError",
    "CryptoError",
    "DecryptionError",
    "EncodingError",
    "EntraideError",
    "FrameTooLargeError",
    "HandshakeError",
    "KeyFormatError",
    "LocalProtocolError",
    "NotARecipientError",
    "OversizeError",
    "PassphraseError",
    "PayloadError",
    "RemoteProtocolError",
]


class EntraideError(Exception):
    """Root of every error raised by Entraide."""


class EncodingError(EntraideError, ValueError):
    """Bytes that do not decode to exactly one canonical value."""


class OversizeError(EncodingError):
    """A field, frame or document larger than its cap."""


class KeyFormatError(EntraideError, ValueError):
    """A key text, peer card or key file that does not parse."""


class ChecksumError(KeyFormatError):
    """A peer card whose checksum does not match: most likely a typing mistake."""


class CryptoError(EntraideError):
    """A cryptographic check failed."""


class BadSignatureError(CryptoError):
    """A signature that does not verify under the claimed key."""


class DecryptionError(CryptoError):
    """A ciphertext that does not authenticate under the key tried."""


class NotARecipientError(DecryptionError):
    """An envelope carries no key sealed to this identity."""


class PassphraseError(CryptoError):
    """A sealed key file could not be opened: wrong passphrase, or a damaged file."""


class PayloadError(EntraideError, ValueError):
    """A payload that is not a valid model: bad indicator value, unknown field, ..."""


class ChainError(EntraideError):
    """An entry that does not extend its origin's hash chain (wrong origin, seq or prev)."""


class LocalProtocolError(EntraideError):
    """This side attempted something the protocol forbids in its current state."""


class RemoteProtocolError(EntraideError):
    """The peer sent something the protocol forbids; the session must end."""


class HandshakeError(RemoteProtocolError):
    """The peer failed the handshake: bad label or signature, or a key we do not trust."""


class FrameTooLargeError(RemoteProtocolError, OversizeError):
    """The peer sent a session frame over ``MAX_FRAME_BYTES``; refused before decrypting.

    Both a ``RemoteProtocolError`` (end the session) and an ``OversizeError``.
    """
