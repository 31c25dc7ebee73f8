"""What the ledger's write path spends per received entry, statement by statement.

``python -m bench.storecost [PREFILL [COUNT]]``: a ledger of PREFILL observations
(default 100,000, as ``bench mixed``'s node holds) of 4 origins, then COUNT (8,000)
entries of a fifth stored the way the mixed load's peer sends them (``Ledger.ingest``
of 400 at a time, with the index records a verify worker builds). Each statement of
each write transaction is timed on the database's thread (the transaction function
wrapped, agent/storage/core.py ``_commit``; nothing else changes). Three ledgers:

- *as built*: the WAL checkpointed by the checkpointer's own connection
  (agent/storage/checkpoint.py);
- *checkpoints inline*: as before it, SQLite's automatic checkpoint (1,000 pages) run
  by the ``COMMIT`` that crosses it;
- *without entries_by_hash*: that index dropped, to show what indexing a content hash
  costs (random keys: nearly every insert lands on another page, and the ``COMMIT``
  writes every page a transaction dirtied into the WAL).

Prints microseconds per entry by statement and for the whole process (every thread,
so the checkpointer's too), and each ingest's wall time (p50, max). Use a COUNT of
80,000 or more to see several checkpoints.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.storage import core
from agent.storage.ledger import Ledger
from agent.workers.verify import VerifyWorker, check_raws
from bench.fed import fill_ledger, identity, ipv4, sign_chain
from protocol.keys import Identity

BATCH = 400
"""Entries per ingest: an ENTRIES message of the mixed load (~395 on average)."""
COUNT = 8_000
"""Entries stored by default."""
VARIANTS = ("as built", "checkpoints inline", "without entries_by_hash")


class _TimedConnection:
    """The writer connection, each statement's time added to ``spent`` by its verb and
    table."""

    def __init__(self, conn: sqlite3.Connection, spent: dict[str, float]) -> None:
        self._conn = conn
        self._spent = spent

    def _timed(self, sql: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return call()
        finally:
            what = " ".join(sql.split("(")[0].split()[:3])
            self._spent[what] = self._spent.get(what, 0.0) + time.perf_counter() - start

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(sql, lambda: self._conn.execute(sql, *args))

    def executemany(self, sql: str, rows: Any) -> Any:
        return self._timed(sql, lambda: self._conn.executemany(sql, rows))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _from(first: int) -> Callable[[int], str]:
    """Entry ``seq`` observes ``ipv4(first + seq)``."""
    return lambda seq: ipv4(first + seq)


async def _measure(path: Path, prefill: int, count: int, variant: str
                   ) -> tuple[dict[str, float], list[float], float]:
    me = Identity(b"m" * 32)
    ledger = await Ledger.open(path, identity=me, is_trusted_origin=lambda _key: True)
    per_origin = prefill // 4
    try:
        for o in range(4):
            await fill_ledger(ledger, sign_chain(
                identity(f"storecost-{o}"), per_origin, value=_from(o * per_origin)))
    finally:
        await ledger.close()
    if variant == "without entries_by_hash":
        with sqlite3.connect(path) as conn:
            conn.execute("DROP INDEX entries_by_hash")
        conn.close()
    entries = sign_chain(identity("storecost-peer"), count,
                         value=_from(prefill), tag="storecost")
    checked = []
    for at in range(0, count, BATCH):
        raws = [e.raw for e in entries[at:at + BATCH]]
        checked.append(VerifyWorker._rebuild(raws, check_raws(raws)))
    spent: dict[str, float] = {}
    original = core._commit

    def timed_commit(conn: sqlite3.Connection, batch: Any, full: bool) -> None:
        if variant == "checkpoints inline":  # SQLite's default, as before the checkpointer
            conn.execute("PRAGMA wal_autocheckpoint = 1000")
        original(_TimedConnection(conn, spent), batch, full)  # type: ignore[arg-type]

    walls: list[float] = []
    ledger = await Ledger.open(path, identity=me, is_trusted_origin=lambda _key: True)
    if variant == "checkpoints inline":
        ledger._checkpointer._every = 1 << 62  # never: the writer's COMMITs do them
    core._commit = timed_commit
    cpu = time.process_time()
    try:
        for one in checked:
            start = time.perf_counter()
            result = await ledger.ingest([e for e in one.entries if e is not None],
                                         records=one.records)
            walls.append(time.perf_counter() - start)
            if result.stored != len(one.entries):
                raise RuntimeError(f"stored {result.stored} of {len(one.entries)}")
        async with ledger._checkpointer.exclusive():  # a checkpoint running: its end
            cpu_spent = time.process_time() - cpu
    finally:
        core._commit = original
        await ledger.close()
    # The process's CPU (every thread: the event loop, the writer, the checkpointer),
    # the close's final checkpoint left out.
    return spent, sorted(walls), cpu_spent


def main() -> None:
    prefill = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    count = int(sys.argv[2]) if len(sys.argv) > 2 else COUNT
    print(f"ledger of {prefill:,} observations; {count:,} entries stored {BATCH} at a time")
    with tempfile.TemporaryDirectory(prefix="entraide-storecost-") as tmp:
        for n, label in enumerate(VARIANTS):
            spent, walls, cpu = asyncio.run(_measure(Path(tmp) / f"{n}.sqlite3", prefill,
                                                     count, label))
            total = sum(spent.values())
            print(f"\n{label}: writer thread {total / count * 1e6:.1f} us per entry "
                  f"(the process, every thread: {cpu / count * 1e6:.1f} us); "
                  f"ingest of {BATCH}: p50 {walls[len(walls) // 2] * 1000:.1f} ms, "
                  f"max {walls[-1] * 1000:.1f} ms")
            for what, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"  {seconds / count * 1e6:7.1f} us  {what}")


if __name__ == "__main__":
    main()
