"""Who owns the verifier: the replicator closes the pool it built, never one it was given."""

from __future__ import annotations

from pathlib import Path

from agent.peering.replicator import Replicator
from agent.workers.verify import VerifyPool
from protocol.keys import Identity
from tests.agent._ledger_helpers import open_ledger
from tests.agent.nodes import FAST_TRANSPORT, make_entries

ME = Identity(b"m" * 32)


async def test_replicator_leaves_a_given_verifier_open(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "m.db", ME)
    pool = VerifyPool(threads=1, processes=0, min_batch=64, eager=False)
    try:
        repl = Replicator(ME, [], ledger, transport=FAST_TRANSPORT, verifier=pool)
        await repl.start()
        assert repl.verifier is pool
        await repl.stop()
        assert repl.verifier is pool
        entries = make_entries(Identity(b"a" * 32), 3)
        checked = await pool.check([e.raw for e in entries])  # still open: threads run
        assert checked.entries == entries
    finally:
        await pool.close()
        await ledger.close()


async def test_replicator_closes_the_pool_it_built(tmp_path: Path) -> None:
    ledger = await open_ledger(tmp_path / "m.db", ME)
    try:
        repl = Replicator(ME, [], ledger, transport=FAST_TRANSPORT)
        assert repl.verifier is None  # built at start
        await repl.start()
        pool = repl.verifier
        assert isinstance(pool, VerifyPool)
        await repl.stop()
        assert repl.verifier is None and pool.processes_up == 0
    finally:
        await ledger.close()
