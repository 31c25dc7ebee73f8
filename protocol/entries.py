"""Signed entries: the unit of the ledger, their ids, hash chains and fork proofs.

Protocol v2 (docs/protocol.md §3). An entry is a signed *header* and a *body*. The
header is a canonical msgpack array::

    [v, origin, seq, prev, ts, tlp, audience, body_hash, body_len, expires_ms, sig]

``sig`` is Ed25519 by ``origin`` over ``ENTRY_SIG_LABEL || encode([v .. expires_ms])``;
``body_hash`` is BLAKE2b-256 of the body personalised with ``BODY_HASH_PERSON``. The
entry id is the hex BLAKE2b-256 of the header's encoding, so it stays the same when the
body is dropped, and ``prev`` chains headers. On the wire and in ``VerifiedEntry.raw``
an entry is ``encode([header, body])`` with ``body`` nil when this holder has no body.

Invariants:
- A ``VerifiedEntry`` exists only if its bytes are canonical, every field is in
  range, its signature verifies and its body (when present) matches ``body_hash`` and
  ``body_len``: only :func:`sign_entry`, :func:`verify_entry`,
  :meth:`VerifiedEntry.without_body` and :func:`_rebuild_verified` (for bytes that
  ``verify_entry`` accepted in the node's verify worker process, agent/workers/verify.py,
  its only caller) build one; and :func:`_chain_member` for protocol/chainrun.py, which
  hands its entries out only once a valid signature on a later entry authenticates
  them through the hash chain (§3, chain-authenticated runs).
- A header without its body is a valid chain member (§3): it verifies, chains, and has
  the same id as the entry with its body.
- ``audience`` is present exactly when the TLP is encrypted (AMBER, AMBER+STRICT,
  RED); it is strictly ascending, so one set of recipients has one encoding.
- ``prev`` is absent exactly when ``seq == 1``.
- ``expires_ms`` is 0 (the body never expires) or after ``ts``: the instant, resolved
  by the origin (protocol/retention.py) and signed, after which no holder keeps the
  body (§3, retention). A relay cannot change it without breaking the signature.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from protocol.encoding import Limits, decode, encode, pack_trusted
from protocol.errors import ChainError, EncodingError, KeyFormatError, OversizeError
from protocol.keys import KEY_ID_BYTES, Identity, PublicKey

__all__ = [
    "BODY_HASH_PERSON",
    "ENTRY_SIG_LABEL",
    "ENTRY_VERSION",
    "MAX_AUDIENCE",
    "MAX_BODY_BYTES",
    "MAX_ENTRY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_SEQ",
    "TLP",
    "ForkProof",
    "VerifiedEntry",
    "body_hash",
    "check_successor",
    "decode_fork_proof",
    "detect_fork",
    "entry_hash",
    "header_hash",
    "join_entry",
    "sign_entry",
    "split_entry",
    "verify_entry",
    "verify_header",
]

ENTRY_VERSION = 2
ENTRY_SIG_LABEL = b"entraide/entry/v2\x00"
BODY_HASH_PERSON = b"entraide-body-v2"  # BLAKE2b personalisation, 16 bytes (§3)
FORK_LABEL = "entraide/fork/v2"
MAX_BODY_BYTES = 256 * 1024
MAX_AUDIENCE = 256
# A header with the largest audience (256 key ids) is about 2,800 bytes.
MAX_HEADER_BYTES = 4080
# [header, body]: array and two binary headers (at most 1 + 3 + 5 bytes) around them.
MAX_ENTRY_BYTES = MAX_BODY_BYTES + 4096
MAX_SEQ = (1 << 63) - 1
MAX_TS = (1 << 63) - 1
HASH_BYTES = 32
SIG_BYTES = 64

_HEADER_LIMITS = Limits(
    max_bytes=MAX_HEADER_BYTES,
    max_str=16,
    max_bin=64,
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
_SIGNED_FIELDS = b"\x9a"  # msgpack fixarray of 10: the signed fields of a header
_HEADER_FIELDS = 11
_SIG_TAIL = 2 + SIG_BYTES
_NIL = 0xC0


def header_hash(header: bytes) -> bytes:
    """BLAKE2b-256 of a header's encoding; its hex is the entry id (§3)."""
    return hashlib.blake2b(header, digest_size=HASH_BYTES).digest()


def body_hash(body: bytes) -> bytes:
    """BLAKE2b-256 of a body, personalised with ``BODY_HASH_PERSON`` (§3)."""
    return hashlib.blake2b(body, digest_size=HASH_BYTES, person=BODY_HASH_PERSON).digest()


def split_entry(raw: bytes) -> tuple[bytes, bytes | None]:
    """``(header, body)`` of an entry's wire form ``encode([header, body])``, unverified.

    Checks the framing only, strictly: a 2-element array of a binary header and a
    binary body or nil, each in its shortest form, no trailing bytes.

    Raises:
        OversizeError: over ``MAX_ENTRY_BYTES``, or a part over its cap.
        EncodingError: any other framing.
    """
    size = len(raw)
    if size > MAX_ENTRY_BYTES:
        raise OversizeError(f"entry over {MAX_ENTRY_BYTES} bytes")
    if size < 3 or raw[0] != 0x92:
        raise EncodingError("an entry is the array [header, body]")
    header, pos = _read_bin(raw, 1, MAX_HEADER_BYTES, "header")
    if pos >= size:
        raise EncodingError("entry truncated before its body")
    if raw[pos] == _NIL:
        body, pos = None, pos + 1
    else:
        body, pos = _read_bin(raw, pos, MAX_BODY_BYTES, "body")
    if pos != size:
        raise EncodingError("trailing bytes after the entry")
    return header, body


def _read_bin(raw: bytes, pos: int, cap: int, what: str) -> tuple[bytes, int]:
    tag = raw[pos]
    if tag == 0xC4:
        width, floor = 1, 0
    elif tag == 0xC5:
        width, floor = 2, 1 << 8
    elif tag == 0xC6:
        width, floor = 4, 1 << 16
    else:
        raise EncodingError(f"the entry's {what} is a byte string")
    start = pos + 1 + width
    if start > len(raw):
        raise EncodingError(f"entry truncated in its {what}")
    length = int.from_bytes(raw[pos + 1:start], "big")
    if length < floor:
        raise EncodingError(f"the entry's {what} length is not in its shortest form")
    if length > cap:
        raise OversizeError(f"the entry's {what} is over {cap} bytes")
    end = start + length
    if end > len(raw):
        raise EncodingError(f"entry truncated in its {what}")
    return raw[start:end], end


def join_entry(header: bytes, body: bytes | None) -> bytes:
    """The wire form ``encode([header, body])`` of stored parts (not verified here)."""
    return pack_trusted([header, body])


def entry_hash(raw: bytes) -> bytes:
    """The id (as bytes) of an entry in wire form: BLAKE2b-256 of its header.

    Raises:
        EncodingError, OversizeError: see :func:`split_entry`.
    """
    return header_hash(split_entry(raw)[0])


@dataclass(frozen=True, eq=False)
class VerifiedEntry:
    """An entry whose encoding, fields, signature and body (if any) have been checked.

    Build one with :func:`sign_entry`, :func:`verify_entry` or :func:`verify_header`
    only. ``body`` is None when this holder has the header only (the body was dropped
    by retention or erasure, §3). Two instances are equal when their wire bytes are.
    """

    v: int
    origin: PublicKey
    seq: int
    prev: bytes | None
    ts: int
    tlp: TLP
    audience: tuple[bytes, ...] | None
    body_hash: bytes
    body_len: int
    expires_ms: int
    sig: bytes
    header: bytes
    body: bytes | None
    raw: bytes
    hash: bytes
    _token: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFY_TOKEN:
            raise TypeError("VerifiedEntry is built by sign_entry() or verify_entry() only")

    @property
    def id(self) -> str:
        """The entry id: hex BLAKE2b-256 of the encoded header."""
        return self.hash.hex()

    @property
    def has_body(self) -> bool:
        return self.body is not None

    def without_body(self) -> VerifiedEntry:
        """This entry, header only (same id); itself when it has no body."""
        if self.body is None:
            return self
        fields = dict(self.__dict__)
        fields["body"] = None
        fields["raw"] = pack_trusted([self.header, None])
        entry: VerifiedEntry = _new_object(VerifiedEntry)
        _set_attr(entry, "__dict__", fields)
        return entry

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifiedEntry):
            return NotImplemented
        return self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return (f"VerifiedEntry(id={self.id[:16]}…, origin={self.origin.text[:20]}…, "
                f"seq={self.seq}, tlp={self.tlp.value}"
                f"{'' if self.body is not None else ', header only'})")


_new_object = object.__new__
_set_attr = object.__setattr__


def _verified(fields: list[Any], origin: PublicKey, tlp: TLP, header: bytes,
              body: bytes | None, raw: bytes) -> VerifiedEntry:
    """A ``VerifiedEntry`` of a header's 11 decoded fields, for this module's builders.

    Same object as ``VerifiedEntry(..., _VERIFY_TOKEN)``, without the frozen
    dataclass's ``__init__`` (fifteen ``object.__setattr__`` calls, about half the cost
    of rebuilding a verified entry in the node): the instance dict is set at once.
    """
    v, _o, seq, prev, ts, _t, audience, b_hash, b_len, expires_ms, sig = fields
    entry: VerifiedEntry = _new_object(VerifiedEntry)
    _set_attr(entry, "__dict__", {
        "v": v, "origin": origin, "seq": seq, "prev": prev, "ts": ts, "tlp": tlp,
        "audience": None if audience is None else tuple(audience),
        "body_hash": b_hash, "body_len": b_len, "expires_ms": expires_ms, "sig": sig,
        "header": header,
        "body": body, "raw": raw, "hash": header_hash(header), "_token": _VERIFY_TOKEN})
    return entry


def _check_fields(seq: int, prev: bytes | None, ts: int, tlp: TLP,
                  audience: tuple[bytes, ...] | None, b_len: int, expires_ms: int) -> None:
    """Field rules shared by signing and verifying; raises EncodingError."""
    if not 1 <= seq <= MAX_SEQ:
        raise EncodingError("seq must be between 1 and 2^63-1")
    if (prev is None) != (seq == 1):
        raise EncodingError("prev is absent exactly when seq is 1")
    if prev is not None and len(prev) != HASH_BYTES:
        raise EncodingError("prev is a 32-byte hash")
    if not 0 <= ts <= MAX_TS:
        raise EncodingError("ts out of range")
    if not 0 <= b_len <= MAX_BODY_BYTES:
        raise EncodingError(f"body over {MAX_BODY_BYTES} bytes")
    if expires_ms != 0 and not ts < expires_ms <= MAX_TS:
        raise EncodingError("expires_ms is 0 (never) or after ts")
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
    expires_ms: int = 0,
) -> VerifiedEntry:
    """Build and sign the next entry of ``identity``'s log (header and body).

    Args:
        seq: the head's seq + 1 (1 for the first entry).
        prev: the head's id as bytes (None for the first entry).
        now_ms: the author's clock, ms since the epoch.
        audience: sorted recipient key ids (from :func:`protocol.envelope.seal_envelope`)
            for encrypted TLPs, None otherwise.
        body: payload bytes, or the envelope for encrypted TLPs.
        expires_ms: when every holder drops the body (ms since the epoch, after
            ``now_ms``), from :func:`protocol.retention.resolve`; 0 for never.

    Raises:
        EncodingError: a field out of range or inconsistent with the TLP.
    """
    tlp = TLP(tlp)
    body = bytes(body)
    if isinstance(expires_ms, bool) or not isinstance(expires_ms, int):
        raise EncodingError("expires_ms is an integer")
    _check_fields(seq, prev, now_ms, tlp, audience, len(body), expires_ms)
    fields: list[Any] = [ENTRY_VERSION, identity.public_key.raw, seq, prev, now_ms, tlp.value,
                         None if audience is None else list(audience), body_hash(body),
                         len(body), expires_ms]
    # Every field was checked above: no maps, floats or out-of-range integers.
    sig = identity.sign(ENTRY_SIG_LABEL + pack_trusted(fields))
    fields.append(sig)
    header = pack_trusted(fields)
    if len(header) > MAX_HEADER_BYTES:
        raise EncodingError(f"entry header over {MAX_HEADER_BYTES} bytes")
    return _verified(fields, identity.public_key, tlp, header, body,
                     pack_trusted([header, body]))


def verify_entry(raw: bytes) -> VerifiedEntry:
    """Decode and verify one entry from its wire form ``encode([header, body])``.

    A nil body gives a header-only entry: a valid chain member (§3).

    Raises:
        OversizeError: over ``MAX_ENTRY_BYTES`` or a field over its cap.
        EncodingError: not canonical, trailing bytes, unknown version, wrong types,
            fields out of range or inconsistent with the TLP, or a body that does not
            match the header's body hash and length.
        BadSignatureError: the signature does not verify under ``origin``.
    """
    raw = bytes(raw)
    header, body = split_entry(raw)
    return _verify(header, body, raw)


def verify_header(header: bytes) -> VerifiedEntry:
    """Verify an encoded header alone; the entry it gives has no body.

    Raises:
        See :func:`verify_entry`.
    """
    header = bytes(header)
    return _verify(header, None, pack_trusted([header, None]))


def _verify(header: bytes, body: bytes | None, raw: bytes) -> VerifiedEntry:
    value, origin, tlp = _check_unsigned(header, body)
    # ``header`` is canonical (decode re-packed it to the same bytes), so the encoding
    # of the signed fields is ``header`` with a 10-element array header instead of 11 and
    # without the trailing sig (bin 8: c4 40 and 64 bytes): no second packing.
    origin.verify(ENTRY_SIG_LABEL + _SIGNED_FIELDS + header[1:-_SIG_TAIL], value[10])
    return _verified(value, origin, tlp, header, body, raw)


def _check_signature(entry: VerifiedEntry) -> None:
    """Verify the signature of an entry :func:`_chain_member` built (BadSignatureError)."""
    entry.origin.verify(ENTRY_SIG_LABEL + _SIGNED_FIELDS + entry.header[1:-_SIG_TAIL],
                        entry.sig)


def _chain_member(raw: bytes) -> VerifiedEntry:
    """An entry checked in every way but its signature, for protocol/chainrun.py only.

    The caller authenticates it by the hash chain instead: the entry is given out only
    once a later entry of the same origin, whose ``prev`` links back to it, has a valid
    signature (docs/protocol.md §3, chain-authenticated runs). Anywhere else this would
    break the module's invariant (a test keeps it to that one caller).

    Raises:
        See :func:`verify_entry`, except BadSignatureError.
    """
    raw = bytes(raw)
    header, body = split_entry(raw)
    value, origin, tlp = _check_unsigned(header, body)
    return _verified(value, origin, tlp, header, body, raw)


def _check_unsigned(header: bytes, body: bytes | None) -> tuple[list[Any], PublicKey, TLP]:
    """Decode a header and check every rule but its signature; the body against it."""
    value = decode(header, _HEADER_LIMITS)
    if not isinstance(value, list) or len(value) != _HEADER_FIELDS:
        raise EncodingError(f"an entry header is an array of {_HEADER_FIELDS} fields")
    (v, origin_raw, seq, prev, ts, tlp_text, audience_list, b_hash, b_len, expires_ms,
     sig) = value
    if v != ENTRY_VERSION or isinstance(v, bool):
        raise EncodingError(f"unknown entry version {v!r}")
    if not isinstance(origin_raw, bytes):
        raise EncodingError("origin is a byte string")
    origin = _origin_key(origin_raw)
    if not _is_int(seq) or not _is_int(ts) or not _is_int(b_len) or not _is_int(expires_ms):
        raise EncodingError("seq, ts, body_len and expires_ms are integers")
    if prev is not None and not isinstance(prev, bytes):
        raise EncodingError("prev is a byte string")
    if not isinstance(tlp_text, str) or tlp_text not in TLP._value2member_map_:
        raise EncodingError(f"unknown TLP {tlp_text!r}")
    tlp = TLP(tlp_text)
    if audience_list is not None and not isinstance(audience_list, list):
        raise EncodingError("audience is an array")
    audience = None if audience_list is None else tuple(audience_list)
    if not isinstance(b_hash, bytes) or len(b_hash) != HASH_BYTES:
        raise EncodingError("body_hash is a 32-byte hash")
    if not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
        raise EncodingError("sig is a 64-byte string")
    _check_fields(seq, prev, ts, tlp, audience, b_len, expires_ms)
    if body is not None and (len(body) != b_len or body_hash(body) != b_hash):
        raise EncodingError("the body does not match the header's body hash and length")
    return value, origin, tlp


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
        header, body = msgpack.unpackb(raw)
        fields = msgpack.unpackb(header)
        tlp = TLP._value2member_map_[fields[5]]
        origin = _origin_key(fields[1])
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise EncodingError(f"not a verified entry: {exc}") from exc
    return _verified(fields, origin, tlp, header, body, raw)  # type: ignore[arg-type]


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

    Headers chain: a header-only entry is checked like any other.

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
    """Two validly signed, different headers with the same origin and seq.

    Anyone can check it alone: both signatures verify under the same key. A proof
    carries headers only (its entries have no body), so it carries no payload.
    ``a`` is the entry with the smaller hash, so one fork has one proof.
    """

    a: VerifiedEntry
    b: VerifiedEntry

    def __post_init__(self) -> None:
        if self.a.origin != self.b.origin or self.a.seq != self.b.seq:
            raise ChainError("a fork proof pairs two entries of one origin and seq")
        if not self.a.hash < self.b.hash:
            raise ChainError("a fork proof pairs two different entries, smaller hash first")
        object.__setattr__(self, "a", self.a.without_body())
        object.__setattr__(self, "b", self.b.without_body())

    @property
    def origin(self) -> PublicKey:
        return self.a.origin

    @property
    def seq(self) -> int:
        return self.a.seq

    def encode(self) -> bytes:
        """``encode([FORK_LABEL, a.header, b.header])``."""
        return encode([FORK_LABEL, self.a.header, self.b.header])


MAX_FORK_BYTES = 2 * MAX_HEADER_BYTES + 64
_FORK_LIMITS = Limits(max_bytes=MAX_FORK_BYTES, max_str=32,
                      max_bin=MAX_HEADER_BYTES, max_array=3, max_map=0, max_depth=1)


def detect_fork(a: VerifiedEntry, b: VerifiedEntry) -> ForkProof | None:
    """A proof when ``a`` and ``b`` conflict (same origin and seq, different headers)."""
    if a.origin != b.origin or a.seq != b.seq or a.hash == b.hash:
        return None
    return ForkProof(a, b) if a.hash < b.hash else ForkProof(b, a)


def decode_fork_proof(raw: bytes) -> ForkProof:
    """Decode and fully verify a fork proof.

    Raises:
        OversizeError: over ``MAX_FORK_BYTES`` or a header over its cap.
        EncodingError: not a canonical fork proof.
        BadSignatureError: either header's signature fails.
        ChainError: the headers do not conflict (different origin or seq, or equal).
    """
    value = decode(bytes(raw), _FORK_LIMITS)
    if (not isinstance(value, list) or len(value) != 3 or value[0] != FORK_LABEL
            or not isinstance(value[1], bytes) or not isinstance(value[2], bytes)):
        raise EncodingError("not a fork proof")
    return ForkProof(verify_header(value[1]), verify_header(value[2]))
