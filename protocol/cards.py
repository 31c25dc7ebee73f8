"""Peer cards: one line an admin hands to another admin out of band.

A card carries a node's name, its Ed25519 public key and, optionally, the base URL
its peer listener is reached at (docs/protocol.md, "Peer cards")::

    entraide1.<name>.<key>.<url>.<checksum>

- ``name``: ``^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`` (:data:`NAME_PATTERN`);
- ``key``: the 32 raw key bytes in base64url without padding (43 characters);
- ``url``: base64url of the URL's UTF-8 bytes, or empty when the card has no URL;
- ``checksum``: 8 lowercase hex characters, the first 4 bytes of
  ``BLAKE2b-256(b"entraide-card-v1\\x00" + <everything before the last dot>)``.

None of the fields can contain a dot, so a card splits into exactly five parts
whatever its key or URL holds (both contain colons in their usual text forms).

Invariants:
- ``parse_card(encode_card(card)) == card`` and ``encode_card(parse_card(text)) ==
  text.strip()``: one card has one text form (no case folding, no optional padding).
- A card whose checksum does not match raises :class:`ChecksumError`, so any
  single mistyped character is refused rather than silently pinning a wrong key.
- Nothing here does I/O; only stdlib, nacl (through ``PublicKey``) are used.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass

from protocol.errors import ChecksumError, KeyFormatError
from protocol.keys import PublicKey, b64url_decode, b64url_encode

__all__ = [
    "CARD_PREFIX",
    "MAX_CARD_CHARS",
    "MAX_URL_BYTES",
    "NAME_PATTERN",
    "NAME_RE",
    "PEER_PATH",
    "PeerCard",
    "card_checksum",
    "dial_url",
    "encode_card",
    "parse_card",
    "validate_peer_name",
    "validate_peer_url",
]

CARD_PREFIX = "entraide1"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"
NAME_RE = re.compile(NAME_PATTERN, re.ASCII)
"""Use with ``fullmatch``: peer names appear in audiences, URL paths and file names."""

MAX_URL_BYTES = 2048
_KEY_CHARS = 43  # base64url of 32 bytes, no padding
_CHECKSUM_CHARS = 8
_CHECKSUM_DOMAIN = b"entraide-card-v1\x00"
# prefix + name + key + base64url(url) + checksum + 4 dots
MAX_CARD_CHARS = (
    len(CARD_PREFIX) + 32 + _KEY_CHARS + (MAX_URL_BYTES * 4 + 2) // 3 + _CHECKSUM_CHARS + 4
)

PEER_PATH = "/peer/v1"
"""Path a dialer appends to a card's base URL to reach the peer WebSocket endpoint."""

_HEX = frozenset("0123456789abcdef")


def validate_peer_name(name: str) -> str:
    """Return ``name`` if it is a valid peer name, else raise.

    Raises:
        KeyFormatError: not a string matching :data:`NAME_PATTERN`.
    """
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
        raise KeyFormatError(
            f"bad peer name {shown}: 1 to 32 characters among A-Z a-z 0-9 _ -, "
            "starting with a letter or digit"
        )
    return name


def validate_peer_url(url: str) -> str:
    """Return ``url`` unchanged if it is an acceptable peer base URL, else raise.

    Accepted: ``http`` or ``https``, a host, an optional port and path; at most
    :data:`MAX_URL_BYTES` bytes of UTF-8; no whitespace or control characters, no
    user-info, query or fragment (a dialer appends :data:`PEER_PATH` to it).

    Raises:
        KeyFormatError: anything else.
    """
    if not isinstance(url, str) or not url:
        raise KeyFormatError("a peer URL must be a non-empty string")
    if len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
        raise KeyFormatError(f"peer URL longer than {MAX_URL_BYTES} bytes")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise KeyFormatError("peer URL contains whitespace or control characters")
    try:
        url.encode("utf-8")
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except (ValueError, UnicodeError) as exc:
        raise KeyFormatError(f"bad peer URL {url[:80]!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not url.lower().startswith(parts.scheme + "://"):
        raise KeyFormatError(f"peer URL must start with http:// or https://, not {url[:80]!r}")
    if not parts.hostname:
        raise KeyFormatError(f"peer URL has no host: {url[:80]!r}")
    if parts.username is not None or parts.password is not None:
        raise KeyFormatError("peer URL must not carry a user name or password")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise KeyFormatError("peer URL must not carry a query or fragment")
    if port == 0:
        raise KeyFormatError("peer URL port must be 1-65535")
    return url


def dial_url(base_url: str) -> str:
    """The peer endpoint a dialer connects to: ``base_url`` without trailing ``/``
    followed by :data:`PEER_PATH`."""
    return base_url.rstrip("/") + PEER_PATH


@dataclass(frozen=True)
class PeerCard:
    """What a card says: a name, a pinned key and, optionally, a base URL.

    Raises (on construction):
        KeyFormatError: bad name, a key that is not a ``PublicKey``, or a bad URL.
    """

    name: str
    key: PublicKey
    url: str | None = None

    def __post_init__(self) -> None:
        validate_peer_name(self.name)
        if not isinstance(self.key, PublicKey):
            raise KeyFormatError("a peer card's key must be a PublicKey")
        if self.url is not None:
            validate_peer_url(self.url)


def card_checksum(body: str) -> str:
    """The 8-hex-character checksum of a card's text before its last dot."""
    digest = hashlib.blake2b(_CHECKSUM_DOMAIN + body.encode("ascii"), digest_size=32).digest()
    return digest[: _CHECKSUM_CHARS // 2].hex()


def encode_card(card: PeerCard) -> str:
    """The one text form of ``card`` (ASCII, no whitespace)."""
    url_field = "" if card.url is None else b64url_encode(card.url.encode("utf-8"))
    body = ".".join((CARD_PREFIX, card.name, b64url_encode(card.key.raw), url_field))
    return f"{body}.{card_checksum(body)}"


def parse_card(text: str) -> PeerCard:
    """Parse a card; whitespace around it is ignored.

    Raises:
        ChecksumError: the card is well formed but its checksum does not match,
            which almost always means it was mistyped or truncated.
        KeyFormatError: not a card at all, an unknown version, a bad name, key or URL.
    """
    if not isinstance(text, str):
        raise KeyFormatError("a peer card is text")
    text = text.strip()
    if len(text) > MAX_CARD_CHARS:
        raise KeyFormatError(f"peer card longer than {MAX_CARD_CHARS} characters")
    if not text.isascii():
        raise KeyFormatError("peer card contains non-ASCII characters")
    parts = text.split(".")
    if len(parts) != 5 or not parts[0].startswith("entraide"):
        raise KeyFormatError(
            "not an Entraide peer card (expected entraide1.<name>.<key>.<url>.<checksum>)"
        )
    if parts[0] != CARD_PREFIX:
        raise KeyFormatError(f"unsupported peer card version {parts[0][:16]!r}")
    _, name, key_field, url_field, checksum = parts
    if len(checksum) != _CHECKSUM_CHARS or not set(checksum) <= _HEX:
        raise KeyFormatError("peer card checksum must be 8 lowercase hex characters")
    if card_checksum(text[: text.rfind(".")]) != checksum:
        raise ChecksumError("peer card checksum does not match: the card was mistyped or cut")
    # The checksum matched, so what follows only fails on a card built wrong on purpose.
    validate_peer_name(name)
    if len(key_field) != _KEY_CHARS:
        raise KeyFormatError("peer card key must be 43 base64url characters")
    key = PublicKey(b64url_decode(key_field))
    url: str | None = None
    if url_field:
        try:
            url = b64url_decode(url_field).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KeyFormatError("peer card URL is not UTF-8") from exc
    return PeerCard(name=name, key=key, url=url)
