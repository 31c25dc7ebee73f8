"""Pulling missing entries: which ranges to WANT, from whom, and when to give up.

Rules (docs/protocol.md §8, "Replication rules"):
- Only what is known to exist and *eligible* is requested: whatever told us of
  an entry (an announcement, a later entry, a vector) it waits ``ihave_timeout``
  for the eager copy first.
- Ranges are cut to ``want_batch`` and go to a peer that said it holds them
  (preferably the latest announcer), while that peer has fewer than
  ``want_window`` entries requested and not received. Nothing is requested more
  than ``reorder_limit`` past the ledger's head, so the reorder buffer cannot
  overflow from our own requests.
- A request that makes no progress for ``want_timeout`` is dropped, its peer's
  claim cut to what we hold, and the range requested again from any peer that still
  claims it.
- A small gap behind a push or an announcement is a *live* repair: its entries are
  forwarded eagerly once stored. What anti-entropy found is bulk: announced only.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.gossip_types import GossipParams
from protocol.keys import PublicKey
from protocol.origins import OriginLog, OriginTable, OutstandingWant, subtract_ranges
from protocol.peer_state import Counters, PeerState
from protocol.prng import Prng

__all__ = ["Puller"]

Schedule = Callable[[float, str, object], None]
"""Arms an engine timer ``(at, kind, key)`` unless one is due sooner."""


class Puller:
    """Decides the WANTs of one engine; queues them in each peer's ``want_out``."""

    def __init__(self, params: GossipParams, table: OriginTable,
                 peers: dict[PublicKey, PeerState], rng: Prng, schedule: Schedule,
                 totals: Counters) -> None:
        self.params = params
        self.table = table
        self.peers = peers
        self.rng = rng
        self.schedule = schedule
        self.totals = totals

    @staticmethod
    def live(log: OriginLog, seq: int) -> bool:
        """Whether ``seq`` is being fetched as a live repair."""
        # Called for every received entry: a plain loop, not any() over a generator.
        for w in log.wants:  # noqa: SIM110
            if w.live and w.from_seq <= seq <= w.to_seq:
                return True
        return False

    def progress(self, log: OriginLog, peer: PublicKey, seq: int, now: float) -> None:
        """``peer`` delivered ``seq``: its requests covering it are alive."""
        for w in log.wants:
            # The range test first: it is cheap, the key comparison is constant-time.
            if w.from_seq <= seq <= w.to_seq and (w.peer is peer or w.peer == peer):
                w.deadline = now + self.params.want_timeout

    def probe(self, log: OriginLog, p: PeerState, seq: int, now: float) -> None:
        """Ask ``p`` for its entry ``seq`` of ``log``: ours differs, or is contradicted."""
        if seq >= 1 and log.probing.get(p.key, 0.0) <= now:
            log.probing[p.key] = now + self.params.want_timeout
            p.want_out.append((log.kid, seq, seq))

    def room(self, p: PeerState) -> int:
        """Entries we may still request from ``p``: its window minus what is in flight."""
        outstanding = 0
        kept = []
        for log, w in p.wants:
            left = w.to_seq - max(w.from_seq, log.top_seq + 1) + 1
            if left > 0 and w in log.wants:
                outstanding += left
                kept.append((log, w))
        p.wants = kept
        return self.params.want_window - outstanding

    def step(self, log: OriginLog) -> None:
        """Arm the timer for the next announcement of ``log`` to become eligible."""
        at = log.next_step()
        if at is not None:
            self.schedule(at, "step", log.kid)

    def request(self, log: OriginLog, now: float) -> None:
        """Request the missing entries of ``log`` that may be requested now."""
        log.update_eligible(now)
        self.step(log)
        lo = log.top_seq + 1
        log.wants = [w for w in log.wants if w.to_seq >= lo]
        hi = min(log.eligible, log.known, log.seq + self.params.reorder_limit)
        if lo > hi or not log.active:
            return
        taken = [(w.from_seq, w.to_seq) for w in log.wants] + [(s, s) for s in log.buffer]
        small = log.known - log.top_seq <= self.params.graft_max_gap
        for a, b in subtract_ranges(lo, hi, taken):
            # A small gap behind a push or an announcement is a live repair: its
            # entries go on eagerly down the tree. What anti-entropy found is bulk:
            # announced only, so neighbours running their own exchange do not get
            # it twice.
            live = small and a > log.swept
            while a <= b:
                p = self._source(log, a, b)
                if p is None:
                    return
                n = min(b - a + 1, self.params.want_batch, self.room(p), p.told[log.kid] - a + 1)
                want = OutstandingWant(p.key, a, a + n - 1, now + self.params.want_timeout, live)
                log.wants.append(want)
                p.wants.append((log, want))
                p.want_out.append((log.kid, a, a + n - 1))
                self.schedule(want.deadline, "want_timeout", log.kid)
                a += n

    def _source(self, log: OriginLog, seq: int, last: int) -> PeerState | None:
        # No silly windows: a peer whose window has room for less than half a full
        # request (want_batch, or what is left of the range it holds) is asked again
        # once more of its window is free. Without this, each small arrival frees a
        # small room and the ranges stay small for good (catch-up of 20 origins ran
        # at 76 entries per ENTRIES message instead of ~250: 3x the per-batch costs).
        full = min(self.params.want_batch, self.params.want_window)
        candidates = [p for p in self.peers.values()
                      if (told := p.told.get(log.kid, 0)) >= seq
                      and 2 * self.room(p) >= min(full, min(last, told) - seq + 1)]
        if not candidates:
            return None
        for p in candidates:
            if p.key == log.announcer:
                return p
        return self.rng.choice(candidates)

    def expire(self, log: OriginLog, now: float) -> None:
        """Drop the requests of ``log`` that made no progress in time."""
        kept = []
        for w in log.wants:
            if w.deadline > now:
                kept.append(w)
                continue
            p = self.peers.get(w.peer)
            if p is not None:
                p.counters.want_timeouts += 1
                # It did not deliver what it claimed: believe no more than we hold,
                # so a peer that announces entries it never sends is not asked forever.
                cut = max(w.from_seq - 1, log.top_seq)
                if p.told.get(log.kid, 0) > cut:
                    p.told[log.kid] = cut
            self.totals.want_timeouts += 1
        log.wants = kept
        if kept:
            self.schedule(min(w.deadline for w in kept), "want_timeout", log.kid)
        self.table.lagging[log] = None

    def forget_peer(self, p: PeerState) -> None:
        """``p`` left: its requests are to be made again elsewhere."""
        for log, want in p.wants:
            if want in log.wants:
                log.wants.remove(want)
            self.table.lagging[log] = None
        for log in self.table.logs.values():
            if log.announcer == p.key:
                log.announcer = None
            log.probing.pop(p.key, None)
