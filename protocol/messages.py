"""Gossip messages: what two peers say to each other inside a session (docs/protocol.md §8).

Every message is one canonical value (protocol.encoding), an array whose first
element is the message kind::

    HAVE     [1, digest]                              digest only: "are we in sync?"
    HAVE     [1, digest, [[kid, seq, head]...], [kid...]]   full version vector, forked origins
    WANT     [2, [[kid, from_seq, to_seq]...]]        ranges of an origin's log, inclusive
    ENTRIES  [3, push, [raw...]]                      entry bytes; push: eager, else a reply
    IHAVE    [4, [[kid, seq]...]]                     "my log of kid reaches seq"
    GRAFT    [5]                                      "push to me eagerly"
    PRUNE    [6]                                      "stop pushing to me, announce instead"
    FORK     [7, proof]                               ForkProof.encode() bytes
    PING     [8, token]  /  PONG [9, token]           8-byte token echoed
    BEACON   [10, root_kid, round, hops]              broadcast-tree root announcement

Origins are named by their 8-byte key id (``PublicKey.key_id``); entries carry the
full key, so a receiver learns it with the first entry. ``head`` is the first 16
bytes of the hash of the origin's last entry; ``digest`` is 16 bytes.

Invariants:
- ``decode_message`` accepts exactly the bytes ``encode_message`` produces for some
  message, and raises only :class:`~protocol.errors.EncodingError` (or its subclass
  :class:`~protocol.errors.OversizeError`): never a msgpack, Key or Index error.
- Every list has a cap, and the whole message is at most ``MAX_MESSAGE_BYTES``.
- Message objects are frozen and validated when built, so a message that exists can
  be encoded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from protocol.encoding import Limits, decode
from protocol.entries import (
    MAX_AUDIENCE,
    MAX_ENTRY_BYTES,
    MAX_FORK_BYTES,
    MAX_SEQ,
    header_hash,
    split_entry,
)
from protocol.errors import EncodingError, OversizeError
from protocol.keys import KEY_ID_BYTES

__all__ = [
    "DIGEST_BYTES",
    "HEAD_BYTES",
    "MAX_BATCH",
    "MAX_FORKED",
    "MAX_HOPS",
    "MAX_IHAVE",
    "MAX_MESSAGE_BYTES",
    "MAX_VECTOR",
    "MAX_WANT_RANGES",
    "MAX_WANT_SPAN",
    "PING_TOKEN_BYTES",
    "Announcement",
    "Beacon",
    "Entries",
    "EntryHeader",
    "Fork",
    "Graft",
    "Have",
    "IHave",
    "Kind",
    "Message",
    "Ping",
    "Pong",
    "Prune",
    "VectorItem",
    "Want",
    "WantRange",
    "decode_message",
    "encode_message",
    "message_kind",
    "peek_entry",
]

MAX_MESSAGE_BYTES = 1 << 20
MAX_VECTOR = 4096
MAX_FORKED = 1024
MAX_WANT_RANGES = 1024
MAX_WANT_SPAN = 1 << 16
MAX_BATCH = 1024
MAX_IHAVE = 4096
DIGEST_BYTES = 16
HEAD_BYTES = 16
PING_TOKEN_BYTES = 8
MAX_HOPS = 1024
_LIMITS = Limits(
    max_bytes=MAX_MESSAGE_BYTES,
    max_str=0,
    max_bin=max(MAX_FORK_BYTES, MAX_ENTRY_BYTES),
    max_array=max(MAX_VECTOR, MAX_IHAVE, MAX_BATCH, MAX_WANT_RANGES, MAX_FORKED),
    max_map=0,
    max_depth=3,
)


class Kind(IntEnum):
    """The first element of every message."""

    HAVE = 1
    WANT = 2
    ENTRIES = 3
    IHAVE = 4
    GRAFT = 5
    PRUNE = 6
    FORK = 7
    PING = 8
    PONG = 9
    BEACON = 10


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_kid(kid: object, what: str) -> None:
    if not isinstance(kid, bytes) or len(kid) != KEY_ID_BYTES:
        raise EncodingError(f"{what}: an origin is an {KEY_ID_BYTES}-byte key id")


def _check_seq(seq: object, what: str) -> None:
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise EncodingError(f"{what}: seq out of range")


def _check_count(items: tuple[Any, ...], cap: int, what: str, *, empty: bool = False) -> None:
    if not isinstance(items, tuple):
        raise EncodingError(f"{what}: expected a tuple")
    if len(items) > cap:
        raise OversizeError(f"{what}: {len(items)} items is over the cap of {cap}")
    if not items and not empty:
        raise EncodingError(f"{what}: at least one item")


@dataclass(frozen=True, slots=True)
class VectorItem:
    """One origin in a version vector: its log reaches ``seq``, whose hash starts with ``head``."""

    origin: bytes
    seq: int
    head: bytes

    def __post_init__(self) -> None:
        _check_kid(self.origin, "vector item")
        _check_seq(self.seq, "vector item")
        if not isinstance(self.head, bytes) or len(self.head) != HEAD_BYTES:
            raise EncodingError(f"vector item: head is {HEAD_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Have:
    """A version-vector digest, with the vector itself when ``vector`` is not None.

    ``vector`` is strictly ascending by origin key id; ``forked`` (strictly ascending
    key ids of origins known to have forked) is only sent with a vector.
    """

    digest: bytes
    vector: tuple[VectorItem, ...] | None = None
    forked: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise EncodingError(f"HAVE: digest is {DIGEST_BYTES} bytes")
        _check_count(self.forked, MAX_FORKED, "HAVE forked", empty=True)
        for kid in self.forked:
            _check_kid(kid, "HAVE forked")
        if any(a >= b for a, b in itertools.pairwise(self.forked)):
            raise EncodingError("HAVE: forked origins must be strictly ascending")
        if self.vector is None:
            if self.forked:
                raise EncodingError("HAVE: forked origins travel with a vector")
            return
        _check_count(self.vector, MAX_VECTOR, "HAVE vector", empty=True)
        if not all(isinstance(item, VectorItem) for item in self.vector):
            raise EncodingError("HAVE: vector holds VectorItem values")
        if any(a.origin >= b.origin for a, b in itertools.pairwise(self.vector)):
            raise EncodingError("HAVE: vector must be strictly ascending by origin")


@dataclass(frozen=True, slots=True)
class WantRange:
    """Entries ``from_seq``..``to_seq`` (inclusive) of one origin."""

    origin: bytes
    from_seq: int
    to_seq: int

    def __post_init__(self) -> None:
        _check_kid(self.origin, "WANT")
        _check_seq(self.from_seq, "WANT from")
        _check_seq(self.to_seq, "WANT to")
        if self.to_seq < self.from_seq:
            raise EncodingError("WANT: to_seq is before from_seq")
        if self.to_seq - self.from_seq + 1 > MAX_WANT_SPAN:
            raise EncodingError(f"WANT: a range spans at most {MAX_WANT_SPAN} entries")


@dataclass(frozen=True, slots=True)
class Want:
    """A request for ranges of entries."""

    ranges: tuple[WantRange, ...]

    def __post_init__(self) -> None:
        _check_count(self.ranges, MAX_WANT_RANGES, "WANT")
        if not all(isinstance(r, WantRange) for r in self.ranges):
            raise EncodingError("WANT holds WantRange values")


@dataclass(frozen=True, slots=True)
class Entries:
    """A batch of canonical entry encodings, unverified until the receiver checks them.

    ``push`` is True for eager (Plumtree) pushes and False for replies to WANT; only
    a duplicate *push* is a reason to PRUNE its sender.
    """

    raws: tuple[bytes, ...]
    push: bool = False

    def __post_init__(self) -> None:
        _check_count(self.raws, MAX_BATCH, "ENTRIES")
        if not isinstance(self.push, bool):
            raise EncodingError("ENTRIES: push is a boolean")
        for raw in self.raws:
            if not isinstance(raw, bytes) or not raw:
                raise EncodingError("ENTRIES: an entry is non-empty bytes")
            if len(raw) > MAX_ENTRY_BYTES:
                raise OversizeError(f"ENTRIES: an entry over {MAX_ENTRY_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Announcement:
    """The sender's log of ``origin`` reaches ``seq`` (it holds 1..seq)."""

    origin: bytes
    seq: int

    def __post_init__(self) -> None:
        _check_kid(self.origin, "IHAVE")
        _check_seq(self.seq, "IHAVE")


@dataclass(frozen=True, slots=True)
class IHave:
    """Lazy announcements (Plumtree's IHAVE), one per origin."""

    items: tuple[Announcement, ...]

    def __post_init__(self) -> None:
        _check_count(self.items, MAX_IHAVE, "IHAVE")
        if not all(isinstance(a, Announcement) for a in self.items):
            raise EncodingError("IHAVE holds Announcement values")


@dataclass(frozen=True, slots=True)
class Graft:
    """Make this link eager: push new entries to the sender."""


@dataclass(frozen=True, slots=True)
class Prune:
    """Make this link lazy: announce new entries to the sender instead of pushing them."""


@dataclass(frozen=True, slots=True)
class Fork:
    """A fork proof's bytes (``ForkProof.encode()``); verified by the receiver."""

    proof: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.proof, bytes) or not self.proof:
            raise EncodingError("FORK: the proof is non-empty bytes")
        if len(self.proof) > MAX_FORK_BYTES:
            raise OversizeError(f"FORK: proof over {MAX_FORK_BYTES} bytes")


def _check_token(token: object, what: str) -> None:
    if not isinstance(token, bytes) or len(token) != PING_TOKEN_BYTES:
        raise EncodingError(f"{what}: token is {PING_TOKEN_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness and round-trip probe; answered by a PONG with the same token."""

    token: bytes

    def __post_init__(self) -> None:
        _check_token(self.token, "PING")


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a PING."""

    token: bytes

    def __post_init__(self) -> None:
        _check_token(self.token, "PONG")


@dataclass(frozen=True, slots=True)
class Beacon:
    """Broadcast-tree announcement: the sender's root, that root's round, its distance."""

    root: bytes
    round: int
    hops: int

    def __post_init__(self) -> None:
        _check_kid(self.root, "BEACON")
        _check_seq(self.round, "BEACON round")
        if not _is_int(self.hops) or not 0 <= self.hops <= MAX_HOPS:
            raise EncodingError(f"BEACON: hops between 0 and {MAX_HOPS}")


Message = Have | Want | Entries | IHave | Graft | Prune | Fork | Ping | Pong | Beacon


def encode_message(msg: Message) -> bytes:
    """The canonical bytes of ``msg``.

    Raises:
        OversizeError: the message would be over ``MAX_MESSAGE_BYTES``.
        EncodingError: ``msg`` is not a message.
    """
    value: list[Any]
    if isinstance(msg, Have):
        value = [Kind.HAVE, msg.digest]
        if msg.vector is not None:
            value += [[[i.origin, i.seq, i.head] for i in msg.vector], list(msg.forked)]
    elif isinstance(msg, Want):
        value = [Kind.WANT, [[r.origin, r.from_seq, r.to_seq] for r in msg.ranges]]
    elif isinstance(msg, Entries):
        value = [Kind.ENTRIES, msg.push, list(msg.raws)]
    elif isinstance(msg, IHave):
        value = [Kind.IHAVE, [[a.origin, a.seq] for a in msg.items]]
    elif isinstance(msg, Graft):
        value = [Kind.GRAFT]
    elif isinstance(msg, Prune):
        value = [Kind.PRUNE]
    elif isinstance(msg, Fork):
        value = [Kind.FORK, msg.proof]
    elif isinstance(msg, Ping):
        value = [Kind.PING, msg.token]
    elif isinstance(msg, Pong):
        value = [Kind.PONG, msg.token]
    elif isinstance(msg, Beacon):
        value = [Kind.BEACON, msg.root, msg.round, msg.hops]
    else:
        raise EncodingError(f"not a gossip message: {type(msg).__name__}")
    value[0] = int(value[0])
    # Messages hold only ints, booleans, bytes and arrays (no maps, no floats), for
    # which msgpack's output is already the shortest, canonical form: skip the
    # generic canonicaliser on this hot path (test_messages checks they agree).
    data: bytes = msgpack.packb(value, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise OversizeError(f"message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}")
    return data


def message_kind(data: bytes) -> Kind | None:
    """The kind of an encoded message, read from its first bytes without decoding it.

    Used for per-kind counters; returns None for bytes that do not start like a message.
    """
    # fixarray header (0x91..0x9f) then a positive fixint kind.
    if len(data) >= 2 and 0x91 <= data[0] <= 0x9F and data[1] in Kind._value2member_map_:
        return Kind(data[1])
    return None


def decode_message(data: bytes) -> Message:
    """Decode and validate one message.

    Raises:
        OversizeError: over ``MAX_MESSAGE_BYTES``, or a list or field over its cap.
        EncodingError: not canonical, unknown kind, wrong arity or types, values out
            of range (a seq of 0, a range ending before it starts, unsorted vector ...).
    """
    value = decode(data, _LIMITS)
    if not isinstance(value, list) or not value or not _is_int(value[0]):
        raise EncodingError("a message is an array starting with its kind")
    kind, fields = value[0], value[1:]
    parser = _PARSERS.get(kind)
    if parser is None:
        raise EncodingError(f"unknown message kind {kind}")
    try:
        return parser(fields)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, EncodingError):
            raise
        raise EncodingError(f"malformed {Kind(kind).name}: {exc}") from exc


def _arity(fields: list[Any], n: int, what: str) -> None:
    if len(fields) != n:
        raise EncodingError(f"{what} has {n} field(s), got {len(fields)}")


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise EncodingError(f"{what}: expected an array")
    return value


def _pairs(value: Any, n: int, what: str) -> list[list[Any]]:
    rows = _list(value, what)
    for row in rows:
        if not isinstance(row, list) or len(row) != n:
            raise EncodingError(f"{what}: each item is an array of {n}")
    return rows


def _parse_have(fields: list[Any]) -> Have:
    if len(fields) == 1:
        return Have(fields[0])
    _arity(fields, 3, "HAVE")
    rows = _pairs(fields[1], 3, "HAVE vector")
    forked = _list(fields[2], "HAVE forked")
    return Have(fields[0], tuple(VectorItem(k, s, h) for k, s, h in rows), tuple(forked))


def _parse_want(fields: list[Any]) -> Want:
    _arity(fields, 1, "WANT")
    return Want(tuple(WantRange(k, a, b) for k, a, b in _pairs(fields[0], 3, "WANT")))


def _parse_entries(fields: list[Any]) -> Entries:
    _arity(fields, 2, "ENTRIES")
    return Entries(tuple(_list(fields[1], "ENTRIES")), fields[0])


def _parse_ihave(fields: list[Any]) -> IHave:
    _arity(fields, 1, "IHAVE")
    return IHave(tuple(Announcement(k, s) for k, s in _pairs(fields[0], 2, "IHAVE")))


def _parse_graft(fields: list[Any]) -> Graft:
    _arity(fields, 0, "GRAFT")
    return Graft()


def _parse_prune(fields: list[Any]) -> Prune:
    _arity(fields, 0, "PRUNE")
    return Prune()


def _parse_fork(fields: list[Any]) -> Fork:
    _arity(fields, 1, "FORK")
    return Fork(fields[0])


def _parse_ping(fields: list[Any]) -> Ping:
    _arity(fields, 1, "PING")
    return Ping(fields[0])


def _parse_pong(fields: list[Any]) -> Pong:
    _arity(fields, 1, "PONG")
    return Pong(fields[0])


def _parse_beacon(fields: list[Any]) -> Beacon:
    _arity(fields, 3, "BEACON")
    return Beacon(fields[0], fields[1], fields[2])


_PARSERS: dict[int, Callable[[list[Any]], Message]] = {
    Kind.HAVE: _parse_have,
    Kind.WANT: _parse_want,
    Kind.ENTRIES: _parse_entries,
    Kind.IHAVE: _parse_ihave,
    Kind.GRAFT: _parse_graft,
    Kind.PRUNE: _parse_prune,
    Kind.FORK: _parse_fork,
    Kind.PING: _parse_ping,
    Kind.PONG: _parse_pong,
    Kind.BEACON: _parse_beacon,
}


# --- reading an entry's header without verifying it --------------------------------


@dataclass(frozen=True, slots=True)
class EntryHeader:
    """What an entry *claims* to be: origin key, seq and prev, read without verifying,
    and ``hash``, the entry's id (BLAKE2b-256 of its header bytes, as ``entry_hash``).

    The engine orders, deduplicates and buffers entries by these claims; the agent
    verifies every entry before storing it, so a lying header costs the liar a
    disconnect, never a wrong ledger. The hash is of the very bytes received, so it is
    the id of whatever entry they turn out to be.
    """

    origin: bytes
    seq: int
    prev: bytes | None
    hash: bytes


def peek_entry(raw: bytes) -> EntryHeader:
    """Read origin, seq and prev from an entry's header (§3), without verifying, and
    hash the header (the entry's id): one framing check for both.

    Raises:
        OversizeError: over ``MAX_ENTRY_BYTES``, or a part over its cap.
        EncodingError: not the framing ``[header, body]``, or a header that is not an
            array of 11 starting with a version, a 32-byte origin, a seq in range and a
            32-byte or absent prev.
    """
    header, _body = split_entry(raw)
    try:
        # One ``unpackb`` of the small header (a few hundred bytes).
        value = msgpack.unpackb(header, raw=False, max_str_len=16, max_bin_len=64,
                                max_ext_len=0, max_array_len=MAX_AUDIENCE, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on hostile input
        raise EncodingError(f"not an entry header: {type(exc).__name__}") from exc
    if type(value) is not list or len(value) != 11:
        raise EncodingError("an entry header is an array of 11 fields")
    v, origin, seq, prev = value[0], value[1], value[2], value[3]
    if type(v) is not int:
        raise EncodingError("entry version is an integer")
    if type(origin) is not bytes or len(origin) != 32:
        raise EncodingError("entry origin is a 32-byte key")
    _check_seq(seq, "entry")
    if prev is not None and (type(prev) is not bytes or len(prev) != 32):
        raise EncodingError("entry prev is a 32-byte hash")
    return EntryHeader(origin, seq, prev, header_hash(header))
