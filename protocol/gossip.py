"""The replication engine: tree broadcast, lazy announcements, anti-entropy, forks. Sans-I/O.

Shape (as aioquic): the agent's transport feeds ``receive(peer, data, now)`` with
each whole message a session delivers, drains ``next_event()``, sends what
``data_to_send(peer, now, max_bytes)`` returns, and re-arms one timer from
``get_timer()`` that calls ``handle_timer(now)``. ``now`` is monotonic seconds.
Storage stays in the agent: the engine asks it to verify and store entries
(:class:`EntriesReceived` → :meth:`GossipEngine.entries_stored`) and to read them
(:class:`EntriesRequested` → :meth:`GossipEngine.send_entries`).

Replication rules (docs/protocol.md §8, "Replication rules"):
- A new entry (published here, or stored from a push or a small repair) is pushed
  at once to the eager peers, our neighbours in the broadcast tree
  (protocol.tree), and announced (IHAVE, batched for ``lazy_delay``) to the others.
- An announced entry still missing ``ihave_timeout`` later is requested (WANT),
  preferably from its announcer. A push of nothing but duplicates from a peer that
  is not a tree neighbour earns it a PRUNE.
- Every ``anti_entropy_interval`` (jittered), and at once for a new peer, one peer
  gets our version-vector digest; on a mismatch the full vectors are exchanged and
  each side WANTs exactly the ranges it lacks, in windows of ``want_window``
  entries per peer.
- A fork proof (reported by the agent or received) goes to every peer at once;
  the origin is then ignored until an admin clears the fork (:meth:`clear_fork`);
  the conflict cleared does not quarantine the origin again.

Invariants:
- Every queue is bounded: per-peer control messages, eager pushes (over
  ``eager_queue_bytes`` a peer gets IHAVE instead), replies (requested from the
  agent only while under ``reply_queue_bytes``), the reorder buffer, WANTs served.
- ``receive`` either processes a whole message or raises ``RemoteProtocolError``
  without changing any state but counters.
- The engine draws no randomness of its own: choices come from a seeded :class:`Prng`.

The engine holds the state, the timers and the public API; what received messages
do is :mod:`protocol.gossip_receive`, what goes out to peers
:mod:`protocol.gossip_send`, and what to WANT :mod:`protocol.pull`.
"""


from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from protocol.entries import ForkProof, VerifiedEntry
from protocol.errors import EntraideError, LocalProtocolError, RemoteProtocolError
from protocol.gossip_receive import Receiver
from protocol.gossip_send import Sender, bump
from protocol.gossip_types import (
    EntriesReceived,
    EntriesRequested,
    ForkDetected,
    GossipEvent,
    GossipParams,
    PeerMisbehaved,
    PeerStats,
    PeerSynced,
)
from protocol.keys import PublicKey
from protocol.messages import (
    MAX_WANT_RANGES,
    PING_TOKEN_BYTES,
    Have,
    Ping,
    Want,
    WantRange,
    decode_message,
    message_kind,
)
from protocol.origins import OriginTable
from protocol.peer_state import Counters, PeerState
from protocol.prng import Prng
from protocol.pull import Puller
from protocol.tree import BroadcastTree

__all__ = [
    "EntriesReceived",
    "EntriesRequested",
    "ForkDetected",
    "GossipEngine",
    "GossipEvent",
    "GossipParams",
    "PeerMisbehaved",
    "PeerStats",
    "PeerSynced",
]


class GossipEngine:
    """Replicates every entry of every trusted origin among connected peers.

    One engine per node. All methods are synchronous and never block; none does
    I/O. After any call, drain :meth:`next_event`, send :meth:`data_to_send` for the
    peers and re-arm the timer from :meth:`get_timer`.
    """

    def __init__(
        self,
        local: PublicKey,
        params: GossipParams | None = None,
        *,
        seed: bytes,
        heads: Mapping[PublicKey, tuple[int, bytes]] | None = None,
        forks: Iterable[ForkProof] = (),
        cleared: Iterable[tuple[PublicKey, int]] = (),
        trusted: Iterable[PublicKey] | None = None,
    ) -> None:
        """Start from the ledger's state.

        Args:
            local: this node's key (it places the node in the broadcast tree).
            params: tunables (defaults if None).
            seed: seeds every random choice (peer for anti-entropy, jitter, tokens).
            heads: the ledger's head ``(seq, hash)`` for each origin it holds.
            forks: fork proofs the ledger holds, not cleared; those origins are ignored.
            cleared: ``(origin, seq)`` of the forks an admin cleared: the same
                conflicts seen again do not quarantine their origins.
            trusted: origins whose entries are replicated; None accepts any origin
                (the agent still checks trust before storing).

        Raises:
            LocalProtocolError: more origins than ``params.max_origins``.
        """
        self.params = params or GossipParams()
        self.local = local
        self._rng = Prng(seed)
        self._tree = BroadcastTree(local.key_id, self.params.beacon_interval)
        self._table = OriginTable(
            self.params, None if trusted is None else frozenset(k.key_id for k in trusted))
        self._peers: dict[PublicKey, PeerState] = {}
        self._events: deque[GossipEvent] = deque()
        self._timers: list[tuple[float, int, str, object]] = []
        self._scheduled: dict[tuple[str, object], float] = {}
        self._tick = itertools.count()
        self._totals = Counters()
        self._now = 0.0
        self._pull = Puller(self.params, self._table, self._peers, self._rng,
                            lambda at, kind, key: self._schedule(at, kind, key, earliest=True),
                            self._totals)
        self._send = Sender(self.params, self._table, self._tree, self._peers, self._events,
                            self._schedule, self._totals)
        self._recv = Receiver(self.params, self._table, self._tree, self._pull, self._peers,
                              self._events, self._send, self._totals)
        for key, (seq, digest) in (heads or {}).items():
            log = self._table.get(key.key_id, create=True, force=True)
            if log is None:
                raise LocalProtocolError("more origins than GossipParams.max_origins")
            log.set_key(key)
            self._table.advance(log, seq, digest)
        for origin, seq in cleared:
            self._table.note_cleared(origin.key_id, seq)
        for proof in forks:
            self._table.mark_forked(proof)

    # --- peers -------------------------------------------------------------------------

    @property
    def peers(self) -> list[PublicKey]:
        """Connected peers, in the order they were added."""
        return list(self._peers)

    def add_peer(self, peer: PublicKey, now: float) -> None:
        """A session with ``peer`` is up: start replicating with it (catch-up at once).

        Raises:
            LocalProtocolError: the peer is already added, or is this node.
        """
        self._now = now
        if peer in self._peers or peer == self.local:
            raise LocalProtocolError(f"cannot add peer {peer.fingerprint}")
        p = self._peers[peer] = PeerState(peer)
        self._send.control(p, Have(self.digest()))
        self._send.tree_out(self._tree.add_peer(peer, now))
        if ("ae", None) not in self._scheduled:
            self._schedule(now + self._jitter(self.params.anti_entropy_interval), "ae", None)
        if self.params.ping_interval > 0:
            self._schedule(now + self.params.ping_interval, "ping", peer)
        self._flush(now)

    def remove_peer(self, peer: PublicKey) -> None:
        """The session with ``peer`` ended: its WANTs are retried elsewhere, and the
        entries it sent that wait in the reorder buffer are dropped (unverified; honest
        copies come again). No-op if unknown."""
        p = self._peers.pop(peer, None)
        if p is None:
            return
        self._table.drop_peer(peer)
        self._pull.forget_peer(p)
        self._send.tree_out(self._tree.remove_peer(peer, self._now))
        self._schedule(self._now, "flush", None)

    def is_eager(self, peer: PublicKey) -> bool:
        """Whether new entries are pushed to ``peer`` (a tree neighbour) or announced."""
        return self._tree.eager(peer)

    @property
    def tree(self) -> BroadcastTree:
        """This node's view of the broadcast tree (read only)."""
        return self._tree

    def set_trusted(self, origins: Iterable[PublicKey] | None, now: float) -> None:
        """Replicate only ``origins`` from now on (None: any). Others are kept, ignored."""
        self._now = now
        self._table.set_trusted(None if origins is None else frozenset(k.key_id for k in origins))

    # --- the sans-I/O loop -------------------------------------------------------------

    def receive(self, peer: PublicKey, data: bytes, now: float) -> None:
        """Process one whole message from ``peer``.

        Raises:
            RemoteProtocolError: the message does not decode or breaks the protocol
                (entries that are not entries, an invalid fork proof). End the
                session; the engine's state is unchanged but for counters.
            LocalProtocolError: ``peer`` was not added.
        """
        p = self._peer(peer)
        self._now = now
        kind = message_kind(data)
        name = kind.name if kind is not None else "INVALID"
        bump(p.counters.frames_in, self._totals.frames_in, name, 1)
        bump(p.counters.bytes_in, self._totals.bytes_in, name, len(data))
        try:
            msg = decode_message(data)
        except EntraideError as exc:
            raise RemoteProtocolError(f"undecodable gossip message: {exc}") from exc
        self._recv.dispatch(p, msg, now)
        self._flush(now)

    def next_event(self) -> GossipEvent | None:
        """The next event for the agent, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self, peer: PublicKey, now: float,
                     max_bytes: int | None = None) -> list[bytes]:
        """Messages for ``peer``, most urgent first, up to about ``max_bytes``.

        Control messages come first, then eager pushes, then replies to WANTs, so a
        catch-up never delays live traffic. Give ``max_bytes`` as the room in the
        transport's buffer: what stays here is what backpressure acts on. Returns []
        for an unknown peer.
        """
        p = self._peers.get(peer)
        if p is None:
            return []
        self._now = now
        if not (p.control or p.push or p.replies or p.serving) and (
                p.ihave_due is None or p.ihave_due > now):
            return []  # the common case (asked for every peer after every event): no work
        if p.ihave_due is not None and p.ihave_due <= now:
            self._send.flush_ihave(p)
        frames = p.take(max_bytes, self.params.frame_bytes)
        for frame in frames:
            self._send.count_out(p, frame)
        self._send.serve(p)
        return [frame.data for frame in frames]

    def frames_to_send(self, now: float) -> list[tuple[PublicKey, bytes]]:
        """Everything queued, for every peer: ``[(peer, message), ...]``."""
        return [(key, data) for key in list(self._peers)
                for data in self.data_to_send(key, now)]

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None."""
        while self._timers:
            at, _, kind, key = self._timers[0]
            if self._scheduled.get((kind, key)) == at:
                return at
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now``."""
        self._now = now
        while self._timers and self._timers[0][0] <= now:
            at, _, kind, key = heapq.heappop(self._timers)
            if self._scheduled.get((kind, key)) != at:
                continue
            del self._scheduled[(kind, key)]
            self._on_timer(kind, key, now)
        self._flush(now)

    # --- the agent's reports -----------------------------------------------------------

    def publish(self, entry: VerifiedEntry, now: float) -> None:
        """The ledger stored a new entry written here: push it to the federation.

        Raises:
            LocalProtocolError: ``entry`` does not follow the origin's head.
        """
        if not self.publish_many((entry,), now):
            raise LocalProtocolError(f"published seq {entry.seq} after head "
                                     f"{self._table.logs[entry.origin.key_id].seq}")

    def publish_many(self, entries: Sequence[VerifiedEntry], now: float) -> int:
        """:meth:`publish` for entries committed together, in order, with one flush.

        A committed group of own entries is common (group commit, batched submits);
        one flush per group instead of per entry saves the per-peer walk each time.

        Returns:
            How many entries, from the first, were taken (stale ones count as taken):
            ``len(entries)`` unless one does not follow its origin's head; that one and
            those after it are left for the caller to publish once the gap is filled.
        """
        self._now = now
        taken = 0
        for entry in entries:
            log = self._table.get(entry.origin.key_id, create=True, force=True)
            if log is not None and log.active and entry.seq > log.seq:
                if entry.seq != log.seq + 1:
                    break
                log.set_key(entry.origin)
                self._table.advance(log, entry.seq, entry.hash)
                self._send.forward(log, entry.seq, entry.raw, live=True, source=None, now=now)
            taken += 1
        self._flush(now)
        return taken

    def entries_stored(
        self,
        batch: int | None,
        stored: Sequence[VerifiedEntry],
        now: float,
        *,
        duplicates: int = 0,
        invalid: Sequence[bytes] = (),
        forks: Sequence[ForkProof] = (),
    ) -> None:
        """Report what the ledger did with an :class:`EntriesReceived` batch.

        Args:
            batch: the event's ``batch``; None for entries stored by other means,
                which are then announced, not pushed.
            stored: the entries newly stored, in the order stored.
            duplicates: how many were already in the ledger.
            invalid: raws that failed verification; their senders are reported with
                :class:`PeerMisbehaved`.
            forks: fork proofs the ledger found (as :meth:`fork_detected`).

        Entries of the batch neither stored nor duplicates are forgotten and will be
        requested again.

        Raises:
            LocalProtocolError: a stored entry skips past the origin's head.
        """
        self._now = now
        advanced, culprits = self._table.settle(batch, stored, invalid)
        for log, entry, item in advanced:
            self._send.forward(log, entry.seq, entry.raw, live=item is not None and item.live,
                               source=item.peer if item is not None else None, now=now)
        for culprit, count in culprits.items():
            self._events.append(PeerMisbehaved(culprit, f"{count} entries failed verification"))
        if duplicates:
            self._totals.duplicates += duplicates
        for proof in forks:
            self._recv.on_fork(proof, None)
        self._flush(now)

    def fork_detected(self, proof: ForkProof, now: float) -> None:
        """The ledger found a fork: gossip the proof to every peer, ignore the origin."""
        self._now = now
        self._recv.on_fork(proof, None)
        self._flush(now)

    def clear_fork(self, origin: PublicKey, head: tuple[int, bytes] | None, now: float, *,
                   seqs: Iterable[int] = ()) -> bool:
        """An admin cleared ``origin``'s fork in the ledger: replicate it again.

        The origin's entries are accepted and requested again from ``head`` on: every
        peer gets a HAVE probe, so the vectors that follow show what each one holds.
        The conflict of the proof the engine held, and those at ``seqs``, are
        remembered as cleared: a FORK for them (peers that have not cleared it keep
        sending theirs) is ignored, as the ledger ignores it; a fork at another seq
        quarantines the origin again.

        Args:
            origin: the origin whose fork was cleared.
            head: the ledger's head ``(seq, hash)`` for ``origin`` now; None if it
                holds no entry of it.
            now: monotonic seconds.
            seqs: further seqs of this origin's conflicts the ledger cleared (it may
                hold proofs the engine never saw, e.g. imported ones).

        Returns:
            True if the origin was marked forked here; False changes nothing but the
            conflicts remembered as cleared.

        Raises:
            LocalProtocolError: ``head`` is not a seq >= 1 and a 32-byte hash.
        """
        if head is not None and (head[0] < 1 or len(head[1]) != 32):
            raise LocalProtocolError(f"bad head for {origin.fingerprint}: seq {head[0]}")
        self._now = now
        kid = origin.key_id
        for seq in seqs:
            self._table.note_cleared(kid, seq)
        if not self._table.clear_fork(kid, head):
            return False
        probe = Have(self.digest())
        for p in self._peers.values():
            p.forks_sent.discard(kid)
            self._send.control(p, probe)
        self._flush(now)
        return True

    def send_entries(self, peer: PublicKey, raws: Sequence[bytes], *,
                     request: int | None = None) -> None:
        """Queue entries read from the ledger for ``peer``: the answer to
        :class:`EntriesRequested` ``request``. A no-op if the peer is gone."""
        p = self._peers.get(peer)
        if p is None:
            return
        if request is not None:
            asked = p.requests.pop(request, None)
            if asked is not None and raws:
                kid, first, last = asked
                if first + len(raws) <= last:
                    p.serving.appendleft((kid, first + len(raws), last))
        p.queue_replies(list(raws), self.params.frame_bytes)
        self._send.serve(p)

    # --- inspection --------------------------------------------------------------------

    def digest(self) -> bytes:
        """The digest of our version vector and forked origins, as sent in HAVE."""
        return self._table.digest()

    def vector(self) -> dict[bytes, tuple[int, bytes]]:
        """Origin key id → ledger head ``(seq, hash)``, for every replicated origin."""
        return {log.kid: (log.seq, log.hash) for log in self._table.vector_logs()}

    def forked(self) -> frozenset[bytes]:
        """Key ids of the origins known to have forked (and not cleared)."""
        return frozenset(self._table.forks)

    def backlog(self) -> int:
        """Entries connected peers hold and the ledger does not (catch-up progress)."""
        best: dict[bytes, int] = {}
        for p in self._peers.values():
            for kid, seq in p.told.items():
                best[kid] = max(best.get(kid, 0), seq)
        return sum(max(0, best.get(log.kid, 0) - log.seq)
                   for log in self._table.logs.values() if log.active)

    def heads_heard(self, origin: PublicKey) -> dict[PublicKey, int]:
        """What each connected peer whose whole vector reached us this session says it
        holds of ``origin`` (0: nothing). A restored node asks this of its own origin
        before it signs again (docs/operations.md, "Back up and restore")."""
        kid = origin.key_id
        return {p.key: p.told.get(kid, 0) for p in self._peers.values() if p.heard}

    def peer_heads(self, peer: PublicKey) -> dict[bytes, int] | None:
        """Origin key id → the highest seq ``peer`` has shown it holds (a HAVE vector
        or a digest equal to ours, IHAVE, entries it sent, WANTs), or None until its
        whole vector reached us this session. The agent derives a peer's lag from it
        (docs/protocol.md §8, "Lag").

        Raises:
            LocalProtocolError: unknown peer.
        """
        p = self._peer(peer)
        return dict(p.told) if p.heard else None

    def wants_in_flight(self) -> list[tuple[PublicKey, bytes, int, int]]:
        """Requests sent and not yet fulfilled: (peer, origin key id, from_seq, to_seq)."""
        return [(w.peer, log.kid, w.from_seq, w.to_seq)
                for log in self._table.logs.values() for w in log.wants]

    def peer_stats(self, peer: PublicKey) -> PeerStats:
        """Counters of a connected peer.

        Raises:
            LocalProtocolError: unknown peer.
        """
        p = self._peer(peer)
        return p.counters.snapshot(p.rtt)

    def totals(self) -> PeerStats:
        """Counters summed over every peer since the engine started."""
        return self._totals.snapshot(None)

    def queued_bytes(self, peer: PublicKey) -> int:
        """Bytes waiting to be sent to ``peer`` (0 if unknown)."""
        p = self._peers.get(peer)
        return p.queued_bytes() if p is not None else 0

    def buffered_bytes(self, peer: PublicKey | None = None) -> int:
        """Bytes in the reorder buffer: all of them, or those ``peer`` sent."""
        if peer is None:
            return self._table.buffer_bytes
        return self._table.peer_bytes.get(peer, 0)

    # --- bookkeeping -------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        """End of every entry point: hand entries to the agent, schedule and queue WANTs."""
        event = self._table.take_batch()
        if event is not None:
            self._events.append(event)
        for log, peer, seq in self._table.conflicts:
            p = self._peers.get(peer)
            if p is not None:
                self._pull.probe(log, p, seq, now)
        self._table.conflicts.clear()
        lagging = self._table.lagging
        for log in list(lagging):
            if not log.active or (log.known <= log.top_seq and not log.wants):
                lagging.pop(log, None)
            else:
                self._pull.request(log, now)
        for p in self._peers.values():
            if p.want_out:
                ranges = [WantRange(*r) for r in p.want_out]
                p.want_out = []
                for i in range(0, len(ranges), MAX_WANT_RANGES):
                    self._send.control(p, Want(tuple(ranges[i:i + MAX_WANT_RANGES])))
            if p.serving:
                self._send.serve(p)
        self._schedule(self._tree.next_timer(), "tree", None)

    def _on_timer(self, kind: str, key: object, now: float) -> None:
        """Run timer ``kind``; ``key`` is a peer's key, an origin's key id, or None."""
        p = self._peers.get(key) if isinstance(key, PublicKey) else None
        log = self._table.logs.get(key) if isinstance(key, bytes) else None
        if kind == "ae":
            if self._peers:
                chosen = self._rng.choice(list(self._peers.values()))
                self._send.control(chosen, Have(self.digest()))
            self._schedule(now + self._jitter(self.params.anti_entropy_interval), "ae", None)
        elif kind == "tree":
            self._send.tree_out(self._tree.on_timer(now))
        elif kind == "ihave" and p is not None and p.ihave_due is not None:
            self._send.flush_ihave(p)
        elif kind == "step" and log is not None:
            self._table.lagging[log] = None
        elif kind == "want_timeout" and log is not None:
            self._pull.expire(log, now)
        elif kind == "ping" and p is not None:
            p.ping_token = self._rng.randbytes(PING_TOKEN_BYTES)
            p.ping_sent = now
            self._send.control(p, Ping(p.ping_token))
            self._schedule(now + self.params.ping_interval, "ping", p.key)
        # "flush": nothing more; handle_timer's _flush does the work.

    def _schedule(self, at: float, kind: str, key: object, *, earliest: bool = False) -> None:
        """Arm timer ``(kind, key)`` at ``at``; with ``earliest``, only if that is sooner."""
        current = self._scheduled.get((kind, key))
        if current is not None and (current <= at if earliest else current == at):
            return
        self._scheduled[(kind, key)] = at
        heapq.heappush(self._timers, (at, next(self._tick), kind, key))

    def _jitter(self, interval: float) -> float:
        return interval * self._rng.uniform(0.5, 1.5)

    def _peer(self, peer: PublicKey) -> PeerState:
        p = self._peers.get(peer)
        if p is None:
            raise LocalProtocolError(f"unknown peer {peer.fingerprint}")
        return p
