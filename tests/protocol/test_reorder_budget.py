"""The reorder buffer's budget per peer (issue 17): one trusted peer cannot fill the
buffer shared by every origin with entries ahead of another origin's gaps, and what it
sent leaves the buffer when its session ends."""

from __future__ import annotations

import dataclasses

from tests.protocol.test_gossip import AUTHOR, CHAIN, P1, P2, PARAMS, Node, connect, held, push


def test_one_peer_takes_at_most_its_share_of_the_reorder_buffer() -> None:
    size = max(len(e.raw) for e in CHAIN)
    params = dataclasses.replace(PARAMS, reorder_peer_bytes=3 * size)
    node = Node(params=params)
    connect(node, P1, P2)
    node.send(P1, push(*CHAIN[5:11]), 1)  # six entries ahead of the gap at 1..5
    assert node.engine.buffered_bytes(P1.public_key) <= 3 * size
    p1 = node.engine.buffered_bytes(P1.public_key)
    assert p1 > 0
    # Another peer still has room of its own.
    node.send(P2, push(*CHAIN[12:15]), 1.1)
    assert node.engine.buffered_bytes(P2.public_key) > 0
    assert node.engine.buffered_bytes() == p1 + node.engine.buffered_bytes(P2.public_key)
    assert held(node) == 0


def test_a_peers_buffered_entries_go_when_its_session_ends() -> None:
    node = Node()
    connect(node, P1, P2)
    node.send(P1, push(*CHAIN[5:11]), 1)
    node.send(P2, push(*CHAIN[12:15]), 1.1)
    p2 = node.engine.buffered_bytes(P2.public_key)
    node.engine.remove_peer(P1.public_key)
    assert node.engine.buffered_bytes(P1.public_key) == 0
    assert node.engine.buffered_bytes() == p2
    # The chain still completes from the peer that stayed.
    node.send(P2, push(*CHAIN[:12]), 2)
    assert held(node) == 15
    assert node.engine.buffered_bytes() == 0
    assert node.ledger.logs[AUTHOR.public_key][-1].seq == 15
