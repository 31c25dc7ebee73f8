"""The gossip engine's outbound side: what each peer is sent, and the counters of it.

New entries fan out through the broadcast tree: pushed at once to eager peers (tree
neighbours) while their push queue has room, otherwise announced in IHAVE batches
sent ``lazy_delay`` later (docs/protocol.md §8, "Replication rules"). Control messages
go to each peer's bounded control queue (a full one counts a drop). Entries a peer
WANTs are asked of the agent (:class:`EntriesRequested`) a batch at a time while its
reply queue has room. Outbound frames are counted per peer and in total.

One :class:`Sender` per :class:`~protocol.gossip.GossipEngine`, sharing its peer map,
origin table, tree, event queue and counters (as :class:`~protocol.pull.Puller` does).
"""

from __future__ import annotations

import itertools
from collections import deque

from protocol.gossip_types import EntriesRequested, GossipEvent, GossipParams
from protocol.keys import PublicKey
from protocol.messages import MAX_IHAVE, Announcement, IHave, Message
from protocol.origins import OriginLog, OriginTable
from protocol.peer_state import Counters, Frame, PeerState
from protocol.pull import Schedule
from protocol.tree import BroadcastTree

__all__ = ["Sender", "bump"]

_SERVE_INFLIGHT = 2
"""Entry requests to the agent outstanding per peer."""


class Sender:
    """Queues what goes out to each peer of one engine."""

    def __init__(self, params: GossipParams, table: OriginTable, tree: BroadcastTree,
                 peers: dict[PublicKey, PeerState], events: deque[GossipEvent],
                 schedule: Schedule, totals: Counters) -> None:
        self.params = params
        self.table = table
        self.tree = tree
        self.peers = peers
        self.events = events
        self.schedule = schedule
        self.totals = totals
        self._request_ids = itertools.count(1)

    def forward(self, log: OriginLog, seq: int, raw: bytes, *, live: bool,
                source: PublicKey | None, now: float) -> None:
        """Push a newly stored entry to tree neighbours, announce it to the others."""
        kid = log.kid
        for p in self.peers.values():
            if p.key == source or p.known(kid) >= seq:
                continue
            if live and self.tree.eager(p.key):
                if p.push_bytes + len(raw) <= self.params.eager_queue_bytes:
                    p.push.append(raw)
                    p.push_bytes += len(raw)
                    p.sent[kid] = seq
                    continue
                p.counters.backpressured += 1
                self.totals.backpressured += 1
            if seq > p.ihave.get(kid, 0):
                p.ihave[kid] = seq
            if p.ihave_due is None:
                p.ihave_due = now + self.params.lazy_delay
                self.schedule(p.ihave_due, "ihave", p.key)

    def flush_ihave(self, p: PeerState) -> None:
        """Queue ``p``'s batched announcements (what it may not know yet) as IHAVEs."""
        items = [Announcement(kid, seq) for kid, seq in p.ihave.items() if p.known(kid) < seq]
        p.ihave.clear()
        p.ihave_due = None
        for a in items:
            p.sent[a.origin] = a.seq
        for i in range(0, len(items), MAX_IHAVE):
            self.control(p, IHave(tuple(items[i:i + MAX_IHAVE])))

    def serve(self, p: PeerState) -> None:
        """Ask the agent for the next entries ``p`` wants, while its reply queue has room."""
        while (p.serving and len(p.requests) < _SERVE_INFLIGHT
               and p.reply_bytes < self.params.reply_queue_bytes):
            kid, first, last = p.serving.popleft()
            log = self.table.logs.get(kid)
            key = log.public_key() if log is not None and log.active else None
            if key is None:
                continue
            end = min(last, first + self.params.serve_batch - 1)
            if end < last:
                p.serving.appendleft((kid, end + 1, last))
            rid = next(self._request_ids)
            p.requests[rid] = (kid, first, end)
            self.events.append(EntriesRequested(p.key, key, first, end,
                                                 self.params.serve_bytes, rid))

    def tree_out(self, messages: list[tuple[PublicKey, Message]]) -> None:
        """Queue the broadcast tree's messages (GRAFT, PRUNE, BEACON) to connected peers."""
        for peer, msg in messages:
            p = self.peers.get(peer)
            if p is not None:
                self.control(p, msg)

    def drop(self, p: PeerState) -> None:
        """Count something of ``p``'s dropped (a full queue, an entry not taken)."""
        p.counters.dropped += 1
        self.totals.dropped += 1

    def control(self, p: PeerState, msg: Message | bytes) -> None:
        """Queue a control message for ``p``; over ``control_queue`` it is dropped."""
        if not p.queue_control(msg, self.params.control_queue):
            self.drop(p)

    def count_out(self, p: PeerState, frame: Frame) -> None:
        """Count a frame taken for sending to ``p``."""
        bump(p.counters.frames_out, self.totals.frames_out, frame.kind, 1)
        bump(p.counters.bytes_out, self.totals.bytes_out, frame.kind, len(frame.data))
        if frame.entries:
            for c in (p.counters, self.totals):
                c.entries_out += frame.entries
                c.payload_out += frame.payload


def bump(mine: dict[str, int], total: dict[str, int], key: str, n: int) -> None:
    """Add ``n`` under ``key`` to a peer's counter and to the engine's total."""
    mine[key] = mine.get(key, 0) + n
    total[key] = total.get(key, 0) + n
