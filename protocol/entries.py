"""Signed entries: the unit of the ledger, their ids, hash chains and fork proofs.

An entry is a canonical msgpack array (docs/protocol.md §3)::

    [v, origin, seq, prev, ts, tlp, audience, body, sig]

``sig`` is Ed25519 by ``origin`` over ``ENTRY_SIG_LABEL || encode([v .. body])``.
The entry id is the hex BLAKE2b-256 of the whole encoding.

Invariants:
- A ``VerifiedEntry`` exists only if its bytes are canonical, every field is in
  range and its signature verifies: only :func:`sign_entry` and
  :func:`verify_entry` build one, and :func:`_rebuild_verified` for bytes that
  ``verify_entry`` accepted in the node's verify worker process
  (agent/workers/verify.py, its only caller).
- ``audience`` is present exactly when the TLP is encrypted (AMBER, AMBER+STRICT,
  RED); it is strictly ascending, so one set of recipients has one encoding.
- ``prev`` is absent exactly when ``seq == 1``.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from protocol.encoding import Limits, decode, encode, pack_trusted
from protocol.errors import ChainError, EncodingError, KeyFormatError
from protocol.keys import KEY_ID_BYTES, Identity, PublicKey

__all__ = [
    "ENTRY_SIG_LABEL",
    "ENTRY_VERSION",
    "MAX_AUDIENCE",
    "MAX_BODY_BYTES",
    "MAX_ENTRY_BYTES",
    "MAX_SEQ",
    "TLP",
    "ForkProof",
    "VerifiedEntry",
    "check_successor",
    "decode_fork_proof",
    "detect_fork",
    "entry_hash",
    "sign_entry",
    "verify_entry",
]

ENTRY_VERSION = 1
ENTRY_SIG_LABEL = b"entraide/entry/v1\x00"
FORK_LABEL = "entraide/fork/v1"
MAX_BODY_BYTES = 256 * 1024
MAX_AUDIENCE = 256
# Body, plus one 80-byte sealed key per recipient (inside the body), plus headers.
MAX_ENTRY_BYTES = MAX_BODY_BYTES + 4096
MAX_SEQ = (1 << 63) - 1
MAX_TS = (1 << 63) - 1
HASH_BYTES = 32
SIG_BYTES = 64

_ENTRY_LIMITS = Limits(
    max_bytes=MAX_ENTRY_BYTES,
    max_str=16,
    max_bin=MAX_BODY_BYTES,
    max_array=MAX_AUDIENCE,
    max_map=0,
    max_depth=2,
)


class TLP(StrEnum):
    """Traffic Light Protocol 2.0 labels."""

    CLEAR = "CLEAR"
    GREEN = "GREEN"
    AMBER = "AMBER"
    AMBER_STRICT = "AMBER+STRICT"
    RED = "RED"

    @property
    def encrypted(self) -> bool:
        """True for the labels whose body travels in an envelope."""
        return self in (TLP.AMBER, TLP.AMBER_STRICT, TLP.RED)


_VERIFY_TOKEN = object()
_EIGHT_FIELDS = b"\x98"  # msgpack fixarray of 8
_SIG_TAIL = 2 + SIG_BYTES


def entry_hash(raw: bytes) -> bytes:
    """BLAKE2b-256 of an entry's encoding; its hex is the entry id."""
    return hashlib.blake2b(raw, digest_size=HASH_BYTES).digest()


@dataclass(frozen=True, eq=False)
class VerifiedEntry:
    """An entry whose encoding, fields and signature have been checked.

    Build one with :func:`sign_entry` or :func:`verify_entry` only. Two instances
    are equal when their bytes are.
    """

    v: int
    origin: PublicKey
    seq: int
    prev: bytes | None
    ts: int
    tlp: TLP
    audience: tuple[bytes, ...] | None
    body: bytes
    sig: bytes
    raw: bytes
    hash: bytes
    _token: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFY_TOKEN:
            raise TypeError("VerifiedEntry is built by sign_entry() or verify_entry() only")

    @property
    def id(self) -> str:
        """The entry id: hex BLAKE2b-256 of the encoded entry."""
        return self.hash.hex()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifiedEntry):
            return NotImplemented
        return self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return (f"VerifiedEntry(id={self.id[:16]}…, origin={self.origin.text[:20]}…, "
                f"seq={self.seq}, tlp={self.tlp.value})")


_new_object = object.__new__
_set_attr = object.__setattr__


def _verified(v: int, origin: PublicKey, seq: int, prev: bytes | None, ts: int, tlp: TLP,
              audience: tuple[bytes, ...] | None, body: bytes, sig: bytes, raw: bytes,
              hash: bytes) -> VerifiedEntry:
    """A ``VerifiedEntry`` with these fields, for this module's builders only.

    Same object as ``VerifiedEntry(..., _VERIFY_TOKEN)``, without the frozen
    dataclass's ``__init__`` (twelve ``object.__setattr__`` calls, about half the cost
    of rebuilding a verified entry in the node): the instance dict is set at once.
    """
    entry: VerifiedEntry = _new_object(VerifiedEntry)
    _set_attr(entry, "__dict__", {
        "v": v, "origin": origin, "seq": seq, "prev": prev, "ts": ts, "tlp": tlp,
        "audience": audience, "body": body, "sig": sig, "raw": raw, "hash": hash,
        "_token": _VERIFY_TOKEN})
    return entry


def _signed_fields(origin: bytes, seq: int, prev: bytes | None, ts: int, tlp: TLP,
                   audience: tuple[bytes, ...] | None, body: bytes) -> list[Any]:
    return [ENTRY_VERSION, origin, seq, prev, ts, tlp.value,
            None if audience is None else list(audience), body]


def _check_fields(seq: int, prev: bytes | None, ts: int, tlp: TLP,
                  audience: tuple[bytes, ...] | None, body: bytes) -> None:
    """Field rules shared by signing and verifying; raises EncodingError."""
    if not 1 <= seq <= MAX_SEQ:
        raise EncodingError("seq must be between 1 and 2^63-1")
    if (prev is None) != (seq == 1):
        raise EncodingError("prev is absent exactly when seq is 1")
    if prev is not None and len(prev) != HASH_BYTES:
        raise EncodingError("prev is a 32-byte hash")
    if not 0 <= ts <= MAX_TS:
        raise EncodingError("ts out of range")
    if len(body) > MAX_BODY_BYTES:
        raise EncodingError(f"body over {MAX_BODY_BYTES} bytes")
    if tlp.encrypted:
        if audience is None or not audience:
            raise EncodingError(f"{tlp.value} entries carry an audience")
        if len(audience) > MAX_AUDIENCE:
            raise EncodingError(f"audience over {MAX_AUDIENCE} recipients")
        if any(not isinstance(k, bytes) or len(k) != KEY_ID_BYTES for k in audience):
            raise EncodingError(f"audience key ids are {KEY_ID_BYTES} bytes")
        if any(a >= b for a, b in itertools.pairwise(audience)):
            raise EncodingError("audience must be strictly ascending")
    elif audience is not None:
        raise EncodingError(f"{tlp.value} entries carry no audience")


def sign_entry(
    identity: Identity,
    *,
    seq: int,
    prev: bytes | None,
    now_ms: int,
    tlp: TLP,
    audience: tuple[bytes, ...] | None,
    body: bytes,
) -> VerifiedEntry:
    """Build and sign the next entry of ``identity``'s log.

    Args:
        seq: the head's seq + 1 (1 for the first entry).
        prev: the head's hash (None for the first entry).
        now_ms: the author's clock, ms since the epoch.
        audience: sorted recipient key ids (from :func:`protocol.envelope.seal_envelope`)
            for encrypted TLPs, None otherwise.
        body: payload bytes, or the envelope for encrypted TLPs.

    Raises:
        EncodingError: a field out of range or inconsistent with the TLP.
    """
    tlp = TLP(tlp)
    _check_fields(seq, prev, now_ms, tlp, audience, body)
    fields = _signed_fields(identity.public_key.raw, seq, prev, now_ms, tlp, audience, body)
    # Every field was checked above: no maps, floats or out-of-range integers.
    sig = identity.sign(ENTRY_SIG_LABEL + pack_trusted(fields))
    raw = pack_trusted([*fields, sig])
    if len(raw) > MAX_ENTRY_BYTES:
        raise EncodingError(f"entry over {MAX_ENTRY_BYTES} bytes")
    return _verified(ENTRY_VERSION, identity.public_key, seq, prev, now_ms, tlp, audience,
                     body, sig, raw, entry_hash(raw))


def verify_entry(raw: bytes) -> VerifiedEntry:
    """Decode and verify one entry from its canonical bytes.

    Raises:
        OversizeError: over ``MAX_ENTRY_BYTES`` or a field over its cap.
        EncodingError: not canonical, trailing bytes, unknown version, wrong types,
            fields out of range or inconsistent with the TLP.
        BadSignatureError: the signature does not verify under ``origin``.
    """
    raw = bytes(raw)
    value = decode(raw, _ENTRY_LIMITS)
    if not isinstance(value, list) or len(value) != 9:
        raise EncodingError("an entry is an array of 9 fields")
    v, origin_raw, seq, prev, ts, tlp_text, audience_list, body, sig = value
    if v != ENTRY_VERSION or isinstance(v, bool):
        raise EncodingError(f"unknown entry version {v!r}")
    if not isinstance(origin_raw, bytes):
        raise EncodingError("origin is a byte string")
    origin = _origin_key(origin_raw)
    if not _is_int(seq) or not _is_int(ts):
        raise EncodingError("seq and ts are integers")
    if prev is not None and not isinstance(prev, bytes):
        raise EncodingError("prev is a byte string")
    if not isinstance(tlp_text, str) or tlp_text not in TLP._value2member_map_:
        raise EncodingError(f"unknown TLP {tlp_text!r}")
    tlp = TLP(tlp_text)
    if audience_list is not None and not isinstance(audience_list, list):
        raise EncodingError("audience is an array")
    audience = None if audience_list is None else tuple(audience_list)
    if not isinstance(body, bytes) or not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
        raise EncodingError("body and a 64-byte sig are byte strings")
    _check_fields(seq, prev, ts, tlp, audience, body)
    # ``raw`` is canonical (decode re-packed it to the same bytes), so the encoding of
    # the signed fields is ``raw`` with an 8-element array header instead of 9 and
    # without the trailing sig (bin 8: c4 40 and 64 bytes): no second packing.
    signed = ENTRY_SIG_LABEL + _EIGHT_FIELDS + raw[1:-_SIG_TAIL]
    origin.verify(signed, sig)
    return _verified(v, origin, seq, prev, ts, tlp, audience, body, sig, raw, entry_hash(raw))


def _rebuild_verified(raw: bytes) -> VerifiedEntry:
    """The ``VerifiedEntry`` of ``raw``, which :func:`verify_entry` already accepted in
    another process, built without checking it again.

    Internal, for one caller: the node's verify worker (agent/workers/verify.py) runs
    ``verify_entry`` on a batch in a worker process and answers which entries passed;
    the node holds the very bytes it sent and rebuilds the entries here, so a signature
    is checked once, on the other core. Called on bytes that were not verified, it
    would break this module's invariant: nothing else may call it (a test keeps it so).

    Raises:
        EncodingError: ``raw`` is not an entry at all (a caller bug, not hostile input).
    """
    try:
        v, origin_raw, seq, prev, ts, tlp_text, audience, body, sig = msgpack.unpackb(raw)
        tlp = TLP._value2member_map_[tlp_text]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise EncodingError(f"not a verified entry: {exc}") from exc
    return _verified(v, _origin_key(origin_raw), seq, prev, ts, tlp,  # type: ignore[arg-type]
                     None if audience is None else tuple(audience), body, sig, raw,
                     entry_hash(raw))


# Origins are few (the federation's members) and checking a key's point costs as much
# as verifying a signature, so checked keys are kept; bounded against hostile input.
_KEY_CACHE: dict[bytes, PublicKey] = {}
_KEY_CACHE_MAX = 4096


def _origin_key(raw: bytes) -> PublicKey:
    key = _KEY_CACHE.get(raw)
    if key is None:
        try:
            key = PublicKey(raw)
        except KeyFormatError as exc:
            raise EncodingError(f"bad origin key: {exc}") from exc
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()
        _KEY_CACHE[raw] = key
    return key


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_successor(head: tuple[int, bytes] | None, entry: VerifiedEntry) -> None:
    """Check that ``entry`` is the next link after ``head`` in its origin's chain.

    Args:
        head: ``(seq, hash)`` of the origin's last entry, or None when it has none.

    Raises:
        ChainError: wrong seq, or ``prev`` is not the head's hash.
    """
    if head is None:
        if entry.seq != 1:
            raise ChainError(f"expected seq 1, got {entry.seq}")
        return
    head_seq, head_hash = head
    if entry.seq != head_seq + 1:
        raise ChainError(f"expected seq {head_seq + 1}, got {entry.seq}")
    if entry.prev != head_hash:
        raise ChainError(f"seq {entry.seq}: prev does not match the hash of seq {head_seq}")


@dataclass(frozen=True)
class ForkProof:
    """Two validly signed, different entries with the same origin and seq.

    Anyone can check it alone: both signatures verify under the same key.
    ``a`` is the entry with the smaller hash, so one fork has one proof.
    """

    a: VerifiedEntry
    b: VerifiedEntry

    def __post_init__(self) -> None:
        if self.a.origin != self.b.origin or self.a.seq != self.b.seq:
            raise ChainError("a fork proof pairs two entries of one origin and seq")
        if not self.a.hash < self.b.hash:
            raise ChainError("a fork proof pairs two different entries, smaller hash first")

    @property
    def origin(self) -> PublicKey:
        return self.a.origin

    @property
    def seq(self) -> int:
        return self.a.seq

    def encode(self) -> bytes:
        """``encode([FORK_LABEL, a.raw, b.raw])``."""
        return encode([FORK_LABEL, self.a.raw, self.b.raw])


_FORK_LIMITS = Limits(max_bytes=2 * MAX_ENTRY_BYTES + 64, max_str=32,
                      max_bin=MAX_ENTRY_BYTES, max_array=3, max_map=0, max_depth=1)


def detect_fork(a: VerifiedEntry, b: VerifiedEntry) -> ForkProof | None:
    """A proof when ``a`` and ``b`` conflict (same origin and seq, different bytes)."""
    if a.origin != b.origin or a.seq != b.seq or a.hash == b.hash:
        return None
    return ForkProof(a, b) if a.hash < b.hash else ForkProof(b, a)


def decode_fork_proof(raw: bytes) -> ForkProof:
    """Decode and fully verify a fork proof.

    Raises:
        EncodingError: not a canonical fork proof.
        BadSignatureError: either entry's signature fails.
        ChainError: the entries do not conflict (different origin or seq, or equal).
    """
    value = decode(bytes(raw), _FORK_LIMITS)
    if (not isinstance(value, list) or len(value) != 3 or value[0] != FORK_LABEL
            or not isinstance(value[1], bytes) or not isinstance(value[2], bytes)):
        raise EncodingError("not a fork proof")
    return ForkProof(verify_entry(value[1]), verify_entry(value[2]))
