"""retention: the ledger's bytes on disk per observation before and after 90% expire.

Setup: one origin signs ``N`` CLEAR IPv4 observations (the bench's usual payload,
bench/fed.py ``observation_body``); 90% of them carry ``expires_ms`` one hour after
signing, 10% none (docs/protocol.md §3). They are stored with the ledger's batched
``ingest`` (the replicated-entries path). Measured, as bytes of the ledger file and its
WAL after a checkpoint, divided by ``N``:
- ``before_bytes_per_obs``: every body present;
- ``after_bytes_per_obs``: after the sweep of agent/node/retention.py's query
  (``agent.storage.retention.due``, then ``Ledger.drop_bodies`` EXPIRED) at the
  expiry instant: SQLite keeps the freed pages for reuse, so the file does not shrink
  by itself (what new entries then fill);
- ``vacuumed_bytes_per_obs``: the same file after ``VACUUM``: what the expired
  entries (their signed headers, kept for the chain) still cost;
- ``sweep_per_s``: bodies dropped per second by the sweep.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from agent.storage.ledger import BodyState, Ledger
from agent.storage.retention import due
from bench.common import Context, Result
from bench.fed import identity, ipv4, observation_body
from protocol.entries import TLP, VerifiedEntry, sign_entry

TS0 = 1_790_000_000_000
HOUR_MS = 3_600_000


def _size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def _run(ctx: Context, n: int) -> Result:
    result = Result("retention", params={"observations": n, "expired_share": 0.9})
    author = identity("retention-origin")
    entries: list[VerifiedEntry] = []
    prev = None
    for i in range(n):
        expires = TS0 + i + HOUR_MS if i % 10 else 0
        e = sign_entry(author, seq=i + 1, prev=prev, now_ms=TS0 + i, tlp=TLP.CLEAR,
                       audience=None, body=observation_body(ipv4(i)), expires_ms=expires)
        entries.append(e)
        prev = e.hash
    path = ctx.tempdir("retention") / "ledger.sqlite3"
    me = identity("retention-holder")
    ledger = await Ledger.open(path, identity=me, is_trusted_origin=lambda _key: True)
    try:
        for at in range(0, n, 1000):
            await ledger.ingest(entries[at:at + 1000])
        before = await asyncio.to_thread(_size, path)
        t0 = time.perf_counter()
        dropped = 0
        while ids := await due(ledger, TS0 + n + HOUR_MS):
            dropped += len((await ledger.drop_bodies(ids, BodyState.EXPIRED)).entries)
        sweep_s = time.perf_counter() - t0
        report = await ledger.verify()
        assert report.ok and report.bodies.get("expired") == dropped, report
        after = await asyncio.to_thread(_size, path)
    finally:
        await ledger.close()
    assert dropped == n - len(range(0, n, 10)), dropped

    def vacuum() -> int:
        conn = sqlite3.connect(path)
        try:
            conn.execute("VACUUM")
        finally:
            conn.close()
        return _size(path)

    vacuumed = await asyncio.to_thread(vacuum)
    result.add("before_bytes_per_obs", "ledger bytes per observation, all bodies", before / n,
               "B")
    result.add("after_bytes_per_obs", "after 90% expired (pages kept for reuse)", after / n,
               "B")
    result.add("vacuumed_bytes_per_obs", "after 90% expired, then VACUUM", vacuumed / n, "B")
    result.add("sweep_per_s", "expired bodies dropped per second", dropped / sweep_s, "/s")
    result.notes.append(f"{dropped} of {n} bodies expired; verify ok")
    return result


def run(ctx: Context) -> Result:
    return asyncio.run(_run(ctx, 2_000 if ctx.quick else 100_000))
