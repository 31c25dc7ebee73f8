"""A peer's lag in entries (docs/protocol.md §8, "Lag") between real nodes on 127.0.0.1:
a peer stopped while the other writes lags by what was written, then by none once it
is back and caught up; and the pure parts (merge_heads, lag) on their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.peering.registry import lag, merge_heads
from tests.agent.nodes import Federation, wait_for

pytestmark = pytest.mark.slow


def test_lag_counts_entries_each_side_holds_beyond_the_other() -> None:
    ours = {b"a": 10, b"b": 3}
    theirs = {b"a": 4, b"b": 5, b"z": 9}  # z: an origin we do not replicate
    assert lag(ours, theirs) == (6, 2)
    assert lag(ours, dict(ours)) == (0, 0)
    assert lag(ours, {}) == (13, 0)


def test_merge_heads_keeps_the_highest_seq_per_origin() -> None:
    assert merge_heads(None, None) is None
    assert merge_heads(None, {b"a": 1}) == {b"a": 1}
    assert merge_heads({b"a": 5, b"b": 1}, {b"a": 2, b"c": 7}) == {b"a": 5, b"b": 1, b"c": 7}


async def test_peer_lag_grows_while_a_peer_is_away_and_returns_to_zero(tmp_path: Path) -> None:
    async with Federation.start(tmp_path, 2) as fed:
        a, b = fed.nodes
        await fed.wait_connected()
        # Never heard whole yet, or already: either way it settles at zero both ways.
        await a.write(5)
        await b.write(2)
        await wait_for(fed.converged, what="both ledgers equal")

        def lags() -> tuple[int | None, int | None]:
            status = a.repl.peer_status(b.key)
            return status.lag_entries, status.behind_entries

        await wait_for(lambda: lags() == (0, 0), what="no lag once converged")

        await b.stop()
        await a.write(7)
        assert lags() == (7, 0)  # b's last known heads, kept while it is away
        assert not a.repl.peer_status(b.key).connected
        families = {f.name: f for f in a.repl.metric_families()}
        assert families["entraide_peer_lag_entries"].samples[(b.name,)] == 7.0

        await b.restart()
        await wait_for(lambda: b.head_seq(a.key) == 12, what="b caught up")
        await wait_for(lambda: lags() == (0, 0), what="no lag after the catch-up")
        assert b.repl.peer_status(a.key).lag_entries == 0
