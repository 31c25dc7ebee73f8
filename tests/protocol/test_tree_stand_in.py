"""A node whose parent leaves and has no peer closer to the root GRAFTs a stand-in.

Unit tests of protocol.tree, then a whole-federation check (bench/sim.py): with an
interior node gone, the eager links (parent, children, stand-ins) still reach every
live node from every live node, and the parent links hold no loop.
"""

from __future__ import annotations

from bench.sim import Simulation, make_chain, make_identity
from protocol.keys import PublicKey
from protocol.messages import Beacon, Graft, Prune
from protocol.tree import CUT, ROOT_TIMEOUT_ROUNDS, BroadcastTree


def _keys(*labels: str) -> list[PublicKey]:
    return sorted((make_identity(f"stand-in/{label}").public_key for label in labels),
                  key=lambda k: k.key_id)


def _attached() -> tuple[BroadcastTree, PublicKey, PublicKey, PublicKey, PublicKey]:
    """A node two hops from the root R: parent P (hops 1), peer S (hops 2, another
    branch), child C (hops 3, grafted). Returns (tree, root, P, S, C)."""
    root, p, s, c, me = _keys("root", "p", "s", "c", "me")
    tree = BroadcastTree(me.key_id, 5.0)
    for peer in (p, s, c):
        tree.add_peer(peer, 0.0)
    tree.on_beacon(p, Beacon(root.key_id, 1, 1), 1.0)
    tree.on_beacon(s, Beacon(root.key_id, 1, 2), 1.0)
    tree.on_beacon(c, Beacon(root.key_id, 1, 3), 1.0)
    tree.on_graft(c)
    assert tree.parent == p and tree.hops == 2
    return tree, root, p, s, c


def test_parent_gone_without_closer_peer_grafts_a_stand_in_not_a_parent() -> None:
    tree, _, p, s, c = _attached()
    out = tree.remove_peer(p, 2.0)
    assert out == [(s, Graft())]  # S is as far as we are: not a parent, a stand-in
    assert tree.parent is None and tree.hops == 2 and tree.stand_in == s
    assert tree.eager(s) and tree.eager(c)


def test_a_child_is_never_a_stand_in_a_node_without_one_beacons_cut() -> None:
    tree, root, p, s, c = _attached()
    tree.remove_peer(s, 1.5)
    out = tree.remove_peer(p, 2.0)  # only the child is left
    assert tree.stand_in is None and tree.parent is None and tree.cut
    assert out == [(c, Beacon(root.key_id, 1, CUT))]  # the child looks in our stead
    assert tree.remove_peer(c, 2.5) == []  # said once


def test_a_parent_that_beacons_cut_makes_its_child_graft_a_stand_in() -> None:
    tree, root, p, s, _ = _attached()
    out = tree.on_beacon(p, Beacon(root.key_id, 1, CUT), 2.0)
    assert out == [(s, Graft())] and tree.parent == p and tree.stand_in == s
    assert not tree.cut
    # A peer that beacons CUT is never a stand-in; a stand-in that does is replaced.
    other = _keys("other")[0]
    tree.add_peer(other, 2.0)
    tree.on_beacon(other, Beacon(root.key_id, 1, CUT), 2.0)
    out = tree.on_beacon(s, Beacon(root.key_id, 1, CUT), 2.5)
    # No other candidate: one level only, a node with a parent never beacons CUT itself.
    assert out == [(s, Prune())] and tree.stand_in is None and not tree.cut


def test_parent_back_on_a_path_to_the_root_drops_the_stand_in() -> None:
    tree, root, p, s, _ = _attached()
    tree.on_beacon(p, Beacon(root.key_id, 1, CUT), 2.0)
    assert tree.stand_in == s
    out = tree.on_beacon(p, Beacon(root.key_id, 1, 1), 3.0)
    assert out == [(s, Prune())] and tree.stand_in is None and tree.parent == p


def test_cut_beacons_never_make_a_path() -> None:
    tree, root, p, s, _ = _attached()
    far = _keys("far")[0]
    tree.add_peer(far, 1.0)
    tree.on_beacon(far, Beacon(root.key_id, 1, CUT), 1.0)
    assert tree.parent == p
    tree.remove_peer(p, 2.0)
    assert tree.parent is None and tree.stand_in == s  # not ``far``


def test_closest_non_child_is_chosen() -> None:
    tree, root, p, s, _ = _attached()
    far = _keys("far")[0]
    tree.add_peer(far, 1.0)
    tree.on_beacon(far, Beacon(root.key_id, 1, 4), 1.0)
    tree.remove_peer(p, 2.0)
    assert tree.stand_in == s  # hops 2 before hops 4


def test_stand_in_that_leaves_is_replaced() -> None:
    tree, root, p, s, _ = _attached()
    other = _keys("other")[0]
    tree.add_peer(other, 1.0)
    tree.on_beacon(other, Beacon(root.key_id, 1, 3), 1.0)
    tree.remove_peer(p, 2.0)
    assert tree.stand_in == s
    assert tree.remove_peer(s, 2.5) == [(other, Graft())]
    assert tree.stand_in == other and not tree.eager(s)


def test_next_round_gives_a_parent_and_prunes_the_stand_in() -> None:
    tree, root, p, s, c = _attached()
    q = _keys("q")[0]
    tree.add_peer(q, 1.0)
    tree.remove_peer(p, 2.0)
    out = tree.on_beacon(q, Beacon(root.key_id, 2, 1), 5.0)
    assert tree.parent == q and tree.hops == 2 and tree.stand_in is None
    assert (s, Prune()) in out and (q, Graft()) in out
    assert not tree.eager(s) and tree.eager(c)


def test_stand_in_that_becomes_the_parent_is_not_pruned() -> None:
    tree, root, p, s, _ = _attached()
    tree.remove_peer(p, 2.0)
    out = tree.on_beacon(s, Beacon(root.key_id, 2, 1), 5.0)
    assert tree.parent == s and tree.stand_in is None
    assert (s, Prune()) not in out and (s, Graft()) in out


def test_root_timeout_drops_the_stand_in() -> None:
    tree, _, p, s, _ = _attached()
    tree.remove_peer(p, 2.0)
    out = tree.on_timer(1.0 + ROOT_TIMEOUT_ROUNDS * 5.0)
    assert tree.is_root and tree.stand_in is None and (s, Prune()) in out


def _reach(sim: Simulation, start: int, live: set[int]) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        a = todo.pop()
        engine = sim.nodes[a].engine
        assert engine is not None
        for b in sim.neighbours[a]:
            if b in live and b not in seen and engine.is_eager(sim.nodes[b].key):
                seen.add(b)
                todo.append(b)
    return seen


def test_sim_root_killed_cut_subtrees_find_stand_ins_below() -> None:
    n = 80
    sim = Simulation(n, seed=b"stand-in")
    sim.start()
    sim.run_until(2.0)
    root = min(range(n), key=lambda i: sim.nodes[i].key.key_id)
    by_key = {sim.nodes[i].key: i for i in range(n)}
    sim.crash(root)
    sim.run_until(3.0)  # peers noticed (detect_delay 0.5 s); the root timeout is 15 s away
    live = {i for i in range(n) if sim.nodes[i].up}
    for i in live:
        assert _reach(sim, i, live) == live
        seen, j = {i}, i
        while (parent := sim.nodes[j].engine.tree.parent) is not None:  # type: ignore[union-attr]
            j = by_key[parent]
            assert j not in seen, "a loop in the parent links"
            seen.add(j)
    stand_ins = sum(sim.nodes[i].engine.tree.stand_in is not None for i in live)  # type: ignore[union-attr]
    assert stand_ins < n // 3  # the children of cut-off nodes, not every node
    origin = min(live)
    entry = make_chain(sim.nodes[origin].identity, 1, body_bytes=200)[0]
    sim.at(3.1, lambda: sim.publish(origin, entry))
    sim.run_until(3.6)
    assert all(entry.hash in sim.nodes[i].stored_at for i in live)


def test_sim_interior_node_killed_eager_links_still_reach_everyone_without_loops() -> None:
    n = 80
    sim = Simulation(n, seed=b"stand-in")
    sim.start()
    sim.run_until(2.0)
    by_key = {sim.nodes[i].key: i for i in range(n)}

    def tree(i: int) -> BroadcastTree:
        engine = sim.nodes[i].engine
        assert engine is not None
        return engine.tree

    def cut_children(x: int) -> list[int]:
        """x's children with no peer closer to the root than themselves but x."""
        return [j for j in sim.neighbours[x] if tree(j).parent == sim.nodes[x].key
                and not any(p != sim.nodes[x].key and o.hops < tree(j).hops
                            for p, o in tree(j).offers.items())]

    # An interior node (not the root, not its child) whose leaving cuts off two or
    # more subtrees: before stand-ins each waited for the next round (up to 5 s).
    victim = next(x for x in range(n) if tree(x).hops >= 2 and len(cut_children(x)) >= 2)
    orphans = cut_children(victim)
    sim.crash(victim)
    sim.run_until(3.0)  # peers noticed (detect_delay 0.5 s); the next round is later
    assert all(tree(j).parent is None and tree(j).stand_in is not None for j in orphans)
    live = {i for i in range(n) if sim.nodes[i].up}
    for i in live:
        assert _reach(sim, i, live) == live
        seen, j = {i}, i
        while (parent := tree(j).parent) is not None:
            j = by_key[parent]
            assert j not in seen, "a loop in the parent links"
            seen.add(j)
    # An entry published now reaches every live node (by push: no cut to repair).
    origin = min(live)
    entry = make_chain(sim.nodes[origin].identity, 1, body_bytes=200)[0]
    sim.at(3.1, lambda: sim.publish(origin, entry))
    sim.run_until(3.6)
    assert all(entry.hash in sim.nodes[i].stored_at for i in live)


def test_hops_adopted_from_a_cut_beacon_stay_encodable() -> None:
    root, cut_peer, me = _keys("root", "cut", "me")
    tree = BroadcastTree(me.key_id, 5.0)
    tree.add_peer(cut_peer, 0.0)
    out = tree.on_beacon(cut_peer, Beacon(root.key_id, 3, CUT), 1.0)
    assert tree.parent == cut_peer and tree.hops == CUT
    assert (cut_peer, Beacon(root.key_id, 3, CUT)) in out  # built: hops within bounds
