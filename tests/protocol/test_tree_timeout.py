"""The broadcast tree's root timeout fires at the instant next_timer() names."""

from __future__ import annotations

from bench.sim import make_identity
from protocol.messages import Beacon
from protocol.tree import ROOT_TIMEOUT_ROUNDS, BroadcastTree


def test_tree_root_timeout_fires_at_its_own_timer_instant() -> None:
    me, root = make_identity("tree/me").public_key, make_identity("tree/root").public_key
    low, high = sorted((me, root), key=lambda k: k.key_id)
    tree = BroadcastTree(high.key_id, 1.0)
    tree.add_peer(low, 0.0)
    # 13.001 + 3.0 - 13.001 < 3.0 in floating point: a strict ``now - heard > timeout``
    # did nothing at next_timer(), and a driver calling back at that instant spun.
    assert (13.001 + ROOT_TIMEOUT_ROUNDS * 1.0) - 13.001 < ROOT_TIMEOUT_ROUNDS * 1.0
    tree.on_beacon(low, Beacon(low.key_id, 1, 0), 13.001)
    assert tree.root == low.key_id and not tree.is_root
    due = tree.next_timer()
    out = tree.on_timer(due)
    assert tree.is_root and out  # the silent root dropped, our own round broadcast
    assert tree.next_timer() > due
