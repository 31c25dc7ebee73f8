"""Entries that arrived ahead of a gap in their origin's chain, waiting for it to fill.

Gossip delivers entries in any order; the ledger stores an origin's entries only in
chain order. An entry whose seq is beyond the head + 1 waits here until replication
(WANT) brings the missing ones. Nothing here is durable: after a restart, anti-entropy
simply fetches the same entries again.

Invariants:
- Bounded: at most ``per_origin_entries`` entries and ``per_origin_bytes`` bytes per
  origin, and ``total_entries`` / ``total_bytes`` over all origins (BufferLimits).
- When an origin is full, the entries nearest its head are kept: they are the ones a
  filled gap releases first; a farther entry makes way for a nearer one.
- At most one entry per (origin, seq): a second, different one is a fork, which the
  ledger detects with :meth:`AheadBuffer.get` before it calls :meth:`hold`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.storage.types import BufferLimits, Gap
from protocol.entries import VerifiedEntry
from protocol.keys import PublicKey

__all__ = ["AheadBuffer", "Held"]


@dataclass(frozen=True)
class Held:
    """A waiting entry and whatever the ledger decoded of it (opaque here)."""

    entry: VerifiedEntry
    record: object


class AheadBuffer:
    """Per-origin maps seq → :class:`Held`, with byte and entry accounting."""

    def __init__(self, limits: BufferLimits) -> None:
        self._limits = limits
        self._held: dict[bytes, dict[int, Held]] = {}
        self._bytes: dict[bytes, int] = {}
        self.total = 0
        self.total_bytes = 0

    def get(self, origin: bytes, seq: int) -> Held | None:
        held = self._held.get(origin)
        return None if held is None else held.get(seq)

    def count(self, origin: bytes) -> int:
        return len(self._held.get(origin, ()))

    def hold(self, entry: VerifiedEntry, record: object) -> tuple[bool, int]:
        """Keep ``entry`` if the caps allow; return (kept, entries dropped to make room
        or refused for lack of it)."""
        origin, size, limits = entry.origin.raw, len(entry.raw), self._limits
        dropped = 0

        def origin_full() -> bool:
            return (self.count(origin) >= limits.per_origin_entries
                    or self._bytes.get(origin, 0) + size > limits.per_origin_bytes)

        while origin_full() and self._held.get(origin):
            farthest = max(self._held[origin])
            if farthest < entry.seq:
                break
            self.pop(origin, farthest)
            dropped += 1
        if (origin_full() or self.total >= limits.total_entries
                or self.total_bytes + size > limits.total_bytes):
            return False, dropped + 1
        self._held.setdefault(origin, {})[entry.seq] = Held(entry, record)
        self._bytes[origin] = self._bytes.get(origin, 0) + size
        self.total += 1
        self.total_bytes += size
        return True, dropped

    def pop(self, origin: bytes, seq: int) -> Held:
        """Remove and return the entry at ``seq`` (KeyError when there is none)."""
        held = self._held[origin]
        item = held.pop(seq)
        size = len(item.entry.raw)
        self._bytes[origin] -= size
        self.total -= 1
        self.total_bytes -= size
        if not held:
            del self._held[origin]
            del self._bytes[origin]
        return item

    def drop(self, origin: bytes) -> int:
        """Forget everything ``origin`` has waiting; return how many entries that was."""
        seqs = list(self._held.get(origin, ()))
        for seq in seqs:
            self.pop(origin, seq)
        return len(seqs)

    def gaps(self, key: PublicKey, head_seq: int, budget: int) -> list[Gap]:
        """The missing ranges between ``head_seq`` and the entries waiting (at most
        ``budget`` of them, nearest first)."""
        held = self._held.get(key.raw)
        if not held or budget <= 0:
            return []
        expected, gaps = head_seq + 1, []
        for seq in sorted(held):
            if seq > expected:
                gaps.append(Gap(key, expected, seq - 1))
                if len(gaps) >= budget:
                    break
            expected = seq + 1
        return gaps
