"""What the gossip engine knows of each origin's log, and how entries reach the ledger.

The engine keeps one :class:`OriginLog` per origin it has heard of (origins are few:
the members of a federation), in an :class:`OriginTable`. A log mirrors the ledger's
head for that origin and tracks what lies beyond it: entries handed to the agent but
not yet stored, entries that arrived ahead of a gap, the highest seq any peer
claims, and the WANTs in flight. The table orders incoming entries for the agent
(chain order, duplicates dropped in place, early ones buffered), and computes the
version vector and its digest.

Entries are ordered by what their headers *claim* (protocol.messages.peek_entry);
the agent verifies each before storing it, and reports back, so a lying header
costs its sender a disconnect and the engine a rollback, never a wrong ledger.

Invariants:
- ``seq``/``hash`` are the ledger's head, as reported by the agent; 0/b"" for none.
- ``top_seq >= seq``; every seq in ``seq+1 .. top_seq`` is in ``handed``: entries
  given to the agent, in chain order, whose outcome is not yet known.
- ``buffer`` holds only seqs ``> top_seq + 1``, at most ``reorder_limit`` beyond the
  head, ``reorder_bytes`` in all and ``reorder_peer_bytes`` of any one peer's entries
  (``peer_bytes``: by sender, exact); it is released in order as the chain reaches it,
  and a peer's entries leave it when its session ends (:meth:`OriginTable.drop_peer`).
- ``eligible <= known``: the part of what is known to exist that may be requested
  now (announced entries wait ``ihave_timeout`` for the eager copy first).
- A conflict an admin cleared (``cleared``: key id and seq) never marks its origin
  forked again, as in the ledger; a fork at another seq does.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol.encoding import encode
from protocol.entries import ForkProof, VerifiedEntry, entry_hash
from protocol.errors import KeyFormatError, LocalProtocolError
from protocol.gossip_types import EntriesReceived, GossipParams
from protocol.keys import KEY_ID_BYTES, PublicKey
from protocol.messages import MAX_FORKED

__all__ = ["Buffered", "Handed", "Item", "OriginLog", "OriginTable", "OutstandingWant",
           "key_id", "subtract_ranges", "vector_digest"]

STEP_CAP = 64
MAX_CLEARED = 4096
"""Cleared conflicts remembered (oldest forgotten first; each one is an admin action)."""

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


def key_id(origin: bytes) -> bytes:
    """``PublicKey(origin).key_id`` without building (and point-checking) the key."""
    return hashlib.blake2b(origin, digest_size=32).digest()[:KEY_ID_BYTES]


class Item:
    """An entry handed to the agent in a batch, and where it came from."""

    __slots__ = ("check", "hash", "live", "log", "peer", "seq")

    def __init__(self, log: OriginLog, seq: int, digest: bytes, live: bool, peer: PublicKey,
                 check: bool) -> None:
        self.log, self.seq, self.hash, self.live, self.peer, self.check = (
            log, seq, digest, live, peer, check)


class OriginTable:
    """Every origin the engine knows of, and the intake of entries towards the ledger."""

    def __init__(self, params: GossipParams, trusted: frozenset[bytes] | None) -> None:
        self.params = params
        self.trusted = trusted
        self.logs: dict[bytes, OriginLog] = {}
        self.forks: dict[bytes, bytes] = {}  # key id -> ForkProof.encode()
        self.fork_seqs: dict[bytes, int] = {}  # key id -> the seq of its proof
        self.cleared: dict[tuple[bytes, int], None] = {}  # conflicts an admin cleared
        self.buffer_bytes = 0
        self.peer_bytes: dict[PublicKey, int] = {}  # buffered bytes by sender
        # Origins that may miss entries; a dict for a replayable (insertion) order.
        self.lagging: dict[OriginLog, None] = {}
        # Entries whose header contradicts the chain: (log, sender, seq to ask it for).
        self.conflicts: list[tuple[OriginLog, PublicKey, int]] = []
        self._kid_of: dict[bytes, bytes] = {}
        self._handing: list[tuple[Item, bytes]] = []
        self._batches: dict[int, dict[bytes, Item]] = {}
        self._batch_ids = itertools.count(1)
        self._digest: bytes | None = None

    # --- lookup ---------------------------------------------------------------------

    def kid(self, origin: bytes) -> bytes:
        """The key id of a raw origin key (cached for the origins we track)."""
        kid = self._kid_of.get(origin)
        if kid is None:
            kid = key_id(origin)
            if len(self._kid_of) < 2 * self.params.max_origins:
                self._kid_of[origin] = kid
        return kid

    def get(self, kid: bytes, *, create: bool, force: bool = False) -> OriginLog | None:
        """The log of origin ``kid``; created if allowed (trusted or forced, under the cap)."""
        log = self.logs.get(kid)
        if log is not None or not create:
            return log
        if not force and self.trusted is not None and kid not in self.trusted:
            return None
        if len(self.logs) >= self.params.max_origins:
            return None
        log = self.logs[kid] = OriginLog(kid)
        log.trusted = self.trusted is None or kid in self.trusted
        return log

    def set_trusted(self, trusted: frozenset[bytes] | None) -> None:
        self.trusted = trusted
        for log in self.logs.values():
            log.trusted = trusted is None or log.kid in trusted
            if not log.trusted:
                self.drop_pending(log)
        self._digest = None

    # --- the version vector ---------------------------------------------------------

    def vector_logs(self) -> list[OriginLog]:
        """Replicated origins with at least one entry, by key id."""
        return sorted((log for log in self.logs.values() if log.active and log.seq > 0),
                      key=lambda log: log.kid)

    def digest(self) -> bytes:
        if self._digest is None:
            items = [(log.kid, log.seq, log.hash) for log in self.vector_logs()]
            self._digest = vector_digest(items, sorted(self.forks))
        return self._digest

    # --- forks ----------------------------------------------------------------------

    def mark_forked(self, proof: ForkProof) -> bool:
        """Record a fork proof and stop replicating its origin; False if no room, or if
        an admin already cleared that conflict (same origin and seq)."""
        kid = proof.origin.key_id
        if (kid, proof.seq) in self.cleared:
            return False
        log = self.get(kid, create=True, force=True)
        if log is None or (kid not in self.forks and len(self.forks) >= MAX_FORKED):
            return False
        self.forks[kid] = proof.encode()
        self.fork_seqs[kid] = proof.seq
        log.set_key(proof.origin)
        log.forked = True
        self.drop_pending(log)
        self._digest = None
        return True

    def note_cleared(self, kid: bytes, seq: int) -> None:
        """Remember that an admin cleared the conflict of origin ``kid`` at ``seq``."""
        self.cleared[(kid, seq)] = None
        while len(self.cleared) > MAX_CLEARED:
            del self.cleared[next(iter(self.cleared))]

    def clear_fork(self, kid: bytes, head: tuple[int, bytes] | None) -> bool:
        """Replicate a forked origin again from the ledger's ``head`` (None: no entry).

        Its conflict is remembered as cleared; what the engine believed beyond the
        head (peers' claims, pending requests) is forgotten, to be learnt again.
        Returns False when the origin was not marked forked (nothing changes).
        """
        log = self.logs.get(kid)
        data = self.forks.pop(kid, None)
        seq = self.fork_seqs.pop(kid, None)
        if log is None or data is None:
            return False
        if seq is not None:
            self.note_cleared(kid, seq)
        log.forked = False
        head_seq, head_hash = head or (0, b"")
        if (head_seq, head_hash) != (log.seq, log.hash):
            log.recent = {s: h for s, h in log.recent.items() if s < head_seq}
            log.seq, log.hash = head_seq, head_hash
            if head_seq:
                log.remember(head_seq, head_hash, self.params.recent_window)
        self.drop_pending(log)
        log.known = log.eligible = log.swept = head_seq
        log.announcer = None
        log.probing.clear()
        self.lagging[log] = None
        self._digest = None
        return True

    def drop_pending(self, log: OriginLog) -> None:
        """Forget everything beyond the head of ``log`` (forked or no longer trusted)."""
        for seq in list(log.buffer):
            self._unbuffer(log, seq)
        log.handed.clear()
        log.wants.clear()
        log.steps.clear()
        log.top_seq, log.top_hash = log.seq, log.hash
        self.lagging.pop(log, None)

    # --- intake ---------------------------------------------------------------------

    def classify(self, log: OriginLog, seq: int, prev: bytes | None, digest: bytes,
                 raw: bytes, peer: PublicKey, live: bool, now: float) -> str:
        """Decide the fate of one incoming entry: "dup", "new", "check" or "drop"."""
        self.lagging[log] = None
        if seq <= log.top_seq:
            if log.hash_at(seq) == digest or digest in log.checked:
                return "dup"
            # Not the entry we hold (or no longer remember): the ledger decides
            # whether it is a duplicate or fork evidence.
            log.remember_checked(digest, self.params.recent_window)
            self._hand(log, seq, digest, raw, live=False, peer=peer, check=True)
            return "check"
        held = log.buffer.get(seq)
        if held is not None:
            return "dup" if held.hash == digest else "drop"
        if seq == log.top_seq + 1:
            if prev == (log.top_hash if log.top_seq else None):
                self._hand(log, seq, digest, raw, live=live, peer=peer, check=False)
                self._release(log)
                return "new"
            # It does not chain onto what we hold: ask the sender for its version of
            # our last entry, which is either ours (the sender lies) or fork evidence.
            self.conflicts.append((log, peer, log.top_seq))
            return "drop"
        log.note_known(seq, now + self.params.ihave_timeout, now, STEP_CAP)
        if (seq > log.seq + self.params.reorder_limit
                or self.buffer_bytes + len(raw) > self.params.reorder_bytes
                or self.peer_bytes.get(peer, 0) + len(raw) > self.params.reorder_peer_bytes):
            return "drop"
        log.buffer[seq] = Buffered(raw, digest, prev, peer, live)
        self.buffer_bytes += len(raw)
        self.peer_bytes[peer] = self.peer_bytes.get(peer, 0) + len(raw)
        return "new"

    def _unbuffer(self, log: OriginLog, seq: int) -> Buffered | None:
        """Take the entry at ``seq`` out of ``log``'s buffer (None: there is none)."""
        held = log.buffer.pop(seq, None)
        if held is not None:
            self.buffer_bytes -= len(held.raw)
            left = self.peer_bytes[held.peer] - len(held.raw)
            if left:
                self.peer_bytes[held.peer] = left
            else:
                del self.peer_bytes[held.peer]
        return held

    def drop_peer(self, peer: PublicKey) -> int:
        """Forget the buffered entries ``peer`` sent (its session ended); return how
        many. They were never verified: honest copies come again by anti-entropy."""
        if peer not in self.peer_bytes:
            return 0
        dropped = 0
        for log in self.logs.values():
            for seq in [s for s, held in log.buffer.items() if held.peer == peer]:
                self._unbuffer(log, seq)
                dropped += 1
        return dropped

    def _hand(self, log: OriginLog, seq: int, digest: bytes, raw: bytes, *, live: bool,
              peer: PublicKey, check: bool) -> None:
        self._handing.append((Item(log, seq, digest, live, peer, check), raw))
        if not check:
            log.top_seq, log.top_hash = seq, digest
            log.handed[seq] = Handed(digest, 0, live)
            log.known = max(log.known, seq)

    def _release(self, log: OriginLog) -> None:
        """Hand the buffered entries that now follow the chain."""
        while (held := self._unbuffer(log, log.top_seq + 1)) is not None:
            if held.prev != (log.top_hash if log.top_seq else None):
                self.conflicts.append((log, held.peer, log.top_seq))
                return
            self._hand(log, log.top_seq + 1, held.hash, held.raw, live=held.live,
                       peer=held.peer, check=False)

    def take_batch(self) -> EntriesReceived | None:
        """The entries handed since the last call, as one event for the agent."""
        if not self._handing:
            return None
        batch = next(self._batch_ids)
        items: dict[bytes, Item] = {}
        for item, _ in self._handing:
            items.setdefault(item.hash, item)
            handed = item.log.handed.get(item.seq)
            if not item.check and handed is not None and handed.hash == item.hash:
                handed.batch = batch
        self._batches[batch] = items
        raws = tuple(raw for _, raw in self._handing)
        event = EntriesReceived(self._handing[0][0].peer, raws, batch)
        self._handing = []
        return event

    def settle(self, batch: int | None, stored: Sequence[VerifiedEntry],
               invalid: Sequence[bytes]) -> tuple[list[tuple[OriginLog, VerifiedEntry,
                                                             Item | None]],
                                                  dict[PublicKey, int]]:
        """Apply the agent's report on a batch.

        Returns the entries that advanced a head (with the item they came in, if any)
        and, per peer, how many of the entries it sent failed verification. Handed
        entries neither stored nor duplicates are forgotten, to be requested again.

        Raises:
            LocalProtocolError: a stored entry skips past its origin's head.
        """
        items = self._batches.pop(batch, {}) if batch is not None else {}
        advanced: list[tuple[OriginLog, VerifiedEntry, Item | None]] = []
        stored_hashes: set[bytes] = set()
        for entry in stored:
            stored_hashes.add(entry.hash)
            log = self.get(self.kid(entry.origin.raw), create=True, force=True)
            if log is None or not log.active or entry.seq <= log.seq:
                continue
            if entry.seq != log.seq + 1:
                raise LocalProtocolError(f"stored seq {entry.seq} after head {log.seq}")
            if log.origin is None:
                log.set_key(entry.origin)
            self.advance(log, entry.seq, entry.hash)
            advanced.append((log, entry, items.get(entry.hash)))
        culprits: dict[PublicKey, int] = {}
        for raw in invalid:
            item = items.get(entry_hash(raw))
            if item is not None:
                culprits[item.peer] = culprits.get(item.peer, 0) + 1
        for digest, item in items.items():
            handed = item.log.handed.get(item.seq)
            if (digest not in stored_hashes and not item.check and handed is not None
                    and handed.hash == digest and handed.batch == batch):
                self._rollback(item.log, item.seq)
        return advanced, culprits

    def _rollback(self, log: OriginLog, seq: int) -> None:
        """Entry ``seq`` was handed but not stored: forget it and all handed after it."""
        for s in [s for s in log.handed if s >= seq]:
            del log.handed[s]
        log.top_seq, log.top_hash = seq - 1, log.hash_at(seq - 1) or b""
        if log.top_seq <= log.seq:
            log.top_seq, log.top_hash = log.seq, log.hash
        self.lagging[log] = None

    def advance(self, log: OriginLog, seq: int, digest: bytes) -> None:
        """The ledger's head for ``log`` is now ``(seq, digest)``."""
        log.seq, log.hash = seq, digest
        log.remember(seq, digest, self.params.recent_window)
        handed = log.handed.pop(seq, None)
        if handed is not None and handed.hash != digest:
            # The ledger stored another entry than the one handed: whatever was
            # handed after it chains onto the wrong one.
            self._rollback(log, seq + 1)
        elif log.top_seq < seq:
            log.top_seq, log.top_hash = seq, digest
        self._unbuffer(log, seq)
        log.known = max(log.known, seq)
        self._digest = None
        self._release(log)
