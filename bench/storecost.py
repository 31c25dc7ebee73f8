"""What the ledger's writer thread spends per received entry, statement by statement.

``python -m bench.storecost [PREFILL [COUNT]]``: a ledger of PREFILL observations
(default 100,000, as ``bench mixed``'s node holds) of 4 origins, then COUNT (8,000)
entries of a fifth
stored the way the mixed load's peer sends them (``Ledger.ingest`` of 400 at a time,
with the index records a verify worker builds). Each statement of each write
transaction is timed on the database's thread (the transaction function wrapped,
agent/storage/core.py ``_commit``; nothing else changes). Then the same into a second
ledger whose ``entries_by_hash`` index was dropped, to show what indexing a content
hash (random keys: each insert lands on its own page) costs the insert and the
``COMMIT`` (the WAL gets every page a transaction dirtied).

Prints microseconds per entry by statement, and each ingest's wall time (p50, max).
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


async def _measure(path: Path, prefill: int, count: int, drop_hash_index: bool
                   ) -> tuple[dict[str, float], list[float]]:
    me = Identity(b"m" * 32)
    ledger = await Ledger.open(path, identity=me, is_trusted_origin=lambda _key: True)
    per_origin = prefill // 4
    try:
        for o in range(4):
            await fill_ledger(ledger, sign_chain(
                identity(f"storecost-{o}"), per_origin, value=_from(o * per_origin)))
    finally:
        await ledger.close()
    if drop_hash_index:
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
        original(_TimedConnection(conn, spent), batch, full)  # type: ignore[arg-type]

    walls: list[float] = []
    ledger = await Ledger.open(path, identity=me, is_trusted_origin=lambda _key: True)
    core._commit = timed_commit
    try:
        for one in checked:
            start = time.perf_counter()
            result = await ledger.ingest([e for e in one.entries if e is not None],
                                         records=one.records)
            walls.append(time.perf_counter() - start)
            if result.stored != len(one.entries):
                raise RuntimeError(f"stored {result.stored} of {len(one.entries)}")
    finally:
        core._commit = original
        await ledger.close()
    return spent, sorted(walls)


def main() -> None:
    prefill = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    count = int(sys.argv[2]) if len(sys.argv) > 2 else COUNT
    print(f"ledger of {prefill:,} observations; {count:,} entries stored {BATCH} at a time")
    with tempfile.TemporaryDirectory(prefix="entraide-storecost-") as tmp:
        for label, drop in (("as built", False), ("without entries_by_hash", True)):
            spent, walls = asyncio.run(_measure(Path(tmp) / f"{drop}.sqlite3", prefill,
                                                count, drop))
            total = sum(spent.values())
            print(f"\n{label}: writer thread {total / count * 1e6:.1f} us per entry; "
                  f"ingest of {BATCH}: p50 {walls[len(walls) // 2] * 1000:.1f} ms, "
                  f"max {walls[-1] * 1000:.1f} ms")
            for what, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"  {seconds / count * 1e6:7.1f} us  {what}")


if __name__ == "__main__":
    main()
