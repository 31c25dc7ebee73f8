"""The simulator itself (bench/sim.py): its verification cache and its overlay."""

from __future__ import annotations

import pytest

from bench.sim import Simulation, VerifyCache, make_chain, make_identity
from protocol.errors import EntraideError


def test_verify_cache_checks_each_distinct_entry_once_and_never_caches_a_failure() -> None:
    cache = VerifyCache()
    chain = make_chain(make_identity("cache"), 3)
    for _ in range(4):
        for entry in chain:
            assert cache(entry.raw).hash == entry.hash
    assert (cache.real, cache.hits) == (3, 9)
    tampered = bytearray(chain[0].raw)
    tampered[-1] ^= 1
    for _ in range(2):
        with pytest.raises(EntraideError):
            cache(bytes(tampered))
    assert cache.real == 5  # each failure was a real check


def test_a_run_verifies_each_distinct_entry_once_for_real() -> None:
    sim = Simulation(40, seed=b"verify-once")
    sim.start()
    chain = make_chain(sim.nodes[3].identity, 5)
    for k, entry in enumerate(chain):
        sim.at(1.0 + 0.1 * k, lambda e=entry: sim.publish(3, e))
    sim.run_until_converged(30.0)
    assert sim.converged()
    assert all(len(node.ledger.logs[sim.nodes[3].key]) == 5 for node in sim.nodes)
    # 39 other nodes stored each entry; the signatures were checked 5 times in all.
    assert sim.verify.real == 5
    assert sim.verify.hits >= 39 * 5 - 5


@pytest.mark.parametrize("n", [2, 3, 50, 2000])
def test_overlay_is_connected_with_degrees_in_range(n: int) -> None:
    sim = Simulation(n, seed=b"overlay")
    assert len(set(sim.edges)) == len(sim.edges)
    assert all(a < b for a, b in sim.edges)
    seen, todo = {0}, [0]
    while todo:
        for j in sim.neighbours[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    assert len(seen) == n
    if n > 3:
        degrees = [len(sim.neighbours[i]) for i in range(n)]
        assert min(degrees) >= 2 and max(degrees) <= 5
        assert sum(d >= 3 for d in degrees) >= 0.95 * n


def test_overlay_replays_from_its_seed() -> None:
    assert Simulation(300, seed=b"same").edges == Simulation(300, seed=b"same").edges
    assert Simulation(300, seed=b"same").edges != Simulation(300, seed=b"other").edges
