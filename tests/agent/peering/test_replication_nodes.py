"""Multi-node replication with real nodes on 127.0.0.1: lines, crashes, catch-up.

Each node is a real ledger (SQLite in tmp_path), a replicator and a peer listener
(tests/agent/nodes.py). Nothing waits a fixed time: every wait is for a condition,
with a deadline.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tests.agent.nodes import Federation, Node, wait_for

pytestmark = pytest.mark.slow


def _heads(node: Node, writers: dict[Node, int]) -> bool:
    return all(node.head_seq(w.key) == n for w, n in writers.items())


async def test_replication_line_of_five_carries_entries_end_to_end(tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 5, topology="line") as fed:
        await fed.wait_connected()
        first, last = fed.nodes[0], fed.nodes[-1]
        # Only neighbours are connected: entries must be relayed three times.
        assert set(first.repl.connected()) == {fed.nodes[1].key}
        assert set(fed.nodes[2].repl.connected()) == {fed.nodes[1].key, fed.nodes[3].key}
        (entry,) = await first.write(1)
        await wait_for(lambda: last.head_seq(first.key) == 1, what="N0's entry at N4")
        assert await last.db.get_entry(entry.id) == entry
        await last.write(3)
        await wait_for(lambda: first.head_seq(last.key) == 3, what="N4's entries at N0")
        await wait_for(fed.converged, what="all five ledgers equal")
        assert first.key not in last.repl.connected()


async def test_replication_killing_and_restarting_middle_node_loses_nothing(
        tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 5, topology="line") as fed:
        await fed.wait_connected()
        n0, _n1, mid, _n3, n4 = fed.nodes
        written = {node: 0 for node in fed.nodes}
        for node in fed.nodes:
            await node.write(10)
            written[node] += 10
        await wait_for(lambda: all(_heads(n, written) for n in fed.nodes),
                       what="first round everywhere")
        # The middle node writes and dies at once, without closing anything.
        await mid.write(5)
        written[mid] += 5
        await mid.stop(clean=False)
        # The two halves keep writing while the line is cut.
        await n0.write(20)
        await n4.write(20)
        written[n0] += 20
        written[n4] += 20
        await wait_for(lambda: fed.nodes[1].head_seq(n0.key) == written[n0]
                       and fed.nodes[3].head_seq(n4.key) == written[n4],
                       what="each half has its own side")
        assert fed.nodes[3].head_seq(n0.key) == 10  # the cut is real
        await mid.restart()
        await fed.wait_connected()
        await wait_for(lambda: all(_heads(n, written) for n in fed.nodes), timeout=60,
                       what="every entry on every node after the restart")
        assert fed.converged()
        assert (await n4.db.verify()).ok


async def test_replication_offline_node_catches_up_10000_entries(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "agent.peering.transport")
    async with Federation.start(tmp_path, 3) as fed:
        await fed.wait_connected()
        writer, online, late = fed.nodes
        await late.stop()
        started = time.monotonic()
        await writer.write(10_000)
        wrote = time.monotonic() - started
        await wait_for(lambda: online.head_seq(writer.key) == 10_000, timeout=120,
                       what="the online node following live")
        started = time.monotonic()
        await late.restart()
        # Live traffic keeps flowing during the catch-up.
        await online.write(1)
        await wait_for(lambda: late.head_seq(online.key) == 1, timeout=60,
                       what="a live entry reaching the catching-up node")
        await wait_for(lambda: late.head_seq(writer.key) == 10_000, timeout=120,
                       what="10,000 entries caught up")
        took = time.monotonic() - started
        await wait_for(fed.converged, what="all ledgers equal")
        assert (await late.db.verify()).ok
        received = sum(c.entries_in for c in late.repl.counters.values())
        duplicates = sum(c.duplicates for c in late.repl.counters.values())
        print(f"\n10,000 entries: written in {wrote:.2f}s; caught up in {took:.2f}s "
              f"({10_000 / took:.0f} entries/s); copies received {received}, "
              f"duplicates {duplicates}")
        assert received < 2 * 10_000  # bounded WANT windows, not a flood of copies
    assert any("catch-up" in r.getMessage() for r in caplog.records)


async def test_replication_full_mesh_converges_with_concurrent_writers(tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 4) as fed:
        await fed.wait_connected()
        written = {}
        for node in fed.nodes:
            await node.write(50)
            written[node] = 50
        await wait_for(lambda: all(_heads(n, written) for n in fed.nodes), timeout=60,
                       what="every writer's log everywhere")
        # Steady state: each entry reached each node about once (Plumtree), not n-1 times.
        total_in = sum(c.entries_in for n in fed.nodes for c in n.repl.counters.values())
        assert total_in <= 3 * 50 * 4 * 2
