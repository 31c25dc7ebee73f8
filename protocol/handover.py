"""Key rotation: the hand-over entry (docs/protocol.md §9 "Key rotation").

A node that changes its key writes, as the last entry of its old key's chain, a
:class:`Handover` payload signed (as every entry) by the old key, naming the new key
and carrying the new key's *countersignature* over both keys. Its peers, seeing it in
the chain of an origin they trust, trust the new key in the old one's place; the old
key stays trusted for its chain up to the hand-over's seq (its entries keep
verifying, each under the key that signed it), and nothing it signs later is
trusted. The new key's chain starts at seq 1.

Invariants:
- The countersignature is Ed25519 by the new key over
  ``"entraide-handover-v1\\0" || old key (32 bytes) || new key (32 bytes)``: the new
  key consents to succeed exactly that old key; the old key's entry signature
  consents to be succeeded by exactly that new key.
- A hand-over is plaintext (CLEAR or GREEN): every member must read it to follow.
- Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.entries import TLP, VerifiedEntry
from protocol.errors import BadSignatureError, EntraideError, KeyFormatError, PayloadError
from protocol.keys import Identity, PublicKey, b64url_decode, b64url_encode

__all__ = [
    "HANDOVER_DOMAIN",
    "HANDOVER_KIND",
    "Handover",
    "HandoverError",
    "check_handover",
    "countersign",
    "handover_message",
]

HANDOVER_KIND = "handover"
HANDOVER_DOMAIN = b"entraide-handover-v1\x00"

_KEY_TEXT = r"^ed25519:[A-Za-z0-9_-]{43}$"
_SIG_TEXT = r"^[A-Za-z0-9_-]{86}$"


class HandoverError(PayloadError):
    """A hand-over that does not hold: bad countersignature, same key, encrypted, or
    not a hand-over at all."""


class Handover(BaseModel):
    """The old key hands its place to ``new_key`` (countersigned by it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: Literal["handover"] = "handover"
    new_key: Annotated[str, Field(strict=True, pattern=_KEY_TEXT)]
    countersig: Annotated[str, Field(strict=True, pattern=_SIG_TEXT)]


def handover_message(old: PublicKey, new: PublicKey) -> bytes:
    """The bytes the new key countersigns."""
    return HANDOVER_DOMAIN + old.raw + new.raw


def countersign(new: Identity, old: PublicKey) -> Handover:
    """The hand-over payload from ``old`` to ``new``'s key, countersigned by ``new``.

    Raises:
        HandoverError: ``new`` is ``old``.
    """
    if new.public_key == old:
        raise HandoverError("a key cannot hand over to itself")
    sig = new.sign(handover_message(old, new.public_key))
    return Handover(new_key=new.public_key.text, countersig=b64url_encode(sig))


def check_handover(entry: VerifiedEntry, payload: Handover) -> PublicKey:
    """Check that ``entry`` (already verified: signed by its origin) is a valid
    hand-over carrying ``payload``, and return the new key.

    Raises:
        HandoverError: encrypted, the same key, a new key that is not a valid point,
            or a countersignature that does not verify.
    """
    if entry.tlp not in (TLP.CLEAR, TLP.GREEN):
        raise HandoverError("a hand-over must be CLEAR or GREEN, for every member to read")
    try:
        new = PublicKey.from_text(payload.new_key)
        sig = b64url_decode(payload.countersig)
    except (KeyFormatError, EntraideError) as exc:
        raise HandoverError(f"hand-over: {exc}") from exc
    if new == entry.origin:
        raise HandoverError("a key cannot hand over to itself")
    try:
        new.verify(handover_message(entry.origin, new), sig)
    except BadSignatureError as exc:
        raise HandoverError("the new key's countersignature does not verify") from exc
    return new
