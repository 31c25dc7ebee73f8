"""Unit tests of the gossip engine: one engine, hand-made messages, explicit time."""

from __future__ import annotations

import pytest

from bench.sim import Ledger, make_chain, make_identity, verify_cached
from protocol.entries import ForkProof, VerifiedEntry, detect_fork
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.gossip import (
    EntriesReceived,
    EntriesRequested,
    ForkDetected,
    GossipEngine,
    GossipEvent,
    GossipParams,
    PeerMisbehaved,
    PeerSynced,
)
from protocol.keys import Identity
from protocol.messages import (
    HEAD_BYTES,
    Announcement,
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
    WantRange,
    decode_message,
    encode_message,
)

PARAMS = GossipParams(ping_interval=0)


def ident(n: int) -> Identity:
    return make_identity(f"unit/{n}")


ME, P1, P2, P3 = (ident(i) for i in range(4))
AUTHOR = ident(10)
CHAIN = make_chain(AUTHOR, 40, body_bytes=100)
KID = AUTHOR.public_key.key_id


class Node:
    """An engine and the thin agent around it (real verification, in-memory ledger)."""

    def __init__(self, identity: Identity = ME, params: GossipParams = PARAMS,
                 ledger: Ledger | None = None, **kwargs: object) -> None:
        self.key = identity.public_key
        self.ledger = ledger or Ledger()
        self.engine = GossipEngine(self.key, params, seed=b"unit", heads=self.ledger.heads(),
                                   **kwargs)  # type: ignore[arg-type]
        self.events: list[GossipEvent] = []
        self.invalid: list[bytes] = []

    def pump(self, now: float) -> None:
        """Answer every event as the agent would; keep them in ``events``."""
        while (event := self.engine.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, EntriesReceived):
                stored: list[VerifiedEntry] = []
                forks: list[ForkProof] = []
                invalid: list[bytes] = []
                for raw in event.raws:
                    try:
                        entry = verify_cached(raw)
                    except Exception:
                        invalid.append(raw)
                        continue
                    result = self.ledger.add(entry)
                    if result == "stored":
                        stored.append(entry)
                    elif isinstance(result, ForkProof):
                        forks.append(result)
                self.engine.entries_stored(event.batch, stored, now, invalid=invalid,
                                           forks=forks)
            elif isinstance(event, EntriesRequested):
                raws = self.ledger.read(event.origin, event.from_seq, event.to_seq,
                                        event.max_bytes)
                self.engine.send_entries(event.peer, raws, request=event.request)

    def send(self, peer: Identity, msg: Message, now: float) -> None:
        self.engine.receive(peer.public_key, encode_message(msg), now)
        self.pump(now)

    def out(self, peer: Identity, now: float) -> list[Message]:
        """Decoded messages the engine wants to send to ``peer``."""
        msgs = [decode_message(d) for d in self.engine.data_to_send(peer.public_key, now)]
        self.pump(now)
        return msgs

    def tick(self, now: float) -> None:
        self.engine.handle_timer(now)
        self.pump(now)

    def of(self, kind: type) -> list[GossipEvent]:
        return [e for e in self.events if isinstance(e, kind)]


def held(node: Node) -> int:
    return len(node.ledger.logs.get(AUTHOR.public_key, []))


def only(msgs: list[Message], kind: type) -> list[Message]:
    return [m for m in msgs if isinstance(m, kind)]


def push(*entries: VerifiedEntry) -> Entries:
    return Entries(tuple(e.raw for e in entries), True)


def reply(*entries: VerifiedEntry) -> Entries:
    return Entries(tuple(e.raw for e in entries), False)


def connect(node: Node, *peers: Identity, now: float = 0.0) -> None:
    for peer in peers:
        node.engine.add_peer(peer.public_key, now)
        node.out(peer, now)  # the opening HAVE and BEACON


# --- params and peers ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"want_window": 0}, {"lazy_delay": -1},
                                 {"max_origins": 10**6}, {"frame_bytes": 1 << 20}])
def test_params_reject_out_of_range_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GossipParams(**bad)  # type: ignore[arg-type]


def test_engine_refuses_unknown_duplicate_and_self_peers() -> None:
    node = Node()
    with pytest.raises(LocalProtocolError):
        node.engine.receive(P1.public_key, encode_message(Graft()), 0)
    node.engine.add_peer(P1.public_key, 0)
    with pytest.raises(LocalProtocolError):
        node.engine.add_peer(P1.public_key, 0)
    with pytest.raises(LocalProtocolError):
        node.engine.add_peer(ME.public_key, 0)
    node.engine.remove_peer(P2.public_key)  # unknown: a no-op
    assert node.engine.data_to_send(P2.public_key, 0) == []


def test_engine_new_peer_gets_our_digest_at_once() -> None:
    node = Node()
    node.engine.add_peer(P1.public_key, 0)
    msgs = node.out(P1, 0)
    haves = only(msgs, Have)
    assert haves == [Have(node.engine.digest())]
    assert only(msgs, Beacon)


def test_engine_in_sync_reconnect_costs_a_few_hundred_bytes() -> None:
    # Two nodes holding the same 30 origins x 50 entries reconnect.
    ledger = Ledger()
    for i in range(30):
        for entry in make_chain(ident(100 + i), 50, body_bytes=10):
            ledger.add(entry)
    a = Node(ME, ledger=ledger)
    b = Node(P1, ledger=ledger)
    a.engine.add_peer(P1.public_key, 0)
    b.engine.add_peer(ME.public_key, 0)
    wire = 0
    for _ in range(10):
        moved = 0
        for src, dst, peer in ((a, b, P1), (b, a, ME)):
            for data in src.engine.data_to_send(peer.public_key, 0):
                moved += 1
                wire += len(data)
                dst.engine.receive(src.key, data, 0)
                dst.pump(0)
        if not moved:
            break
    assert a.of(PeerSynced) and b.of(PeerSynced)
    assert not a.of(EntriesReceived) and not b.of(EntriesRequested)
    print(f"\nin-sync reconnect: {wire} bytes on the wire (both ways)")
    assert wire <= 512


# --- hostile input -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",
    b"\x91\x63",                                            # unknown kind
    encode_message(Entries((b"not an entry",), True)),
    encode_message(Fork(b"not a proof")),
    encode_message(Fork(CHAIN[0].raw)),
])
def test_engine_hostile_message_raises_remote_protocol_error_and_changes_nothing(
        data: bytes) -> None:
    node = Node()
    connect(node, P1)
    digest, vector = node.engine.digest(), node.engine.vector()
    with pytest.raises(RemoteProtocolError):
        node.engine.receive(P1.public_key, data, 1)
    assert node.engine.next_event() is None
    assert (node.engine.digest(), node.engine.vector()) == (digest, vector)
    assert node.engine.data_to_send(P1.public_key, 1) == []


def test_engine_reports_senders_of_entries_that_fail_verification() -> None:
    node = Node()
    connect(node, P1)
    forged = bytearray(CHAIN[0].raw)
    forged[-1] ^= 1  # breaks the signature, not the header
    node.send(P1, Entries((bytes(forged),), True), 1)
    assert [e.peer for e in node.of(PeerMisbehaved)] == [P1.public_key]
    assert held(node) == 0
    # The entry was forgotten, so the genuine one is taken when it comes.
    node.send(P1, push(CHAIN[0]), 2)
    assert held(node) == 1


def test_engine_ignores_absurd_wants_without_crashing() -> None:
    node = Node()
    connect(node, P1)
    for entry in CHAIN[:3]:
        node.ledger.add(entry)
        node.engine.publish(entry, 0)
    node.send(P1, Want((WantRange(KID, 10, 20), WantRange(b"x" * 8, 1, 5))), 1)
    assert not node.of(EntriesRequested)


# --- ordering, gaps and requests -------------------------------------------------------


def test_engine_hands_entries_in_chain_order_buffering_the_early_ones() -> None:
    node = Node()
    connect(node, P1, P2)
    node.send(P1, push(CHAIN[2]), 1)
    assert not node.of(EntriesReceived)  # ahead of a gap: buffered
    node.send(P2, push(CHAIN[0]), 1.01)
    node.send(P2, push(CHAIN[1]), 1.02)
    handed = [raw for e in node.of(EntriesReceived) for raw in e.raws]  # type: ignore[attr-defined]
    assert handed == [CHAIN[0].raw, CHAIN[1].raw, CHAIN[2].raw]
    assert held(node) == 3


def test_engine_wants_a_gap_only_after_the_ihave_timeout() -> None:
    node = Node()
    connect(node, P1)
    node.send(P1, push(CHAIN[4]), 1)
    assert not only(node.out(P1, 1), Want)
    node.tick(1 + PARAMS.ihave_timeout)
    wants = only(node.out(P1, 1 + PARAMS.ihave_timeout), Want)
    assert wants == [Want((WantRange(KID, 1, 4),))]
    node.send(P1, reply(*CHAIN[:4]), 2)
    assert held(node) == 5


def test_engine_announcement_is_requested_unless_the_push_arrives_first() -> None:
    node = Node()
    connect(node, P1, P2)
    node.send(P1, IHave((Announcement(KID, 2),)), 1)
    node.send(P2, push(CHAIN[0], CHAIN[1]), 1.1)
    node.tick(2)
    assert not only(node.out(P1, 2), Want)
    node.send(P1, IHave((Announcement(KID, 3),)), 3)
    node.tick(3 + PARAMS.ihave_timeout)
    assert only(node.out(P1, 3 + PARAMS.ihave_timeout), Want) == [Want((WantRange(KID, 3, 3),))]


def test_engine_anti_entropy_wants_exactly_the_missing_ranges() -> None:
    other = [make_chain(ident(20), 3), make_chain(ident(21), 5)]
    ours = Ledger()
    for entry in CHAIN[:4] + other[1]:
        ours.add(entry)
    node = Node(ledger=ours)
    connect(node, P1)
    theirs = Ledger()
    for entry in CHAIN[:10] + other[0] + other[1]:
        theirs.add(entry)
    vector = tuple(sorted((VectorItem(k.key_id, seq, h[:HEAD_BYTES])
                           for k, (seq, h) in theirs.heads().items()),
                          key=lambda item: item.origin))
    node.send(P1, Have(b"\x00" * 16, vector, ()), 1)
    assert not only(node.out(P1, 1), Want)  # the newest may still be on their way
    node.tick(1 + PARAMS.ihave_timeout)
    wants = only(node.out(P1, 2), Want)
    ranges = sorted((r.origin, r.from_seq, r.to_seq) for w in wants for r in w.ranges)  # type: ignore[attr-defined]
    assert ranges == sorted([(KID, 5, 10), (ident(20).public_key.key_id, 1, 3)])


def test_engine_full_vector_answers_a_digest_that_differs() -> None:
    node = Node()
    for entry in CHAIN[:2]:
        node.ledger.add(entry)
    node = Node(ledger=node.ledger)
    connect(node, P1)
    node.send(P1, Have(b"\x01" * 16), 1)
    (have,) = only(node.out(P1, 1), Have)
    assert have.vector == (VectorItem(KID, 2, CHAIN[1].hash[:HEAD_BYTES]),)  # type: ignore[attr-defined]
    node.send(P1, Have(node.engine.digest()), 2)
    assert node.of(PeerSynced)


def test_engine_want_window_bounds_what_is_in_flight_per_peer() -> None:
    params = GossipParams(ping_interval=0, want_batch=8, want_window=20)
    node = Node(params=params)
    connect(node, P1)
    node.send(P1, Have(b"\x00" * 16, (VectorItem(KID, 40, CHAIN[39].hash[:16]),), ()), 1)
    node.tick(1 + params.ihave_timeout)
    asked = [r for w in only(node.out(P1, 1.5), Want) for r in w.ranges]  # type: ignore[attr-defined]
    assert sum(r.to_seq - r.from_seq + 1 for r in asked) == 20
    assert all(r.to_seq - r.from_seq < 8 for r in asked)
    node.send(P1, reply(*CHAIN[:8]), 2)  # the first range arrives: room for 8 more
    asked = [r for w in only(node.out(P1, 2), Want) for r in w.ranges]  # type: ignore[attr-defined]
    assert [(r.from_seq, r.to_seq) for r in asked] == [(21, 28)]


def test_engine_retries_a_stalled_want_with_another_peer() -> None:
    node = Node()
    connect(node, P1, P2)
    have = Have(b"\x00" * 16, (VectorItem(KID, 3, CHAIN[2].hash[:16]),), ())
    node.send(P1, have, 1)
    node.send(P2, have, 1)
    node.tick(1.5)
    first = [p for p in (P1, P2) if only(node.out(p, 1.5), Want)]
    assert len(first) == 1
    node.tick(1.5 + PARAMS.want_timeout)
    again = [p for p in (P1, P2) if only(node.out(p, 1.5 + PARAMS.want_timeout), Want)]
    assert len(again) == 1
    assert node.engine.totals().want_timeouts == 1


# --- pushing, pruning and backpressure -------------------------------------------------


def tree_of_three() -> Node:
    """ME connected to P1 and P2, neither of them a tree neighbour yet."""
    node = Node()
    connect(node, P1, P2)
    return node


def test_engine_pushes_to_tree_neighbours_and_announces_to_the_others() -> None:
    node = tree_of_three()
    node.send(P1, Graft(), 0.5)  # P1 is now our child: eager
    node.engine.publish(CHAIN[0], 1)
    node.ledger.add(CHAIN[0])
    assert node.engine.is_eager(P1.public_key) and not node.engine.is_eager(P2.public_key)
    assert only(node.out(P1, 1), Entries) == [push(CHAIN[0])]
    assert not only(node.out(P2, 1), IHave)  # announcements wait for lazy_delay
    node.tick(1 + PARAMS.lazy_delay)
    assert only(node.out(P2, 1 + PARAMS.lazy_delay), IHave) == [IHave((Announcement(KID, 1),))]


def test_engine_batches_announcements_per_origin() -> None:
    node = tree_of_three()
    for entry in CHAIN[:5]:
        node.ledger.add(entry)
        node.engine.publish(entry, 1)
    node.tick(2)
    assert only(node.out(P2, 2), IHave) == [IHave((Announcement(KID, 5),))]


def test_engine_idle_peer_costs_nothing_and_a_due_announcement_still_goes() -> None:
    node = tree_of_three()
    before = node.engine.totals()
    assert node.engine.data_to_send(P2.public_key, 0.5) == []  # nothing queued, nothing due
    assert node.engine.totals() == before
    node.ledger.add(CHAIN[0])
    node.engine.publish(CHAIN[0], 1)
    node.out(P1, 1)
    node.out(P2, 1)
    assert node.engine.data_to_send(P2.public_key, 1 + PARAMS.lazy_delay / 2) == []
    # Due at this very instant (the timer not run yet): taken by data_to_send itself.
    assert only(node.out(P2, 1 + PARAMS.lazy_delay), IHave) == [IHave((Announcement(KID, 1),))]


def test_engine_prunes_a_non_tree_peer_that_pushes_duplicates() -> None:
    node = tree_of_three()
    node.send(P1, Graft(), 0.5)
    node.send(P1, push(CHAIN[0]), 1)
    node.send(P2, push(CHAIN[0]), 1.1)  # P2 is not a tree neighbour of ours
    assert only(node.out(P2, 1.1), Prune) == [Prune()]
    node.send(P1, push(CHAIN[1]), 1.2)  # a tree neighbour is never pruned
    node.send(P1, push(CHAIN[1]), 1.3)
    assert not only(node.out(P1, 1.3), Prune)
    assert node.engine.peer_stats(P1.public_key).duplicates == 1


def test_engine_slow_peer_gets_announcements_instead_of_pushes() -> None:
    params = GossipParams(ping_interval=0, eager_queue_bytes=1000)
    node = Node(params=params)
    connect(node, P1)
    node.send(P1, Graft(), 0.5)
    for entry in CHAIN:
        node.ledger.add(entry)
        node.engine.publish(entry, 1)  # nobody drains P1's queue: it is slow
    assert node.engine.queued_bytes(P1.public_key) < 1000 + 200
    assert node.engine.totals().backpressured > 0
    node.tick(2)
    msgs = node.out(P1, 2)
    assert only(msgs, IHave)[-1] == IHave((Announcement(KID, 40),))


def test_engine_serves_wants_in_batches_paced_by_the_reply_queue() -> None:
    params = GossipParams(ping_interval=0, serve_batch=10, reply_queue_bytes=2000)
    ledger = Ledger()
    for entry in CHAIN:
        ledger.add(entry)
    node = Node(params=params, ledger=ledger)
    connect(node, P1)
    node.engine.receive(P1.public_key, encode_message(Want((WantRange(KID, 1, 40),))), 1)
    node.pump(1)
    asked = [(e.from_seq, e.to_seq) for e in node.of(EntriesRequested)]  # type: ignore[attr-defined]
    # Two requests may be in flight; then the full reply queue stops the next ones.
    assert asked == [(1, 10), (11, 20)]
    assert node.engine.queued_bytes(P1.public_key) > 2000
    got: list[bytes] = []
    for _ in range(10):
        got += [raw for m in node.out(P1, 2) if isinstance(m, Entries) for raw in m.raws]
    assert got == [e.raw for e in CHAIN]
    assert all(not m.push for m in only(node.out(P1, 2), Entries))  # type: ignore[attr-defined]


def test_engine_live_traffic_overtakes_a_catch_up() -> None:
    params = GossipParams(ping_interval=0, serve_batch=40)
    ledger = Ledger()
    for entry in CHAIN[:39]:
        ledger.add(entry)
    node = Node(params=params, ledger=ledger)
    connect(node, P1)
    node.send(P1, Graft(), 0.5)
    node.send(P1, Want((WantRange(KID, 1, 39),)), 1)
    node.ledger.add(CHAIN[39])
    node.engine.publish(CHAIN[39], 1)
    first = node.engine.data_to_send(P1.public_key, 1, max_bytes=1)
    assert decode_message(first[0]) == push(CHAIN[39])


# --- forks -------------------------------------------------------------------------------


def fork() -> ForkProof:
    twin = make_chain(AUTHOR, 1, tag=b"twin")[0]
    proof = detect_fork(CHAIN[0], twin)
    assert proof is not None
    return proof


def test_engine_gossips_a_fork_at_once_and_ignores_the_origin() -> None:
    node = Node()
    connect(node, P1, P2)
    node.engine.fork_detected(fork(), 1)
    for peer in (P1, P2):
        assert only(node.out(peer, 1), Fork) == [Fork(fork().encode())]
    assert KID in node.engine.forked()
    node.send(P1, push(CHAIN[0]), 2)
    assert not node.of(EntriesReceived)


def test_engine_received_fork_is_reported_once_and_relayed_to_the_others() -> None:
    node = Node()
    connect(node, P1, P2)
    node.send(P1, Fork(fork().encode()), 1)
    assert [e.peer for e in node.of(ForkDetected)] == [P1.public_key]
    assert not only(node.out(P1, 1), Fork)
    assert only(node.out(P2, 1), Fork)
    node.send(P2, Fork(fork().encode()), 2)
    assert len(node.of(ForkDetected)) == 1


def test_engine_conflicting_entry_becomes_a_fork_proof_through_the_ledger() -> None:
    node = Node()
    connect(node, P1, P2)
    node.send(P1, push(CHAIN[0]), 1)
    twin = make_chain(AUTHOR, 1, tag=b"twin")[0]
    node.send(P2, push(twin), 2)  # same seq, other bytes: handed to the ledger to judge
    assert KID in node.engine.forked()
    assert only(node.out(P1, 2), Fork) and only(node.out(P2, 2), Fork)


def test_engine_divergent_head_in_a_vector_is_probed() -> None:
    node = Node()
    connect(node, P1)
    node.send(P1, push(CHAIN[0]), 1)
    twin = make_chain(AUTHOR, 1, tag=b"twin")[0]
    node.send(P1, Have(b"\x00" * 16, (VectorItem(KID, 1, twin.hash[:16]),), ()), 2)
    assert only(node.out(P1, 2), Want) == [Want((WantRange(KID, 1, 1),))]
    node.send(P1, reply(twin), 3)
    assert KID in node.engine.forked()


def test_engine_sends_known_forks_to_a_peer_whose_vector_lacks_them() -> None:
    node = Node(forks=[fork()])
    connect(node, P1)
    node.send(P1, Have(b"\x00" * 16, (), ()), 1)
    assert only(node.out(P1, 1), Fork) == [Fork(fork().encode())]


def twin_at(seq: int) -> VerifiedEntry:
    """Another entry of AUTHOR at ``seq``, chained onto CHAIN (a fork at ``seq``)."""
    prev = CHAIN[seq - 2].hash if seq > 1 else None
    return make_chain(AUTHOR, 1, start=seq, prev=prev, tag=b"twin")[0]


def forked_then_cleared(node: Node, held_seq: int, now: float) -> bool:
    """Push CHAIN[:held_seq] from P1, fork the origin at seq 1, then clear it as the
    agent does (ledger first, then the engine with the ledger's head)."""
    node.send(P1, push(*CHAIN[:held_seq]), now)
    node.engine.fork_detected(fork(), now)
    node.ledger.forks[AUTHOR.public_key] = fork()
    node.out(P1, now)
    node.out(P2, now)
    del node.ledger.forks[AUTHOR.public_key]
    return node.engine.clear_fork(AUTHOR.public_key, node.ledger.heads()[AUTHOR.public_key],
                                  now)


def test_engine_clear_fork_accepts_and_requests_the_origin_again() -> None:
    node = Node()
    connect(node, P1, P2)
    node.send(P1, push(*CHAIN[:3]), 1)
    node.engine.fork_detected(fork(), 2)
    node.send(P1, push(CHAIN[3]), 2)
    node.send(P1, IHave((Announcement(KID, 8),)), 2)
    node.tick(3)
    assert held(node) == 3 and not only(node.out(P1, 3), Want)  # quarantined
    before = len(node.of(EntriesReceived))
    assert node.engine.clear_fork(AUTHOR.public_key, (3, CHAIN[2].hash), 4)
    assert KID not in node.engine.forked()
    assert node.engine.vector()[KID] == (3, CHAIN[2].hash)
    for peer in (P1, P2):  # every peer is asked what it holds now
        assert only(node.out(peer, 4), Have) == [Have(node.engine.digest())]
    node.send(P1, Have(b"\x00" * 16, (VectorItem(KID, 10, CHAIN[9].hash[:HEAD_BYTES]),), ()), 5)
    node.tick(5 + PARAMS.ihave_timeout)
    assert only(node.out(P1, 6), Want) == [Want((WantRange(KID, 4, 10),))]
    node.send(P1, reply(*CHAIN[3:10]), 6)
    assert held(node) == 10 and len(node.of(EntriesReceived)) > before
    node.send(P2, push(CHAIN[10]), 7)  # pushes are taken again too
    assert held(node) == 11


def test_engine_clear_fork_ignores_the_same_conflict_arriving_again() -> None:
    node = Node()
    connect(node, P1, P2)
    assert forked_then_cleared(node, 3, 1)
    node.send(P2, Fork(fork().encode()), 2)  # a peer that has not cleared it
    other = detect_fork(CHAIN[0], make_chain(AUTHOR, 1, tag=b"third")[0])
    assert other is not None
    node.send(P2, Fork(other.encode()), 2)  # another pair, same seq: same conflict
    assert KID not in node.engine.forked() and not node.of(ForkDetected)
    assert not only(node.out(P1, 2), Fork)
    node.send(P1, push(CHAIN[3]), 3)
    assert held(node) == 4
    # A fork at another seq quarantines the origin again.
    later = detect_fork(CHAIN[1], twin_at(2))
    assert later is not None
    node.send(P2, Fork(later.encode()), 4)
    assert KID in node.engine.forked()
    assert [e.peer for e in node.of(ForkDetected)] == [P2.public_key]
    assert only(node.out(P1, 4), Fork) == [Fork(later.encode())]


def test_engine_clear_fork_digest_matches_a_node_that_never_forked() -> None:
    node = Node()
    connect(node, P1)
    forked_then_cleared(node, 5, 1)
    clean = Node(P3)
    clean.engine.entries_stored(None, CHAIN[:5], 1)
    assert node.engine.digest() == clean.engine.digest()


def test_engine_starts_with_cleared_conflicts_from_the_ledger() -> None:
    node = Node(cleared=[(AUTHOR.public_key, 1)])
    connect(node, P1, P2)
    node.send(P1, Fork(fork().encode()), 1)
    assert KID not in node.engine.forked()
    assert not node.of(ForkDetected) and not only(node.out(P2, 1), Fork)


def test_engine_clear_fork_of_an_origin_not_forked_changes_nothing() -> None:
    node = Node()
    connect(node, P1)
    node.send(P1, push(*CHAIN[:2]), 1)
    digest = node.engine.digest()
    assert not node.engine.clear_fork(AUTHOR.public_key, (2, CHAIN[1].hash), 2, seqs=[1])
    assert node.engine.digest() == digest and not only(node.out(P1, 2), Have)
    # The seqs given are remembered as cleared all the same.
    node.send(P1, Fork(fork().encode()), 3)
    assert KID not in node.engine.forked()


@pytest.mark.parametrize("head", [(0, bytes(32)), (1, b"short")])
def test_engine_clear_fork_refuses_a_bad_head(head: tuple[int, bytes]) -> None:
    node = Node(forks=[fork()])
    with pytest.raises(LocalProtocolError):
        node.engine.clear_fork(AUTHOR.public_key, head, 1)
    assert KID in node.engine.forked()


# --- trust, timers, counters -------------------------------------------------------------


def test_engine_drops_entries_of_untrusted_origins() -> None:
    node = Node(trusted=[ME.public_key])
    connect(node, P1)
    node.send(P1, push(CHAIN[0]), 1)
    node.send(P1, IHave((Announcement(KID, 5),)), 1)
    node.tick(5)
    assert not node.of(EntriesReceived)
    assert not only(node.out(P1, 5), Want)
    assert node.engine.peer_stats(P1.public_key).dropped == 1


def test_engine_answers_ping_and_measures_rtt() -> None:
    node = Node(params=GossipParams(ping_interval=10))
    connect(node, P1)
    node.send(P1, Ping(b"12345678"), 1)
    assert only(node.out(P1, 1), Pong) == [Pong(b"12345678")]
    node.tick(10)
    (ping,) = only(node.out(P1, 10), Ping)
    node.send(P1, Pong(ping.token), 10.25)  # type: ignore[attr-defined]
    assert node.engine.peer_stats(P1.public_key).rtt == pytest.approx(0.25)


def test_engine_timer_drives_anti_entropy_with_one_peer_at_a_time() -> None:
    node = Node()
    connect(node, P1, P2, P3)
    when = node.engine.get_timer()
    assert when is not None
    probes = 0
    t = 0.0
    while t < 100:
        t = node.engine.get_timer() or 100
        node.tick(t)
        probes += sum(len(only(node.out(p, t), Have)) for p in (P1, P2, P3))
    # One probe every ~10 s on average, each to one peer.
    assert 5 <= probes <= 20


def test_engine_counts_bytes_and_frames_by_kind() -> None:
    node = Node()
    connect(node, P1)
    node.send(P1, push(CHAIN[0]), 1)
    stats = node.engine.peer_stats(P1.public_key)
    assert stats.frames_in["ENTRIES"] == 1
    assert stats.entries_in == 1 and stats.payload_in == len(CHAIN[0].raw)
    assert stats.bytes_in["ENTRIES"] > stats.payload_in
    assert stats.frames_out["HAVE"] == 1
    assert node.engine.totals().entries_in == 1


def test_engine_restarts_from_the_ledger_heads() -> None:
    ledger = Ledger()
    for entry in CHAIN[:7]:
        ledger.add(entry)
    node = Node(ledger=ledger)
    assert node.engine.vector() == {KID: (7, CHAIN[6].hash)}
    connect(node, P1)
    node.send(P1, push(CHAIN[7]), 1)
    assert held(node) == 8
    assert node.engine.backlog() == 0


def test_engine_publish_many_pushes_a_committed_group_like_publish_one_by_one() -> None:
    one_by_one, grouped = tree_of_three(), tree_of_three()
    for node in (one_by_one, grouped):
        node.send(P1, Graft(), 0.5)
    for entry in CHAIN[:5]:
        one_by_one.engine.publish(entry, 1)
    assert grouped.engine.publish_many(CHAIN[:5], 1) == 5
    assert grouped.out(P1, 1) == one_by_one.out(P1, 1)
    assert grouped.engine.vector() == one_by_one.engine.vector() == {KID: (5, CHAIN[4].hash)}


def test_engine_publish_many_stops_at_a_gap_and_skips_stale_entries() -> None:
    node = Node()
    assert node.engine.publish_many([CHAIN[0], CHAIN[1], CHAIN[3], CHAIN[4]], 0) == 2
    assert node.engine.vector() == {KID: (2, CHAIN[1].hash)}
    assert node.engine.publish_many([CHAIN[1], CHAIN[2], CHAIN[3]], 0) == 3
    assert node.engine.vector() == {KID: (4, CHAIN[3].hash)}


def test_engine_publish_refuses_a_gap() -> None:
    node = Node()
    with pytest.raises(LocalProtocolError):
        node.engine.publish(CHAIN[3], 0)


# --- the tree ----------------------------------------------------------------------------


def test_tree_adopts_the_smallest_root_and_grafts_its_parent() -> None:
    node = Node()
    connect(node, P1, P2)
    me = ME.public_key.key_id
    smaller = b"\x00" * 8
    assert smaller < me
    node.send(P1, Beacon(smaller, 5, 2), 1)
    assert node.engine.tree.root == smaller and node.engine.tree.hops == 3
    assert node.engine.tree.parent == P1.public_key
    assert only(node.out(P1, 1), Graft) == [Graft()]
    assert only(node.out(P2, 1), Beacon) == [Beacon(smaller, 5, 3)]
    # A shorter path in the same round moves us; the old parent is pruned.
    node.send(P2, Beacon(smaller, 5, 0), 1.1)
    assert node.engine.tree.parent == P2.public_key and node.engine.tree.hops == 1
    assert only(node.out(P1, 1.1), Prune) == [Prune()]
    # A longer path, or a larger root, changes nothing.
    node.send(P1, Beacon(smaller, 5, 7), 1.2)
    node.send(P1, Beacon(b"\xff" * 8, 9, 0), 1.2)
    assert node.engine.tree.parent == P2.public_key
    assert not only(node.out(P1, 1.2), Beacon)


def test_tree_replaces_a_lost_parent_only_with_a_closer_peer() -> None:
    node = Node()
    connect(node, P1, P2, P3)
    root = b"\x00" * 8
    node.send(P1, Beacon(root, 1, 1), 1)   # parent, we are at hops 2
    node.send(P2, Beacon(root, 1, 3), 1)   # a descendant, maybe
    node.send(P3, Beacon(root, 1, 1), 1)   # as close as the parent
    node.engine.remove_peer(P1.public_key)
    assert node.engine.tree.parent == P3.public_key
    node.engine.remove_peer(P3.public_key)
    assert node.engine.tree.parent is None  # P2 might be below us: wait for a round


def test_tree_falls_back_to_itself_when_the_root_goes_silent() -> None:
    node = Node()
    connect(node, P1)
    node.send(P1, Beacon(b"\x00" * 8, 1, 0), 1)
    node.tick(1 + 3 * PARAMS.beacon_interval + 0.1)
    assert node.engine.tree.is_root
    assert only(node.out(P1, 20), Beacon)
    # The dead root's old round is not adopted again; a newer round is.
    node.send(P1, Beacon(b"\x00" * 8, 1, 0), 21)
    assert node.engine.tree.is_root
    node.send(P1, Beacon(b"\x00" * 8, 2, 0), 22)
    assert not node.engine.tree.is_root


def test_engine_stops_asking_a_peer_that_claims_entries_it_never_sends() -> None:
    node = Node()
    connect(node, P1)
    node.send(P1, IHave((Announcement(KID, 1_000_000),)), 1)
    assert node.engine.backlog() == 1_000_000
    t = 1.0
    asked = 0
    for _ in range(6):
        t += PARAMS.want_timeout
        node.tick(t)
        asked += len(only(node.out(P1, t), Want))
    assert asked == 1  # asked once, then its claim no longer counts
    assert node.engine.backlog() == 0
