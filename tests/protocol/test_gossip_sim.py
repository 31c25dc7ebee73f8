"""Whole-federation simulations of the gossip engine (bench/sim.py).

50 nodes on a random overlay of degree 3-5, virtual clock, real signed entries.
Every scenario ends with every live ledger identical; each prints how many payload
copies a node received per entry (run with ``-s`` to see the figures).
"""

from __future__ import annotations

import pytest

from bench.sim import LinkModel, Simulation, make_chain, make_identity, run_propagation
from protocol.entries import detect_fork
from protocol.gossip import GossipParams
from protocol.keys import PublicKey

N = 50


def _origins(sim: Simulation, indexes: list[int], count: int) -> dict[int, list]:
    """Pre-signed chains for the nodes in ``indexes`` (their own logs)."""
    return {i: make_chain(sim.nodes[i].identity, count, body_bytes=200) for i in indexes}


def _publish_spread(sim: Simulation, chains: dict[int, list], start: float,
                    spacing: float) -> float:
    """Schedule every chain's entries, interleaved across origins; returns the last time."""
    t = start
    longest = max(len(c) for c in chains.values())
    for k in range(longest):
        for i, chain in chains.items():
            if k < len(chain):
                t += spacing
                sim.at(t, lambda i=i, e=chain[k]: sim.publish(i, e))
    return t


def _component(sim: Simulation, start: int, members: set[int]) -> set[int]:
    """The nodes of ``members`` that ``start`` reaches over links inside ``members``."""
    seen, todo = {start}, [start]
    while todo:
        for j in sim.neighbours[todo.pop()]:
            if j in members and j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def _copies(sim: Simulation, copies0: int, entries: int) -> float:
    copies, _, _ = sim.traffic()
    return (copies - copies0) / (len(sim.nodes) * entries)


def _total_entries(sim: Simulation) -> int:
    return sum(len(log) for log in sim.nodes[0].ledger.logs.values())


def test_sim_lossless_steady_state_sends_each_entry_about_once() -> None:
    sim = Simulation(N, seed=b"steady")
    sim.start()
    warm = _origins(sim, [1, 2], 3)
    t = _publish_spread(sim, warm, 1.0, 0.05)
    sim.run_until(t + 3)
    copies0, payload0, total0 = sim.traffic()
    chains = _origins(sim, [0, 7, 13, 21, 34, 42], 10)
    t = _publish_spread(sim, chains, sim.now, 0.05)
    sim.run_until(t + 3)
    assert sim.converged()
    assert _total_entries(sim) == 66
    copies, payload, total = sim.traffic()
    per_entry = (copies - copies0) / (N * 60)
    ratio = ((total - total0) - (payload - payload0)) / (payload - payload0)
    print(f"\nlossless: {per_entry:.3f} payload copies per node per entry, "
          f"control/payload {ratio:.3f}")
    assert per_entry < 1.1
    assert all(not n.misbehaved for n in sim.nodes)


def test_sim_lossy_duplicating_reordering_network_converges() -> None:
    link = LinkModel(loss=0.1, duplicate=0.1, reorder=0.1)
    sim = Simulation(N, seed=b"lossy", link=link)
    sim.start()
    chains = _origins(sim, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45], 8)
    copies0, _, _ = sim.traffic()
    t = _publish_spread(sim, chains, 1.0, 0.03)
    sim.run_until(t)
    end = sim.run_until_converged(t + 120)
    assert sim.converged(), f"not converged at {end}"
    assert _total_entries(sim) == 80
    per_entry = _copies(sim, copies0, 80)
    print(f"\nlossy (10% loss, dup, reorder): {per_entry:.3f} copies per node per entry, "
          f"converged {end - t:.1f} s after the last publish")
    assert per_entry < 3
    assert all(not n.misbehaved for n in sim.nodes)


def test_sim_partition_heals() -> None:
    sim = Simulation(N, seed=b"partition")
    sim.start()
    sim.run_until(1.0)
    left, right = list(range(0, N, 2)), list(range(1, N, 2))
    sim.partition([left, right])
    sim.run_until(2.0)
    chains = _origins(sim, [0, 2, 4, 1, 3, 5], 10)
    t = _publish_spread(sim, chains, sim.now, 0.05)
    sim.run_until(t + 5)
    # Each side replicated its own entries and none of the other side's: every node
    # holds the chains of the publishers its side's links reach (a random half of a
    # random overlay need not be connected).
    for i in range(N):
        here = _component(sim, i, set(left if i in left else right))
        held = {k: len(v) for k, v in sim.nodes[i].ledger.logs.items()}
        assert held == {sim.nodes[j].key: 10 for j in chains if j in here}
    assert not sim.converged()
    copies0, _, _ = sim.traffic()
    sim.heal()
    end = sim.run_until_converged(sim.now + 120)
    assert sim.converged(), f"not converged at {end}"
    assert _total_entries(sim) == 60
    print(f"\npartition healed: converged {end - t:.1f} s after healing, "
          f"{_copies(sim, copies0, 30):.3f} copies per node per entry of the other side")


def test_sim_crashed_nodes_return_with_their_ledger_and_catch_up() -> None:
    link = LinkModel(loss=0.05)
    sim = Simulation(N, seed=b"crash", link=link)
    sim.start()
    first = _origins(sim, [0, 1], 5)
    t = _publish_spread(sim, first, 1.0, 0.05)
    sim.run_until(t + 3)
    crashed = [3, 9, 17, 26, 38]
    for i in crashed:
        sim.crash(i)
    chains = {i: make_chain(sim.nodes[i].identity, 10, start=6, prev=first[i][-1].hash,
                            body_bytes=200) for i in first}
    chains |= _origins(sim, [44], 10)
    t = _publish_spread(sim, chains, sim.now + 1, 0.05)
    sim.run_until(t + 2)
    held = {len(sim.nodes[i].ledger.logs.get(sim.nodes[0].key, [])) for i in crashed}
    assert held == {5}
    for i in crashed:
        sim.restart(i)
    end = sim.run_until_converged(sim.now + 120)
    assert sim.converged(), f"not converged at {end}"
    assert _total_entries(sim) == 40


def test_sim_crash_during_publishing_of_a_chain_owner() -> None:
    sim = Simulation(N, seed=b"owner")
    sim.start()
    chain = make_chain(sim.nodes[4].identity, 20, body_bytes=100)
    for k, entry in enumerate(chain[:10]):
        sim.at(1 + 0.01 * k, lambda e=entry: sim.publish(4, e))
    sim.at(1.05, lambda: sim.crash(4))  # crashes after storing 5, before gossiping all
    sim.run_until(5)
    sim.restart(4)
    sim.run_until(8)
    for entry in chain[5:]:
        sim.publish(4, entry)
    end = sim.run_until_converged(sim.now + 60)
    assert sim.converged(), f"not converged at {end}"
    assert len(sim.nodes[0].ledger.logs[sim.nodes[4].key]) == 20


def test_sim_forked_origin_is_known_to_every_node() -> None:
    sim = Simulation(N, seed=b"fork")
    sim.start()
    rogue = sim.nodes[7].identity
    base = make_chain(rogue, 3, body_bytes=100)
    for k, entry in enumerate(base):
        sim.at(1 + 0.05 * k, lambda e=entry: sim.publish(7, e))
    honest = _origins(sim, [20], 5)
    t = _publish_spread(sim, honest, 1.0, 0.05)
    sim.run_until(t + 2)
    # The same key writes two different entries 4 (and 5), at two ends of the network.
    a = make_chain(rogue, 2, start=4, prev=base[-1].hash, body_bytes=100, tag=b"a")
    b = make_chain(rogue, 2, start=4, prev=base[-1].hash, body_bytes=100, tag=b"b")
    for k in range(2):
        sim.at(sim.now + 0.01 * k, lambda e=a[k]: sim.publish(7, e))
        sim.at(sim.now + 0.01 * k, lambda e=b[k]: _inject(sim, 33, e))
    end = sim.run_until_converged(sim.now + 60)
    assert sim.converged(), f"not converged at {end}"
    assert all(rogue.public_key in n.ledger.forks for n in sim.nodes)
    assert all(n.engine is not None and rogue.public_key.key_id in n.engine.forked()
               for n in sim.nodes)
    # The honest origin is untouched everywhere.
    assert {len(n.ledger.logs[sim.nodes[20].key]) for n in sim.nodes} == {5}


def test_sim_cleared_fork_replicates_the_origin_again() -> None:
    sim = Simulation(N, seed=b"clear")
    sim.start()
    rogue = sim.nodes[7].identity
    chain = make_chain(rogue, 8, body_bytes=100)
    for k, entry in enumerate(chain[:3]):
        sim.at(1 + 0.05 * k, lambda e=entry: sim.publish(7, e))
    sim.run_until(3)
    # A conflict at seq 3 reaches node 33 (say, from an old backup of the key).
    twin = make_chain(rogue, 1, start=3, prev=chain[1].hash, body_bytes=100, tag=b"twin")[0]
    proof = detect_fork(chain[2], twin)
    assert proof is not None
    node33 = sim.nodes[33]
    assert node33.ledger.add_proof(proof) and node33.engine is not None
    node33.engine.fork_detected(proof, sim.now)
    sim.run_until_converged(sim.now + 30, check=lambda: all(
        rogue.public_key in n.ledger.forks for n in sim.nodes))
    assert all(rogue.public_key.key_id in n.engine.forked() for n in sim.nodes if n.engine)
    # Half the admins clear it; sessions then drop and come back, so the nodes that
    # have not cleared it offer the proof again to those that have, who must not
    # take it again. Then the other half clear it.
    order = list(range(N))
    sim.rng.shuffle(order)
    for i in order[:N // 2]:
        sim.clear_fork(i, rogue.public_key)
    sim.partition([range(0, N, 2), range(1, N, 2)])
    sim.run_until(sim.now + 1)
    sim.heal()
    sim.run_until(sim.now + 5)
    cleared = [sim.nodes[i].engine for i in order[:N // 2]]
    assert all(e is not None and rogue.public_key.key_id not in e.forked() for e in cleared)
    for i in order[N // 2:]:
        sim.clear_fork(i, rogue.public_key)
    for k, entry in enumerate(chain[3:]):
        sim.at(sim.now + 0.05 * k, lambda e=entry: sim.publish(7, e))
    end = sim.run_until_converged(sim.now + 60)
    assert sim.converged(), f"not converged at {end}"
    assert {len(n.ledger.logs[rogue.public_key]) for n in sim.nodes} == {8}
    assert not any(n.ledger.forks for n in sim.nodes)
    assert not any(n.engine.forked() for n in sim.nodes if n.engine)


def _inject(sim: Simulation, i: int, entry) -> None:
    """A stolen copy of a key publishes through node ``i`` (the ledger takes it as local)."""
    sim.publish(i, entry)


def test_sim_session_drops_are_repaired_by_reconnect_catch_up() -> None:
    link = LinkModel(session_drop=0.02)
    sim = Simulation(N, seed=b"drops", link=link, reconnect_delay=0.5)
    sim.start()
    chains = _origins(sim, [0, 11, 22, 33], 15)
    t = _publish_spread(sim, chains, 1.0, 0.02)
    sim.run_until(t)
    end = sim.run_until_converged(t + 60)
    assert sim.converged(), f"not converged at {end}"
    assert _total_entries(sim) == 60


def test_sim_new_node_catches_up_a_backlog_in_bounded_windows() -> None:
    params = GossipParams(want_batch=64, want_window=256)
    sim = Simulation(12, seed=b"backlog", params=params)
    late = 11
    sim.start()
    sim.crash(late)
    chains = {i: make_chain(sim.nodes[i].identity, 400, body_bytes=50) for i in (0, 1, 2)}
    for i, chain in chains.items():
        for entry in chain:
            sim.publish(i, entry)
    sim.run_until(30)
    assert sim.nodes[late].ledger.logs == {}
    sim.restart(late)
    # Live traffic keeps flowing while the late node catches up.
    live = make_chain(sim.nodes[5].identity, 5, body_bytes=50)
    for k, entry in enumerate(live):
        sim.at(sim.now + 1.2 + 0.1 * k, lambda e=entry: sim.publish(5, e))
    biggest_window = 0
    while sim.now < 60 and not sim.converged():
        sim.run_until(sim.now + 0.05)
        engine = sim.nodes[late].engine
        assert engine is not None
        wants = engine.wants_in_flight()
        assert all(last - first < 64 for _, _, first, last in wants)
        for peer in {w[0] for w in wants}:
            window = sum(last - first + 1 for p, _, first, last in wants if p == peer)
            assert window <= 256
            biggest_window = max(biggest_window, window)
    assert sim.converged()
    assert len(sim.nodes[late].ledger.logs[sim.nodes[5].key]) == 5
    assert biggest_window > 64  # pipelined: several ranges in flight to one peer
    assert sim.nodes[late].engine.backlog() == 0


def test_sim_replays_exactly_from_its_seed() -> None:
    def run() -> tuple[int, int, int, float]:
        sim = Simulation(20, seed=b"replay", link=LinkModel(loss=0.1, reorder=0.1))
        sim.start()
        chains = _origins(sim, [0, 1], 5)
        t = _publish_spread(sim, chains, 1.0, 0.05)
        sim.run_until(t)
        end = sim.run_until_converged(t + 60)
        return (*sim.traffic(), end)

    assert run() == run()


def test_sim_untrusted_origin_is_not_replicated() -> None:
    sim = Simulation(10, seed=b"trust")
    outsider = make_identity("outsider")
    members: list[PublicKey] = [n.key for n in sim.nodes]
    sim.start()
    for n in sim.nodes:
        assert n.engine is not None
        n.engine.set_trusted(members, sim.now)
    sim.publish(0, make_chain(outsider, 1)[0])
    sim.publish(1, make_chain(sim.nodes[1].identity, 1)[0])
    sim.run_until(10)
    assert all(outsider.public_key not in n.ledger.logs for n in sim.nodes[1:])
    assert all(len(n.ledger.logs[sim.nodes[1].key]) == 1 for n in sim.nodes)


@pytest.mark.slow
def test_run_propagation_reports_the_benchmark_figures() -> None:
    result = run_propagation(100, 40, rate=40.0, warmup=10)
    print("\n" + result.summary())
    assert result.reached_all
    assert result.entries == 40
    assert result.copies_per_node_per_entry < 1.2
    assert result.control_payload_ratio < 0.15
    assert 0 < result.publish_to_all_p50 <= result.publish_to_all_p99 <= result.publish_to_all_max
