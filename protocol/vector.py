"""Per-origin replication state for the gossip engine, and the version-vector digest.

The engine keeps one :class:`OriginLog` per origin it has heard of (origins are few:
the members of a federation). It mirrors the ledger's head for that origin and tracks
what lies beyond it: entries handed to the agent but not yet stored, entries that
arrived ahead of a gap, the highest seq any peer claims, and the WANTs in flight.

Invariants (checked by the engine's tests):
- ``seq``/``hash`` are the ledger's head, as reported by the agent; 0/b"" for none.
- ``top_seq >= seq``; every seq in ``seq+1 .. top_seq`` is in ``handed``: entries
  given to the agent, in chain order, whose outcome is not yet known.
- ``buffer`` holds only seqs ``> top_seq + 1``; it is released in order as the
  chain reaches it.
- ``known >= top_seq`` once anything is known; ``eligible <= known`` is the part
  of ``known`` that may be requested now (announcements wait ``ihave_timeout``
  for the eager copy first).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from protocol.encoding import encode
from protocol.errors import KeyFormatError
from protocol.keys import PublicKey

__all__ = ["Buffered", "Handed", "OriginLog", "OutstandingWant", "subtract_ranges",
           "vector_digest"]

DIGEST_PERSON = b"entraide-vv1"


@dataclass(slots=True)
class Buffered:
    """An entry that arrived ahead of a gap, waiting for its predecessors."""

    raw: bytes
    hash: bytes
    prev: bytes | None
    peer: PublicKey
    live: bool


@dataclass(slots=True)
class Handed:
    """An entry handed to the agent (in ``batch``) whose outcome is not yet known."""

    hash: bytes
    batch: int
    live: bool


@dataclass(slots=True)
class OutstandingWant:
    """A WANT range sent to ``peer``; it ends when the chain passes ``to_seq``."""

    peer: PublicKey
    from_seq: int
    to_seq: int
    deadline: float
    live: bool


@dataclass(slots=True, eq=False)
class OriginLog:
    """What the engine knows of one origin's log (see the module invariants)."""

    kid: bytes
    origin: bytes | None = None
    """The origin's raw key, once an entry or the ledger showed it."""
    seq: int = 0
    hash: bytes = b""
    top_seq: int = 0
    top_hash: bytes = b""
    known: int = 0
    eligible: int = 0
    swept: int = 0
    """Highest seq learnt from an anti-entropy vector: gaps up to it are bulk repairs."""
    forked: bool = False
    trusted: bool = True
    recent: dict[int, bytes] = field(default_factory=dict)
    checked: dict[bytes, None] = field(default_factory=dict)
    handed: dict[int, Handed] = field(default_factory=dict)
    buffer: dict[int, Buffered] = field(default_factory=dict)
    steps: deque[tuple[float, int]] = field(default_factory=deque)
    wants: list[OutstandingWant] = field(default_factory=list)
    announcer: PublicKey | None = None
    probing: dict[PublicKey, float] = field(default_factory=dict)

    _key: PublicKey | None = None

    def set_key(self, key: PublicKey) -> None:
        self.origin, self._key = key.raw, key

    def public_key(self) -> PublicKey | None:
        """The origin's key, built on first use (None if unknown or not a valid key)."""
        if self._key is None and self.origin is not None:
            try:
                self._key = PublicKey(self.origin)
            except KeyFormatError:
                self.origin = None
        return self._key

    @property
    def active(self) -> bool:
        """Replicated: trusted and not forked."""
        return self.trusted and not self.forked

    def hash_at(self, seq: int) -> bytes | None:
        """The hash of entry ``seq`` if the engine remembers it (head, recent or handed)."""
        if seq == self.seq:
            return self.hash
        if seq > self.seq:
            handed = self.handed.get(seq)
            return handed.hash if handed is not None else None
        return self.recent.get(seq)

    def note_known(self, seq: int, at: float, now: float, step_cap: int) -> bool:
        """Record that entries up to ``seq`` exist, requestable from time ``at``.

        Returns True when ``known`` grew.
        """
        if seq <= self.known:
            return False
        self.known = seq
        if at <= now:
            self.eligible = max(self.eligible, seq)
        elif len(self.steps) >= step_cap:
            # Merge into the last step: later seqs wait a little longer, memory stays flat.
            last_at, _ = self.steps.pop()
            self.steps.append((max(last_at, at), seq))
        else:
            self.steps.append((at, seq))
        return True

    def update_eligible(self, now: float) -> None:
        """Move steps whose time has come into ``eligible``."""
        while self.steps and self.steps[0][0] <= now:
            _, seq = self.steps.popleft()
            self.eligible = max(self.eligible, seq)

    def next_step(self) -> float | None:
        return self.steps[0][0] if self.steps else None

    def remember(self, seq: int, digest: bytes, window: int) -> None:
        """Keep the hash of a stored entry for duplicate and divergence checks."""
        self.recent[seq] = digest
        while len(self.recent) > window:
            del self.recent[next(iter(self.recent))]

    def remember_checked(self, digest: bytes, window: int) -> None:
        """Remember an entry already handed as a check, so a repeat is a duplicate."""
        self.checked[digest] = None
        while len(self.checked) > window:
            del self.checked[next(iter(self.checked))]


def subtract_ranges(lo: int, hi: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[lo, hi]`` not covered by any inclusive range in ``taken``."""
    out: list[tuple[int, int]] = []
    cursor = lo
    for a, b in sorted(taken):
        if b < cursor:
            continue
        if a > hi:
            break
        if a > cursor:
            out.append((cursor, a - 1))
        cursor = max(cursor, b + 1)
        if cursor > hi:
            return out
    if cursor <= hi:
        out.append((cursor, hi))
    return out


def vector_digest(items: list[tuple[bytes, int, bytes]], forked: list[bytes]) -> bytes:
    """BLAKE2b-128 of ``encode([[[kid, seq, head_hash]...], [forked kid...]])``.

    ``items`` and ``forked`` must be sorted by key id. Two nodes with the same
    heads (full 32-byte hashes) and the same forked origins have the same digest.
    """
    data = encode([[list(item) for item in items], forked])
    return hashlib.blake2b(data, digest_size=16, person=DIGEST_PERSON).digest()
