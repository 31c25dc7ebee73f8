"""Stateful fuzzing of the sans-I/O session and gossip engine against a hostile peer
(issue 17 item 3): Hypothesis state machines that interleave arbitrary bytes, replayed,
reordered, forged and oversize frames and messages with honest traffic and time.

Invariants after every step:
- the only exceptions are the protocol's own (``RemoteProtocolError`` for the peer's
  fault; ``LocalProtocolError`` only for feeding a session already failed);
- no message is delivered, and no entry stored, that the honest side did not sign,
  and the engine's head for an origin is always the ledger's (nothing advances on an
  unverified entry);
- the reorder buffer and every send queue stay within their budgets.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bench.sim import make_chain
from protocol.errors import EntraideError, LocalProtocolError, RemoteProtocolError
from protocol.gossip import GossipParams
from protocol.messages import (
    MAX_MESSAGE_BYTES,
    Announcement,
    Beacon,
    Entries,
    Fork,
    Graft,
    Have,
    IHave,
    Ping,
    Pong,
    Prune,
    VectorItem,
    Want,
    WantRange,
    encode_message,
)
from protocol.session import HandshakeComplete, MessageReceived, SessionState
from tests.protocol.test_gossip import AUTHOR, KID, ME, P1, P2, Node
from tests.protocol.test_session import ON, QC, flip, make

STATEFUL = settings(max_examples=100, stateful_step_count=50, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

# Small budgets, so that a hostile peer can reach them within a few steps.
PARAMS = GossipParams(ping_interval=0, reorder_limit=8, reorder_bytes=4096,
                      reorder_peer_bytes=2048, eager_queue_bytes=8192,
                      reply_queue_bytes=16384, serve_bytes=8192)
CHAIN = make_chain(AUTHOR, 24, body_bytes=100)
AUTHENTIC = {e.raw for e in CHAIN}
_KIDS = st.one_of(st.just(KID), st.binary(min_size=8, max_size=8))
_SEQS = st.one_of(st.integers(0, 30), st.integers(0, 2**63 - 1))
_BYTES32 = st.binary(min_size=32, max_size=32)


def _forged(index: int, pos: int) -> bytes:
    raw = CHAIN[index].raw
    return flip(raw, pos % len(raw))


class HostileGossipPeer(RuleBasedStateMachine):
    """One engine (ME) with an honest peer (P2) and a hostile one (P1)."""

    @initialize()
    def start(self) -> None:
        self.node = Node(ME, PARAMS)
        self.now = 0.0
        for peer in (P1, P2):
            self.node.engine.add_peer(peer.public_key, self.now)
        self.drain()

    def drain(self) -> None:
        for peer in (P1, P2):
            self.node.out(peer, self.now)

    def hostile(self, data: bytes) -> None:
        """P1 sends ``data``; a protocol error ends its session and it connects again."""
        try:
            self.node.engine.receive(P1.public_key, data, self.now)
        except RemoteProtocolError:
            self.node.engine.remove_peer(P1.public_key)
            self.node.engine.add_peer(P1.public_key, self.now)
        self.node.pump(self.now)

    @rule(data=st.binary(max_size=300))
    def garbage(self, data: bytes) -> None:
        self.hostile(data)

    @rule(indices=st.lists(st.integers(0, len(CHAIN) - 1), min_size=1, max_size=12),
          push=st.booleans())
    def authentic_entries_any_order(self, indices: list[int], push: bool) -> None:
        # Replays, gaps, reordering: all signed by AUTHOR.
        self.hostile(encode_message(Entries(tuple(CHAIN[i].raw for i in indices), push)))

    @rule(index=st.integers(0, len(CHAIN) - 1), pos=st.integers(0, 10_000),
          push=st.booleans())
    def forged_entry(self, index: int, pos: int, push: bool) -> None:
        self.hostile(encode_message(Entries((_forged(index, pos),), push)))

    @rule(size=st.sampled_from([MAX_MESSAGE_BYTES + 1, 2 * MAX_MESSAGE_BYTES]))
    def oversize(self, size: int) -> None:
        self.hostile(b"\x92\x03\x91" + b"\x00" * size)

    @rule(items=st.lists(st.tuples(_KIDS, _SEQS, _BYTES32), max_size=6), digest=_BYTES32)
    def have(self, items: list[tuple[bytes, int, bytes]], digest: bytes) -> None:
        unique = sorted({k: (k, s, h) for k, s, h in items}.values())
        self.hostile_message(lambda: Have(digest, tuple(VectorItem(*i) for i in unique)))

    @rule(ranges=st.lists(st.tuples(_KIDS, _SEQS, _SEQS), min_size=1, max_size=4))
    def want(self, ranges: list[tuple[bytes, int, int]]) -> None:
        self.hostile_message(lambda: Want(tuple(WantRange(k, a, b) for k, a, b in ranges)))

    @rule(items=st.lists(st.tuples(_KIDS, _SEQS), min_size=1, max_size=6))
    def ihave(self, items: list[tuple[bytes, int]]) -> None:
        self.hostile_message(lambda: IHave(tuple(Announcement(k, s) for k, s in items)))

    @rule(kind=st.sampled_from(["graft", "prune", "ping", "pong", "beacon", "fork"]),
          blob=st.binary(min_size=8, max_size=64), n=st.integers(0, 2**32))
    def control(self, kind: str, blob: bytes, n: int) -> None:
        makers = {"graft": Graft, "prune": Prune, "ping": lambda: Ping(blob[:8]),
                  "pong": lambda: Pong(blob[:8]),
                  "beacon": lambda: Beacon(blob[:8], n, n % 64),
                  "fork": lambda: Fork(blob)}
        self.hostile_message(makers[kind])

    def hostile_message(self, build: object) -> None:
        try:
            message = build()  # type: ignore[operator]
        except (EntraideError, ValueError, TypeError):
            return  # not even a message we can encode: garbage() covers raw bytes
        self.hostile(encode_message(message))

    @rule(seconds=st.sampled_from([0.01, 0.3, 1.0, 6.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.node.tick(self.now)
        self.drain()

    @invariant()
    def only_signed_entries_stored(self) -> None:
        log = self.node.ledger.logs.get(AUTHOR.public_key, [])
        assert all(entry.raw in AUTHENTIC for entry in log)
        assert [entry.seq for entry in log] == list(range(1, len(log) + 1))
        head = self.node.engine.vector().get(KID)
        if log:
            assert head is not None and head[0] == log[-1].seq
        else:
            assert head is None or head[0] == 0

    @invariant()
    def bounded(self) -> None:
        engine = self.node.engine
        assert engine.buffered_bytes() <= PARAMS.reorder_bytes
        assert engine.buffered_bytes(P1.public_key) <= PARAMS.reorder_peer_bytes
        for peer in (P1, P2):
            assert engine.queued_bytes(peer.public_key) <= (
                PARAMS.eager_queue_bytes + PARAMS.reply_queue_bytes + PARAMS.serve_bytes
                + 2 * PARAMS.frame_bytes)


class HostileSessionPeer(RuleBasedStateMachine):
    """A responder (ON) whose peer mixes QC's real frames with replays and garbage."""

    @initialize(honest=st.booleans())
    def start(self, honest: bool) -> None:
        # The initiator is QC (trusted) or FED-like: a key ON does not trust.
        self.peer = make(QC, initiator=True, trusts=(ON,))
        self.me = make(ON, initiator=False, trusts=(QC,) if honest else ())
        self.sent: list[bytes] = []  # every frame the real peer produced, for replays
        self.messages: list[bytes] = []  # what the real peer sent as application data
        self.delivered: list[bytes] = []
        self.pending = self.peer.start()
        self.sent += self.pending

    def feed(self, frame: bytes) -> None:
        if self.me.state in (SessionState.FAILED, SessionState.CLOSED):
            try:
                self.me.receive(frame)
            except (LocalProtocolError, RemoteProtocolError):
                return
            return
        try:
            events = self.me.receive(frame)
        except RemoteProtocolError:
            assert self.me.state is SessionState.FAILED
            return
        for event in events:
            if isinstance(event, MessageReceived):
                self.delivered.append(event.data)
            if isinstance(event, HandshakeComplete):
                assert event.peer == QC.public_key
        for reply in self.me.frames_to_send():
            self.answer(reply)

    def answer(self, frame: bytes) -> None:
        if self.peer.state in (SessionState.FAILED, SessionState.CLOSED):
            return
        try:
            self.peer.receive(frame)
        except RemoteProtocolError:
            return
        out = self.peer.frames_to_send()
        self.sent += out
        self.pending += out

    @rule()
    def deliver_next(self) -> None:
        if self.pending:
            self.feed(self.pending.pop(0))

    @precondition(lambda self: self.peer.state is SessionState.ESTABLISHED)
    @rule(data=st.binary(max_size=64))
    def peer_sends(self, data: bytes) -> None:
        frame = self.peer.send(data)
        self.messages.append(data)
        self.sent.append(frame)
        self.pending.append(frame)

    @rule(data=st.binary(max_size=200))
    def garbage(self, data: bytes) -> None:
        self.feed(data)

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(0, 1000))
    def replay(self, index: int) -> None:
        self.feed(self.sent[index % len(self.sent)])

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(0, 1000), pos=st.integers(0, 10_000))
    def tampered(self, index: int, pos: int) -> None:
        frame = self.sent[index % len(self.sent)]
        if frame:
            self.feed(flip(frame, pos % len(frame)))

    @precondition(lambda self: len(self.pending) > 1)
    @rule()
    def reorder(self) -> None:
        self.pending.append(self.pending.pop(0))

    @rule()
    def oversize(self) -> None:
        from protocol.session import MAX_FRAME_BYTES
        self.feed(b"\x00" * (MAX_FRAME_BYTES + 1))

    @invariant()
    def delivered_only_what_was_sent_in_order(self) -> None:
        # A prefix of the real peer's messages, each once, in order: never a forged,
        # replayed or reordered one.
        assert self.delivered == self.messages[:len(self.delivered)]


TestHostileGossipPeer = STATEFUL(HostileGossipPeer).TestCase
TestHostileSessionPeer = STATEFUL(HostileSessionPeer).TestCase


def test_the_machines_reach_their_interesting_states() -> None:
    """The rules can store entries and establish a session (else the invariants above
    would hold vacuously)."""
    gossip = HostileGossipPeer()
    gossip.start()
    gossip.authentic_entries_any_order([2, 0, 1, 1], True)
    gossip.forged_entry(3, 50, True)
    gossip.only_signed_entries_stored()
    assert len(gossip.node.ledger.logs[AUTHOR.public_key]) == 3
    session = HostileSessionPeer()
    session.start(honest=True)
    session.deliver_next()
    session.deliver_next()
    assert session.me.state is SessionState.ESTABLISHED
    session.peer_sends(b"one")
    session.replay(len(session.sent) - 1)
    session.deliver_next()
    session.delivered_only_what_was_sent_in_order()
    assert session.delivered == [b"one"]
