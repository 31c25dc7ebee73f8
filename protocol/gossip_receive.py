"""The gossip engine's inbound side: what each received message does.

``dispatch`` takes one decoded message from a peer: ENTRIES are checked whole, then
classified (new, duplicate, dropped) into the origin table's batch for the agent;
IHAVE and vectors (HAVE) make entries known and eligible to be pulled; WANTs queue
ranges to serve; tree messages (BEACON, GRAFT, PRUNE) go to the broadcast tree; a
FORK proof quarantines its origin and goes to every other peer (docs/protocol.md §8,
"Replication rules"). Peer misbehaviour is a ``RemoteProtocolError``, raised before
any state but counters changes.

One :class:`Receiver` per :class:`~protocol.gossip.GossipEngine`, sharing its state
(as :class:`~protocol.pull.Puller` does); what it sends goes through the
engine's :class:`~protocol.gossip_send.Sender`.
"""

from __future__ import annotations

from collections import deque

from protocol.entries import ForkProof, decode_fork_proof
from protocol.errors import EntraideError, RemoteProtocolError
from protocol.gossip_send import Sender
from protocol.gossip_types import ForkDetected, GossipEvent, GossipParams, PeerSynced
from protocol.keys import PublicKey
from protocol.messages import (
    HEAD_BYTES,
    MAX_FORKED,
    Beacon,
    Entries,
    Fork,
    Graft,
    Have,
    IHave,
    Message,
    Ping,
    Pong,
    Prune,
    VectorItem,
    Want,
    encode_message,
    peek_entry,
)
from protocol.origins import STEP_CAP, OriginTable
from protocol.peer_state import Counters, PeerState
from protocol.pull import Puller
from protocol.tree import BroadcastTree

__all__ = ["Receiver"]

_PRUNE = encode_message(Prune())


class Receiver:
    """Applies the messages peers send to one engine's state."""

    def __init__(self, params: GossipParams, table: OriginTable, tree: BroadcastTree,
                 pull: Puller, peers: dict[PublicKey, PeerState], events: deque[GossipEvent],
                 send: Sender, totals: Counters) -> None:
        self.params = params
        self.table = table
        self.tree = tree
        self.pull = pull
        self.peers = peers
        self.events = events
        self.send = send
        self.totals = totals

    def dispatch(self, p: PeerState, msg: Message, now: float) -> None:
        """Apply one message from ``p``.

        Raises:
            RemoteProtocolError: a non-entry in ENTRIES or an invalid fork proof; an
                ENTRIES message is rejected whole, before any state but counters changes.
        """
        if isinstance(msg, Entries):
            self._on_entries(p, msg, now)
        elif isinstance(msg, IHave):
            self._on_ihave(p, msg, now)
        elif isinstance(msg, Want):
            self._on_want(p, msg)
        elif isinstance(msg, Have):
            self._on_have(p, msg, now)
        elif isinstance(msg, Beacon):
            self.send.tree_out(self.tree.on_beacon(p.key, msg, now))
        elif isinstance(msg, Graft):
            self.tree.on_graft(p.key)
        elif isinstance(msg, Prune):
            self.tree.on_prune(p.key)
        elif isinstance(msg, Fork):
            try:
                proof = decode_fork_proof(msg.proof)
            except EntraideError as exc:
                raise RemoteProtocolError(f"invalid fork proof: {exc}") from exc
            self.on_fork(proof, p)
        elif isinstance(msg, Ping):
            self.send.control(p, Pong(msg.token))
        elif isinstance(msg, Pong) and p.ping_token is not None and msg.token == p.ping_token:
            p.rtt = now - p.ping_sent
            p.ping_token = None

    def _on_entries(self, p: PeerState, msg: Entries, now: float) -> None:
        # Check every header before touching any state: one bad entry rejects the message.
        headers = []
        for raw in msg.raws:
            try:
                header = peek_entry(raw)
            except EntraideError as exc:
                raise RemoteProtocolError(f"ENTRIES holds a non-entry: {exc}") from exc
            headers.append((self.table.kid(header.origin), header))
        payload = sum(len(raw) for raw in msg.raws)
        for c in (p.counters, self.totals):
            c.entries_in += len(msg.raws)
            c.payload_in += payload
        new = dups = 0
        for raw, (kid, header) in zip(msg.raws, headers, strict=True):
            log = self.table.get(kid, create=True)
            if (log is None or not log.active
                    or (log.origin is not None and log.origin != header.origin)):
                self.send.drop(p)  # untrusted, forked, over the cap, or a key id collision
                continue
            if log.origin is None:
                log.origin = header.origin  # checked by the agent's verification
            p.tell(kid, header.seq)
            live = msg.push or self.pull.live(log, header.seq)
            self.pull.progress(log, p.key, header.seq, now)
            verdict = self.table.classify(log, header.seq, header.prev, header.hash, raw, p.key,
                                           live, now)
            self.pull.step(log)
            dups += verdict == "dup"
            new += verdict == "new"
            if verdict == "drop":
                self.send.drop(p)
        if dups:
            p.counters.duplicates += dups
            self.totals.duplicates += dups
        if msg.push and dups and not new and not self.tree.eager(p.key):
            # Pushed to us by a peer that is not our tree neighbour: a stale view of
            # the tree (a PRUNE or beacon went missing). Tell it to stop.
            self.send.control(p, _PRUNE)

    def _on_ihave(self, p: PeerState, msg: IHave, now: float) -> None:
        for item in msg.items:
            log = self.table.get(item.origin, create=True)
            if log is None or not log.active:
                continue
            p.tell(item.origin, item.seq)
            if log.note_known(item.seq, now + self.params.ihave_timeout, now, STEP_CAP):
                log.announcer = p.key
                self.table.lagging[log] = None
                self.pull.step(log)

    def _on_want(self, p: PeerState, msg: Want) -> None:
        for rng in msg.ranges:
            log = self.table.logs.get(rng.origin)
            if log is None or not log.active or log.seq == 0:
                continue
            p.tell(rng.origin, rng.from_seq - 1)
            last = min(rng.to_seq, log.seq)
            if rng.from_seq > last:
                continue
            if len(p.serving) >= self.params.serve_queue:
                self.send.drop(p)
                continue
            # Small ranges are live repairs: serve them before any bulk catch-up.
            if last - rng.from_seq < self.params.graft_max_gap:
                p.serving.appendleft((rng.origin, rng.from_seq, last))
            else:
                p.serving.append((rng.origin, rng.from_seq, last))

    def _on_have(self, p: PeerState, msg: Have, now: float) -> None:
        mine = self.table.digest()
        if msg.vector is None:
            if msg.digest == mine:
                p.heard = True
                self._synced(p, mine)
            else:
                self._send_vector(p)
            return
        p.heard = True
        theirs: dict[bytes, int] = {}
        for item in msg.vector:
            theirs[item.origin] = item.seq
            log = self.table.get(item.origin, create=True)
            if log is None or not log.active:
                continue
            p.tell(item.origin, item.seq)
            if item.seq > log.seq:
                # Wait for the eager copy like after an announcement: the newest
                # entries in a vector are often still on their way down the tree.
                log.swept = max(log.swept, item.seq)
                if log.note_known(item.seq, now + self.params.ihave_timeout, now, STEP_CAP):
                    self.table.lagging[log] = None
                    self.pull.step(log)
            else:
                ours = log.hash_at(item.seq)
                if ours is not None and ours[:HEAD_BYTES] != item.head:
                    self.pull.probe(log, p, item.seq, now)
        their_forks = set(msg.forked)
        for kid, proof in self.table.forks.items():
            if kid not in their_forks and kid not in p.forks_sent:
                p.forks_sent.add(kid)
                self.send.control(p, Fork(proof))
        lacks = bool(their_forks - self.table.forks.keys()) or any(
            log.seq > theirs.get(log.kid, 0) for log in self.table.vector_logs())
        if lacks and p.last_full_sent != mine:
            self._send_vector(p)
        if msg.digest == mine:
            self._synced(p, mine)

    def _synced(self, p: PeerState, digest: bytes) -> None:
        if p.synced_digest != digest:
            p.synced_digest = digest
            # Equal digests: the peer holds exactly our vector (its heads, for the lag
            # the agent shows; once per new digest, not per HAVE).
            for log in self.table.logs.values():
                if log.active and log.seq > 0:
                    p.tell(log.kid, log.seq)
            self.events.append(PeerSynced(p.key))

    def _send_vector(self, p: PeerState) -> None:
        mine = self.table.digest()
        p.last_full_sent = mine
        vector = tuple(VectorItem(log.kid, log.seq, log.hash[:HEAD_BYTES])
                       for log in self.table.vector_logs())
        self.send.control(p, Have(mine, vector, tuple(sorted(self.table.forks)[:MAX_FORKED])))

    def on_fork(self, proof: ForkProof, source: PeerState | None) -> None:
        """Quarantine a trusted origin that forked and send the proof to every peer but
        ``source`` (None: found by the ledger); a proof from a peer is reported as
        :class:`ForkDetected`."""
        kid = proof.origin.key_id
        if self.table.trusted is not None and kid not in self.table.trusted:
            return
        if kid in self.table.forks:
            if source is not None:
                source.forks_sent.add(kid)
            return
        if not self.table.mark_forked(proof):
            return
        data = self.table.forks[kid]
        for p in self.peers.values():
            p.forks_sent.add(kid)
            if p is not source:
                self.send.control(p, Fork(data))
        if source is not None:
            self.events.append(ForkDetected(proof, source.key))
