"""The broadcast tree: a hop-count BFS tree rooted at the smallest key id reachable.

Eager pushes travel along this tree; every other link carries lazy announcements
(docs/protocol.md §8, "The broadcast tree"). Why not Plumtree's duplicate-driven
pruning alone: with many origins publishing at once, concurrent duplicates prune
different edges of the same cycle and the eager graph falls apart (measured: 20
pieces for 200 nodes), so most entries arrive through slow lazy repair. A rooted
tree is shared by all origins and does not churn: the root changes only when it
leaves, a parent only when a strictly shorter path appears or the parent leaves.

Protocol:
- The root (a node that knows no smaller key id) sends ``BEACON(root, round, 0)``
  to its peers every ``beacon_interval``; ``round`` grows by one each time.
- A node adopts a beacon that names a smaller root, a newer round of its root, or
  a shorter path in the current round; its parent is the sender (on a new round it
  keeps its parent if that one was as close), its hops the sender's plus one. It
  then sends ``BEACON(root, round, hops)`` to all its peers, and GRAFT to its
  parent (PRUNE to a parent it left). GRAFT/PRUNE keep their Plumtree meaning:
  "push new entries to me" / "stop".
- Eager peers: the parent, the stand-in and every peer whose latest word was GRAFT.
- A parent that leaves is replaced at once by a peer strictly closer to the root
  (which cannot be a descendant, so no loop forms); otherwise the node waits for
  the next round, and meanwhile GRAFTs a *stand-in*: the peer closest to the root
  that is not its child (fewest hops, then smallest key id). The stand-in is an
  eager link only, not a parent: hops and beacons ignore it, so it cannot make a
  loop in the tree; it keeps the cut-off subtree on the eager path (a push instead
  of an announcement and a WANT at each cut) until the node has a parent again
  (then PRUNE), which with the root gone is only after the root timeout. A node
  with no such peer (all its peers are its children: the root's children when the
  root leaves) beacons ``CUT`` hops (``MAX_HOPS``: never a path, never a stand-in);
  each child that hears CUT from its parent GRAFTs a stand-in of its own, keeping
  its parent. One level only: a child with no candidate does not beacon CUT in turn
  (a cascade grafted ~250 stand-ins in a 1,000-node run, copies 1.19). A root
  not heard of for ``3 * beacon_interval`` is dropped: the
  node becomes a root candidate itself, and ignores that root's stale round.

Invariants:
- ``parent`` is None or a connected peer; ``hops == 0`` exactly when this node is
  its own root.
- ``stand_in`` is None unless this node is not its own root and has no parent, or
  a parent that beaconed CUT in this round; it is a connected peer that was not a
  child when chosen. ``cut`` is set only without a parent. Neither changes
  ``parent`` or ``hops``.
- Every action is returned to the caller as (peer, message) pairs; nothing here
  queues or sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.keys import PublicKey
from protocol.messages import MAX_HOPS, Beacon, Graft, Message, Prune

__all__ = ["CUT", "BroadcastTree", "Offer"]

ROOT_TIMEOUT_ROUNDS = 3
CUT = MAX_HOPS
"""The hops a node cut off from the root beacons (no parent and no stand-in, or a
parent that beacons CUT): never a path to the root, never a stand-in."""


@dataclass(frozen=True, slots=True)
class Offer:
    """A peer's latest beacon: its root, that root's round, and its distance to it."""

    root: bytes
    round: int
    hops: int


@dataclass(eq=False)
class BroadcastTree:
    """One node's view of the broadcast tree."""

    me: bytes
    interval: float
    root: bytes = b""
    round: int = 0
    hops: int = 0
    parent: PublicKey | None = None
    heard: float = 0.0
    next_beacon: float = 0.0
    own_round: int = 0
    offers: dict[PublicKey, Offer] = field(default_factory=dict)
    children: set[PublicKey] = field(default_factory=set)
    expired: dict[bytes, int] = field(default_factory=dict)
    peers: list[PublicKey] = field(default_factory=list)
    stand_in: PublicKey | None = None
    cut: bool = False

    def __post_init__(self) -> None:
        self.root = self.me

    @property
    def is_root(self) -> bool:
        return self.root == self.me

    def eager(self, peer: PublicKey) -> bool:
        """Whether entries are pushed to ``peer`` (our parent, child or stand-in)."""
        return peer == self.parent or peer == self.stand_in or peer in self.children

    def beacon(self) -> Beacon:
        return Beacon(self.root, self.round, CUT if self.cut else min(self.hops, CUT))

    def _broadcast(self) -> list[tuple[PublicKey, Message]]:
        msg = self.beacon()
        return [(p, msg) for p in self.peers]

    # --- inputs -------------------------------------------------------------------

    def add_peer(self, peer: PublicKey, now: float) -> list[tuple[PublicKey, Message]]:
        """A new peer: tell it where we stand (it may attach to us, or offer a better root)."""
        self.peers.append(peer)
        if self.is_root and self.round == 0:
            self._new_own_round(now)
            return self._broadcast()
        return [(peer, self.beacon())]

    def remove_peer(self, peer: PublicKey, now: float) -> list[tuple[PublicKey, Message]]:
        """A peer left; replace it if it was our parent."""
        if peer in self.peers:
            self.peers.remove(peer)
        self.offers.pop(peer, None)
        self.children.discard(peer)
        if peer == self.stand_in:
            self.stand_in = None
            return self._find_stand_in()
        if peer != self.parent:
            return []
        self.parent = None
        best: tuple[int, bytes, PublicKey] | None = None
        for p, offer in self.offers.items():
            # Strictly closer than us in our root's tree: not one of our descendants.
            if offer.root == self.root and offer.round >= self.round - 1 and offer.hops < self.hops:
                cand = (offer.hops, p.raw, p)
                if best is None or cand[:2] < best[:2]:
                    best = cand
        if best is None:
            return self._find_stand_in()
        self.parent = best[2]
        self.hops = best[0] + 1
        drop = self._drop_stand_in()
        return [*self._broadcast(), *drop, (self.parent, Graft())]

    def _find_stand_in(self) -> list[tuple[PublicKey, Message]]:
        """Cut off (no parent, or a parent that beacons CUT; not root): GRAFT the peer
        closest to the root that is neither our parent nor our child nor cut off, so
        entries keep coming by push until a parent is found; if there is none, beacon
        CUT so that our children look for one in turn."""
        if self.is_root or self.stand_in is not None:
            return []
        best: tuple[int, bytes, PublicKey] | None = None
        for p, offer in self.offers.items():
            if (offer.root == self.root and offer.hops < CUT and p != self.parent
                    and p not in self.children):
                cand = (offer.hops, p.raw, p)
                if best is None or cand[:2] < best[:2]:
                    best = cand
        if best is not None:
            self.stand_in = best[2]
            return [(self.stand_in, Graft())]
        if self.cut or self.parent is not None:
            return []  # one level only: a cascade of CUT grafted hundreds of stand-ins
        self.cut = True
        return self._broadcast()

    def _drop_stand_in(self) -> list[tuple[PublicKey, Message]]:
        """A parent again (or root): the stand-in goes back to announcements."""
        self.cut = False
        old, self.stand_in = self.stand_in, None
        if old is None or old == self.parent or old in self.children:
            return []
        return [(old, Prune())]

    def on_graft(self, peer: PublicKey) -> None:
        self.children.add(peer)

    def on_prune(self, peer: PublicKey) -> None:
        self.children.discard(peer)

    def on_beacon(self, peer: PublicKey, msg: Beacon,
                  now: float) -> list[tuple[PublicKey, Message]]:
        """Adopt a better root, a newer round or a shorter path; returns messages to send."""
        if msg.root == self.me and msg.round > self.own_round:
            # We restarted as root: continue our rounds after the ones peers remember.
            self.own_round = msg.round
        if self.expired.get(msg.root) == msg.round:
            return []
        offer = Offer(msg.root, msg.round, msg.hops)
        self.offers[peer] = offer
        if msg.root == self.root and msg.round == self.round and not self.is_root:
            if msg.hops >= CUT:
                return self._on_cut(peer)
            if peer == self.parent and (self.cut or self.stand_in is not None):
                # Our parent is back on a path to the root (a parent of its own).
                was_cut = self.cut
                out = self._drop_stand_in()
                return [*self._broadcast(), *out] if was_cut else out
        old = self.parent
        if msg.root < self.root or (msg.root == self.root and msg.round > self.round
                                     and not self.is_root):
            self.expired.pop(msg.root, None)
            kept = self.offers.get(old) if old is not None and old != peer else None
            self.root, self.round, self.heard = msg.root, msg.round, now
            if kept is not None and kept.root == msg.root and kept.hops <= msg.hops:
                self.hops = kept.hops + 1  # keep the parent: its beacon of this round follows
            else:
                self.parent, self.hops = peer, min(msg.hops + 1, CUT)
        elif (msg.root == self.root and msg.round == self.round and not self.is_root
              and msg.hops + 1 < self.hops):
            self.parent, self.hops = peer, msg.hops + 1
        else:
            return []
        out = self._broadcast()
        if old is not None and old != self.parent and old not in self.children:
            out.append((old, Prune()))
        if self.parent is not None:
            out.extend(self._drop_stand_in())
            out.append((self.parent, Graft()))  # new parent, or a refresh once per round
        return out

    def _on_cut(self, peer: PublicKey) -> list[tuple[PublicKey, Message]]:
        """``peer`` beacons that it is cut off from the root."""
        if peer == self.parent:
            return self._find_stand_in()
        if peer == self.stand_in:
            self.stand_in = None
            out: list[tuple[PublicKey, Message]] = (
                [] if peer in self.children else [(peer, Prune())])
            return [*out, *self._find_stand_in()]
        return []

    def on_timer(self, now: float) -> list[tuple[PublicKey, Message]]:
        """Emit our round when we are root; drop a root that went silent."""
        if self.is_root:
            if now < self.next_beacon:
                return []
            self._new_own_round(now)
            return self._broadcast()
        # The same sum next_timer() returns: ``now - heard > timeout`` can be false at
        # that very instant (float rounding), and the timer then fired forever at it.
        if now >= self.heard + ROOT_TIMEOUT_ROUNDS * self.interval:
            self.expired[self.root] = self.round
            old = self.parent
            self.root, self.hops, self.parent = self.me, 0, None
            self._new_own_round(now)
            out = self._broadcast()
            if old is not None and old not in self.children:
                out.append((old, Prune()))
            out.extend(self._drop_stand_in())
            return out
        return []

    def next_timer(self) -> float:
        if self.is_root:
            return self.next_beacon
        return self.heard + ROOT_TIMEOUT_ROUNDS * self.interval

    def _new_own_round(self, now: float) -> None:
        self.own_round += 1
        self.round = self.own_round
        self.hops = 0
        self.next_beacon = now + self.interval
