"""The replicator with real parts: aiohttp listeners on 127.0.0.1, SQLite ledgers in
tmp_path, real keys and sessions. Misbehaving peers are hand-driven raw clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.peering.dialer import DialTarget
from agent.peering.links import TransportClosed, receive_frame, run_handshake
from agent.peering.replicator import Replicator, TransportParams, TrustedPeer
from agent.peering.transport import replication_factory, start_peer_listener
from protocol.entries import TLP, sign_entry
from protocol.keys import Identity
from protocol.messages import Entries, Ping, Want, WantRange, encode_message
from protocol.session import CloseReason, MessageReceived, Session, SessionClosed
from tests.agent.nodes import FAST_TRANSPORT, Federation, Node, make_entries, wait_for


def _seed(tag: bytes) -> bytes:
    return (tag * 32)[:32]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Federation]:
    async with Federation.start(tmp_path, 2) as fed:
        await fed.wait_connected()
        yield fed


async def test_replicator_two_nodes_replicate_both_ways(pair: Federation) -> None:
    a, b = pair.nodes
    mine = await a.write(20)
    theirs = await b.write(7)
    await wait_for(lambda: b.head_seq(a.key) == 20 and a.head_seq(b.key) == 7,
                   what="both logs on both nodes")
    assert pair.converged()
    got = await b.db.get_entry(mine[-1].id)
    assert got == mine[-1]
    assert (await a.db.get_entry(theirs[0].id)) == theirs[0]
    counters = a.repl.counters[b.name]
    assert counters.entries_out >= 20 and counters.entries_in >= 7
    assert counters.frames_out.get("ENTRIES", 0) >= 1
    assert counters.bytes_in.get("ENTRIES", 0) > 0 and counters.wire_bytes_in > 0
    status = a.repl.peer_status(b.key)
    assert status.connected and status.last_seen is not None and status.sessions >= 1
    assert [s.name for s in a.repl.peer_status()] == [b.name]


async def test_replicator_exactly_one_session_per_pair_after_start(pair: Federation) -> None:
    a, b = pair.nodes
    await wait_for(lambda: len(a.repl.links()) == 1 and len(b.repl.links()) == 1,
                   what="duplicate links closed")
    (la,), (lb,) = a.repl.links(), b.repl.links()
    assert la.session.transcript_hash == lb.session.transcript_hash
    assert la.outbound != lb.outbound


@pytest.mark.parametrize("seed", [b"sd1", b"sd2", b"sd3"])
async def test_replicator_simultaneous_dial_leaves_exactly_one_session(
        tmp_path: Path, seed: bytes) -> None:
    # No URLs: nothing dials on its own; both sides dial each other at the same moment.
    async with Federation.start(tmp_path, 2, topology=(), seed=seed) as fed:
        a, b = fed.nodes
        dials = [asyncio.create_task(a.repl.sessions.connect(DialTarget(b.name, b.key, b.url))),
                 asyncio.create_task(b.repl.sessions.connect(DialTarget(a.name, a.key, a.url)))]
        await fed.wait_connected()
        fed.edges = {frozenset((0, 1))}
        await fed.wait_connected()
        await wait_for(lambda: len(a.repl.links()) == 1 and len(b.repl.links()) == 1,
                       what="one link left on each side")
        (la,), (lb,) = a.repl.links(), b.repl.links()
        assert la.session.transcript_hash == lb.session.transcript_hash
        low = min(a.key, b.key, key=lambda k: k.raw)
        assert la.session.initiator_key == low
        assert a.repl.connected() == [b.key] and b.repl.connected() == [a.key]
        # The session left works.
        await a.write(3)
        await wait_for(lambda: b.head_seq(a.key) == 3, what="entries over the kept session")
        await wait_for(lambda: any(t.done() for t in dials), what="the losing dial returned")
    await asyncio.gather(*dials, return_exceptions=True)


async def test_replicator_refuses_untrusted_key_at_handshake(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "agent.peering.transport")
    async with Federation.start(tmp_path, 2) as fed:
        a, b = fed.nodes
        await fed.wait_connected()
        # An outsider that trusts A and dials it; A does not trust the outsider.
        outsider = Node("X", Identity(_seed(b"x")), tmp_path / "X")
        outsider.data_dir.mkdir()
        outsider.set_trust([TrustedPeer(a.name, a.key, a.url)])
        await outsider.start()
        try:
            await wait_for(lambda: a.repl.handshake_failures.get("refused", 0) >= 1,
                           what="A refusing the outsider")
            assert outsider.key not in a.repl.connected()
            assert a.repl.connected() == [b.key]
            assert not outsider.repl.connected()
            assert any("refused at handshake" in r.getMessage() for r in caplog.records)
            # A raw client with the same untrusted key gets nothing but a closed socket.
            async with aiohttp.ClientSession() as http, \
                    http.ws_connect(a.url + "/peer/v1") as ws:
                session = Session(outsider.identity, initiator=True,
                                  is_trusted=lambda k: True, ephemeral_seed=_seed(b"e"))
                with pytest.raises(TransportClosed):  # A just hangs up, says nothing
                    await run_handshake(ws, session, 5.0)
        finally:
            await outsider.stop()


async def test_replicator_removed_peer_is_cut_off_and_its_later_entries_refused(
        tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 3) as fed:
        a, b, c = fed.nodes
        await fed.wait_connected()
        await b.write(4)
        await wait_for(lambda: a.head_seq(b.key) == 4 and c.head_seq(b.key) == 4,
                       what="B's first entries everywhere")
        a.set_trust(fed.trust_for(0, without=[1]))  # A removes B
        assert b.key not in a.repl.connected()  # at once, not at the next poll
        await wait_for(lambda: b.repl.counters[a.name].closes.get("removed", 0) == 1,
                       what="B told it was removed")
        fresh = await b.write(5)
        await wait_for(lambda: c.head_seq(b.key) == 9, what="C still replicating B")
        # C relays B's entries to A and A keeps refusing them: wait until A has seen
        # C's later traffic (C's new entry, and several anti-entropy rounds from C).
        haves = a.repl.counters[c.name].frames_in.get("HAVE", 0)
        await c.write(1)
        await wait_for(lambda: a.head_seq(c.key) == 1, what="C's entry on A")
        await wait_for(lambda: a.repl.counters[c.name].frames_in.get("HAVE", 0) >= haves + 3,
                       what="anti-entropy rounds between A and C")
        assert a.head_seq(b.key) == 4
        result = await a.db.ingest(fresh)  # the ledger refuses them too
        assert result.refused == 5 and result.stored == 0
        # B cannot come back on its own: its dials are refused at the handshake.
        await wait_for(lambda: a.repl.handshake_failures.get("refused", 0) >= 1,
                       what="B's redial refused")
        assert b.key not in a.repl.connected()
        assert [s.name for s in a.repl.peer_status()] == [c.name]


async def test_replicator_peer_readded_reconnects(tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 2) as fed:
        a, b = fed.nodes
        await fed.wait_connected()
        a.set_trust([])
        await wait_for(lambda: not b.connected_to(a), what="B cut off")
        await b.write(2)
        a.set_trust(fed.trust_for(0))
        await fed.wait_connected()
        await wait_for(lambda: a.head_seq(b.key) == 2, what="B's entries after re-adding")


# --- misbehaving peers -------------------------------------------------------------------


async def _evil_session(node: Node, evil: Identity) -> tuple[aiohttp.ClientSession, object,
                                                             Session]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(node.url + "/peer/v1", max_msg_size=4 << 20)
    session = Session(evil, initiator=True, is_trusted=lambda k: k == node.key,
                      ephemeral_seed=_seed(b"v"))
    await run_handshake(ws, session, 5.0)
    return http, ws, session


async def _close_reason(ws: object, session: Session) -> CloseReason | None:
    """Read until the node closes; the reason of its final frame (None: no final frame)."""
    while True:
        try:
            frame = await receive_frame(ws, 10.0)  # type: ignore[arg-type]
        except Exception:
            return None
        for event in session.receive(frame):
            if isinstance(event, SessionClosed):
                return event.reason
            assert isinstance(event, MessageReceived)


@pytest.fixture
async def victim(tmp_path: Path) -> AsyncIterator[tuple[Federation, Identity]]:
    evil = Identity(_seed(b"!"))
    async with Federation.start(tmp_path, 2) as fed:
        a, _b = fed.nodes
        a.set_trust([*fed.trust_for(0), TrustedPeer("EVIL", evil.public_key, None)])
        await fed.wait_connected()
        yield fed, evil


async def _still_works(fed: Federation) -> None:
    a, b = fed.nodes
    before = b.head_seq(a.key)
    await a.write(1)
    await wait_for(lambda: b.head_seq(a.key) == before + 1, what="the node still replicating")


async def test_replicator_undecodable_message_disconnects_with_reason(
        victim: tuple[Federation, Identity]) -> None:
    fed, evil = victim
    a = fed.nodes[0]
    http, ws, session = await _evil_session(a, evil)
    async with http:
        await wait_for(lambda: evil.public_key in a.repl.connected(), what="evil attached")
        await ws.send_bytes(session.send(b"\x93\x63junk"))  # type: ignore[attr-defined]
        assert await _close_reason(ws, session) == CloseReason.PROTOCOL_ERROR
    await wait_for(lambda: a.repl.counters["EVIL"].errors.get("protocol") == 1,
                   what="protocol error counted")
    assert evil.public_key not in a.repl.connected()
    await _still_works(fed)


async def test_replicator_bad_entry_disconnects_with_reason(
        victim: tuple[Federation, Identity]) -> None:
    fed, evil = victim
    a, b = fed.nodes
    http, ws, session = await _evil_session(a, evil)
    async with http:
        await wait_for(lambda: evil.public_key in a.repl.connected(), what="evil attached")
        (good,) = make_entries(b.identity, 1, head=b.db.head(b.key))  # B's next entry...
        forged = good.raw[:-1] + bytes([good.raw[-1] ^ 1])  # ...with a broken signature
        msg = encode_message(Entries((forged,), push=True))
        await ws.send_bytes(session.send(msg))  # type: ignore[attr-defined]
        assert await _close_reason(ws, session) == CloseReason.PROTOCOL_ERROR
    await wait_for(lambda: a.repl.counters["EVIL"].errors.get("bad_entries") == 1,
                   what="bad entry counted")
    assert a.head_seq(b.key) == b.head_seq(b.key)  # the forgery was not stored
    await _still_works(fed)


async def test_replicator_oversize_frame_disconnects(
        victim: tuple[Federation, Identity]) -> None:
    fed, evil = victim
    a = fed.nodes[0]
    http, ws, session = await _evil_session(a, evil)
    async with http:
        await wait_for(lambda: evil.public_key in a.repl.connected(), what="evil attached")
        await ws.send_bytes(b"\0" * ((1 << 20) + 1))  # type: ignore[attr-defined]
        assert await _close_reason(ws, session) is None  # dropped: WS close 1009
    await wait_for(lambda: a.repl.counters["EVIL"].errors.get("oversize") == 1,
                   what="oversize counted")
    await _still_works(fed)


async def test_replicator_text_message_disconnects(
        victim: tuple[Federation, Identity]) -> None:
    fed, evil = victim
    a = fed.nodes[0]
    http, ws, session = await _evil_session(a, evil)
    async with http:
        await wait_for(lambda: evil.public_key in a.repl.connected(), what="evil attached")
        await ws.send_str("hello")  # type: ignore[attr-defined]
        assert await _close_reason(ws, session) == CloseReason.PROTOCOL_ERROR
    await wait_for(lambda: a.repl.counters["EVIL"].errors.get("protocol") == 1,
                   what="text message counted")


async def test_replicator_answers_ping_and_clean_close(
        victim: tuple[Federation, Identity]) -> None:
    fed, evil = victim
    a = fed.nodes[0]
    http, ws, session = await _evil_session(a, evil)
    async with http:
        await wait_for(lambda: evil.public_key in a.repl.connected(), what="evil attached")
        await ws.send_bytes(session.send(encode_message(Ping(b"12345678"))))  # type: ignore[attr-defined]
        final = session.close(CloseReason.NORMAL, "bye")
        assert final is not None
        await ws.send_bytes(final)  # type: ignore[attr-defined]
        await _close_reason(ws, session)
    await wait_for(lambda: a.repl.counters["EVIL"].closes.get("normal") == 1,
                   what="the clean close recorded")
    assert a.repl.counters["EVIL"].frames_in.get("PING") == 1
    assert a.repl.counters["EVIL"].frames_out.get("PONG", 0) <= 1
    assert not a.repl.counters["EVIL"].errors


async def test_replicator_slow_peer_blocks_only_its_own_writer(
        victim: tuple[Federation, Identity]) -> None:
    fed, evil = victim
    a, b = fed.nodes
    # 160 entries of 100 KiB: far more than the loopback socket buffers hold.
    head = a.db.head(a.key)
    seq, prev = (0, None) if head is None else head
    big = []
    for i in range(160):
        entry = sign_entry(a.identity, seq=seq + 1, prev=prev, now_ms=1_700_000_000_000 + i,
                           tlp=TLP.CLEAR, audience=None, body=bytes([i]) * (100 << 10))
        big.append(entry)
        seq, prev = entry.seq, entry.hash
    for i in range(0, len(big), 40):
        await a.db.ingest(big[i:i + 40])
    a.repl.publish(big)
    await wait_for(lambda: b.head_seq(a.key) == seq, timeout=60, what="B has the big log")
    http, ws, session = await _evil_session(a, evil)
    async with http:
        await wait_for(lambda: evil.public_key in a.repl.connected(), what="evil attached")
        # Ask for all of it, then never read again.
        want = Want((WantRange(a.key.key_id, 1, seq),))
        await ws.send_bytes(session.send(encode_message(want)))  # type: ignore[attr-defined]
        await wait_for(lambda: a.repl.counters["EVIL"].wire_bytes_out > (1 << 20),
                       what="A sending to the stalled peer")
        stuck = a.repl.counters["EVIL"].wire_bytes_out
        # Live traffic to B is unaffected while EVIL's writer is blocked.
        await a.write(5)
        await wait_for(lambda: b.head_seq(a.key) == seq + 5, what="B still served")
        assert a.repl.counters["EVIL"].wire_bytes_out < 160 * (100 << 10)
        assert stuck < 160 * (100 << 10)
        # What waits for EVIL is bounded by the engine's reply queue, not the WANT.
        engine = a.repl.engine
        assert engine is not None
        limit = engine.params.reply_queue_bytes + 2 * engine.params.frame_bytes + (1 << 20)
        assert engine.queued_bytes(evil.public_key) <= limit


async def test_replicator_handshake_timeout_drops_silent_connection(tmp_path: Path) -> None:
    transport = TransportParams(handshake_timeout=0.3, backoff_initial=0.05, backoff_max=0.2)
    async with Federation.start(tmp_path, 1, transport=transport) as fed:
        (a,) = fed.nodes
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(a.url + "/peer/v1") as ws:
            msg = await ws.receive(timeout=10)  # we send nothing; the node hangs up
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING)
        await wait_for(lambda: a.repl.handshake_failures.get("transport", 0) == 1,
                       what="timeout counted")


async def test_replicator_peer_listener_serves_nothing_else(pair: Federation) -> None:
    a = pair.nodes[0]
    runner, port = await start_peer_listener(a.repl, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/api/v1/health") as resp:
                assert resp.status == 404
            async with http.get(f"http://127.0.0.1:{port}/peer/v1") as resp:
                assert resp.status == 400  # not a WebSocket upgrade
    finally:
        await runner.cleanup()


# --- lifecycle -----------------------------------------------------------------------------


async def test_replicator_stop_closes_sessions_and_leaves_no_task(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    async with Federation.start(tmp_path, 3) as fed:
        await fed.wait_connected()
        a, b, c = fed.nodes
        await a.write(3)
        await wait_for(lambda: fed.converged() and b.head_seq(a.key) == 3, what="converged")
        await a.stop()
        await wait_for(lambda: not b.connected_to(a) and not c.connected_to(a),
                       what="peers saw A leave")
        assert b.repl.counters[a.name].closes.get("shutdown") == 1  # A said goodbye
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == {asyncio.current_task()} or not left - {asyncio.current_task()}


async def test_replicator_crash_stop_sends_no_final_frame(tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 2) as fed:
        await fed.wait_connected()
        a, b = fed.nodes
        await a.stop(clean=False)
        await wait_for(lambda: not b.connected_to(a), what="B saw the connection drop")
        assert b.repl.counters[a.name].closes.get("shutdown") is None


async def test_replication_factory_builds_a_replicator_for_a_node(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from agent.config.settings import GossipConfig

    node = SimpleNamespace(identity=Identity(_seed(b"n")), trust=(), ledger=None,
                           config=SimpleNamespace(gossip=GossipConfig()))
    repl = replication_factory(FAST_TRANSPORT)(node)  # type: ignore[arg-type]
    assert isinstance(repl, Replicator)
    assert repl.params.anti_entropy_interval == 2.0 and repl.params.lazy_delay == 0.05


def test_make_entries_chain() -> None:
    ident = Identity(_seed(b"m"))
    entries = make_entries(ident, 3)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[1].prev == entries[0].hash
    assert entries[0].tlp == TLP.CLEAR
