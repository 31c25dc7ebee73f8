"""Node identities, public keys, fingerprints and key files.

A node is one Ed25519 key pair. Its X25519 key, used to open envelopes, is derived
from it with libsodium's ed25519→curve25519 conversion, so one public key is pinned
per node (docs/protocol.md §1).

Invariants:
- ``PublicKey`` always holds exactly 32 bytes that libsodium accepts as an Ed25519
  point; it compares in constant time and hashes by value.
- ``Identity`` never shows secret bytes in ``repr``/``str``, and no error message
  built here contains them.
- Randomness is never drawn here: seeds, salts and nonces are passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import ClassVar

import nacl.bindings
import nacl.exceptions
import nacl.pwhash.argon2id
import nacl.secret
import nacl.signing

from protocol.errors import BadSignatureError, KeyFormatError, PassphraseError

__all__ = [
    "KEY_ID_BYTES",
    "Identity",
    "PublicKey",
    "b64url_decode",
    "b64url_encode",
    "decode_key_file",
    "encode_key_file",
    "key_file_is_sealed",
]

KEY_ID_BYTES = 8
_KEY_TEXT_PREFIX = "ed25519:"
_KEY_FILE_PLAIN = "entraide-key-v1:plain:"
_KEY_FILE_SEALED = "entraide-key-v1:argon2id:"


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64url_encode`.

    Raises:
        KeyFormatError: characters outside the alphabet, padding, or a form that
            does not re-encode to the same text (non-zero trailing bits).
    """
    if not text or any(c not in _B64URL_ALPHABET for c in text) or len(text) % 4 == 1:
        raise KeyFormatError("not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError("not base64url without padding") from exc
    if b64url_encode(data) != text:
        raise KeyFormatError("non-canonical base64url")
    return data


_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class PublicKey:
    """An Ed25519 public key: a node's pinned identity."""

    SIZE: ClassVar[int] = 32
    __slots__ = ("_raw", "_verify_key")

    def __init__(self, raw: bytes) -> None:
        """Wrap 32 raw bytes.

        Raises:
            KeyFormatError: wrong length, or not a valid Ed25519 point.
        """
        if not isinstance(raw, bytes) or len(raw) != self.SIZE:
            raise KeyFormatError(f"an Ed25519 public key is {self.SIZE} bytes")
        try:
            self._verify_key = nacl.signing.VerifyKey(raw)
            # Rejects small-order and non-canonical points, so one key has one text form.
            nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(raw)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise KeyFormatError("not a valid Ed25519 public key") from exc
        self._raw = raw

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """Parse ``ed25519:<base64url>``.

        Raises:
            KeyFormatError: missing prefix, bad base64url, wrong length or bad point.
        """
        if not isinstance(text, str) or not text.startswith(_KEY_TEXT_PREFIX):
            raise KeyFormatError("a public key is written 'ed25519:<base64url>'")
        return cls(b64url_decode(text[len(_KEY_TEXT_PREFIX) :]))

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def text(self) -> str:
        """``ed25519:`` + base64url, the form admins copy and configs hold."""
        return _KEY_TEXT_PREFIX + b64url_encode(self._raw)

    @property
    def fingerprint(self) -> str:
        """20 hex chars of BLAKE2b-256(key), in groups of 4, to read over the phone."""
        digest = hashlib.blake2b(self._raw, digest_size=32).hexdigest()[:20]
        return " ".join(digest[i : i + 4] for i in range(0, 20, 4))

    @property
    def key_id(self) -> bytes:
        """Short recipient id used in envelopes and audiences: BLAKE2b-256(key)[:8]."""
        return hashlib.blake2b(self._raw, digest_size=32).digest()[:KEY_ID_BYTES]

    @property
    def x25519(self) -> bytes:
        """The Curve25519 public key derived from this Ed25519 key."""
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self._raw)

    def verify(self, message: bytes, signature: bytes) -> bytes:
        """Check a detached signature; return the message it covers.

        Raises:
            BadSignatureError: the signature does not verify under this key.
        """
        try:
            self._verify_key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError,
                ValueError, TypeError) as exc:
            raise BadSignatureError("signature does not verify") from exc
        return message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.text!r})"

    __str__ = __repr__


class Identity:
    """A node's Ed25519 key pair. Secret bytes never appear in repr, str or errors."""

    SEED_SIZE: ClassVar[int] = 32
    __slots__ = ("_public", "_secret", "_signing_key")

    def __init__(self, seed: bytes) -> None:
        """Build from a 32-byte seed (the caller draws it from a CSPRNG).

        Raises:
            KeyFormatError: the seed is not 32 bytes.
        """
        if not isinstance(seed, bytes) or len(seed) != self.SEED_SIZE:
            raise KeyFormatError(f"an identity seed is {self.SEED_SIZE} bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self._secret: bytes = self._signing_key._signing_key  # seed || pk, libsodium's layout
        self._public = PublicKey(bytes(self._signing_key.verify_key))

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def seed(self) -> bytes:
        """The secret seed. Only the key-file writer should need this."""
        return bytes(self._signing_key)

    @property
    def x25519_secret(self) -> bytes:
        """The Curve25519 secret key derived from this identity (for envelopes)."""
        return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(self._secret)

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature of ``message``."""
        # The binding directly: SigningKey.sign wraps the same call in a SignedMessage
        # built and taken apart again (~0.7 us of ~20 per signature here).
        return nacl.bindings.crypto_sign(message, self._secret)[:nacl.bindings.crypto_sign_BYTES]

    def __repr__(self) -> str:
        return f"Identity(public_key={self._public.text!r})"

    __str__ = __repr__


# --- key files -------------------------------------------------------------------


@dataclass(frozen=True)
class _KdfLimits:
    opslimit: int
    memlimit: int


# Moderate limits: ~0.7 s and 256 MiB on a laptop, paid once at start-up.
DEFAULT_KDF = _KdfLimits(nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
                         nacl.pwhash.argon2id.MEMLIMIT_MODERATE)
_MAX_OPSLIMIT = 16
_MAX_MEMLIMIT = 1 << 30


def encode_key_file(
    identity: Identity,
    passphrase: bytes | None = None,
    *,
    salt: bytes = b"",
    nonce: bytes = b"",
    opslimit: int = DEFAULT_KDF.opslimit,
    memlimit: int = DEFAULT_KDF.memlimit,
) -> bytes:
    """The bytes of ``node.key``: one text line, sealed when a passphrase is given.

    Plain: ``entraide-key-v1:plain:<b64url seed>``. Sealed:
    ``entraide-key-v1:argon2id:<ops>:<mem>:<b64url salt>:<b64url nonce||box>``
    where the box is SecretBox(seed) under argon2id(passphrase, salt).

    Args:
        salt: 16 random bytes, required with a passphrase.
        nonce: 24 random bytes, required with a passphrase.

    Raises:
        KeyFormatError: salt or nonce of the wrong size.
    """
    if passphrase is None:
        return (_KEY_FILE_PLAIN + b64url_encode(identity.seed) + "\n").encode()
    if (len(salt) != nacl.pwhash.argon2id.SALTBYTES
            or len(nonce) != nacl.secret.SecretBox.NONCE_SIZE):
        raise KeyFormatError("sealing a key file needs a 16-byte salt and a 24-byte nonce")
    key = nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit=opslimit, memlimit=memlimit)
    box = nacl.secret.SecretBox(key).encrypt(identity.seed, nonce)
    fields = [str(opslimit), str(memlimit), b64url_encode(salt), b64url_encode(bytes(box))]
    return (_KEY_FILE_SEALED + ":".join(fields) + "\n").encode()


def key_file_is_sealed(data: bytes) -> bool:
    """True when ``data`` is a passphrase-sealed key file."""
    return data.startswith(_KEY_FILE_SEALED.encode())


def decode_key_file(data: bytes, passphrase: bytes | None = None) -> Identity:
    """Read ``node.key`` bytes back into an identity.

    Raises:
        KeyFormatError: not a key file, or damaged beyond parsing.
        PassphraseError: sealed, and the passphrase is missing or wrong.
    """
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise KeyFormatError("not an Entraide key file") from exc
    if text.startswith(_KEY_FILE_PLAIN):
        return Identity(b64url_decode(text[len(_KEY_FILE_PLAIN) :]))
    if not text.startswith(_KEY_FILE_SEALED):
        raise KeyFormatError("not an Entraide key file")
    parts = text[len(_KEY_FILE_SEALED) :].split(":")
    if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
        raise KeyFormatError("damaged sealed key file")
    opslimit, memlimit = int(parts[0]), int(parts[1])
    if not (1 <= opslimit <= _MAX_OPSLIMIT and 8192 <= memlimit <= _MAX_MEMLIMIT):
        raise KeyFormatError("sealed key file asks for unreasonable argon2id limits")
    salt, box = b64url_decode(parts[2]), b64url_decode(parts[3])
    if len(salt) != nacl.pwhash.argon2id.SALTBYTES:
        raise KeyFormatError("damaged sealed key file")
    if passphrase is None:
        raise PassphraseError("the key file is sealed: a passphrase is needed")
    key = nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit=opslimit, memlimit=memlimit)
    try:
        seed = nacl.secret.SecretBox(key).decrypt(box)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise PassphraseError("wrong passphrase, or a damaged key file") from exc
    return Identity(seed)
