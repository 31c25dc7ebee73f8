"""Where a catching-up node's time goes per entry, in one process (issue 20).

``python -m bench.chainrun_profile [N] [noprof]``: N entries (default 40,000) of 200
origins, cut into runs of 256 as WANT replies arrive (origins interleaved), then the
node's steps one after the other, each timed:

- *pull*: the catching-up engine's whole exchange with a peer's engine that holds the
  entries (sans-I/O: HELLO, heads, WANTs, ENTRIES, timers), each batch reported stored
  at once; only the catching-up side's CPU counts;
- *receive*: what the gossip engine does in the node's main process with each run, as
  one ENTRIES frame from a peer (``GossipEngine.receive``: the frame decoded, each
  entry's header read and hashed, classified and handed over as ``EntriesReceived``);
- *check*: what a verify worker does with each run (``agent.workers.verify.check_raws``:
  ``verify_batch``, and the clear payloads decoded into index records);
- *rebuild*: what the node's main process does with the worker's verdicts
  (``VerifyWorker._rebuild``: the entries rebuilt from the bytes it holds);
- *store*: ``Ledger.ingest`` with those records, 2,048 entries at a time (the ingest
  pipeline's ``store_max_entries``) into a fresh ledger. Its CPU time is given apart:
  the transaction runs on the database's thread, so wall time and CPU differ. Then
  the floor under it: the rows it wrote inserted again by SQLite alone (``executemany``
  into a fresh ledger, the same pragmas and transactions).

Prints the CPU time per entry of each step, then (unless ``noprof``) the cProfile of the
store step (the event loop's thread only), by own time.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from agent.storage.ledger import Ledger
from agent.storage.queries import IndexRecord
from agent.storage.schema import migrate
from agent.workers.verify import Checked, VerifyWorker, check_raws
from bench.ingest import make_entries
from protocol.entries import VerifiedEntry
from protocol.gossip import EntriesReceived, EntriesRequested, GossipEngine
from protocol.keys import Identity
from protocol.messages import Entries, encode_message

STORE_MAX = 2048


def _sqlite_floor(stored: Path) -> float:
    """CPU seconds SQLite alone takes to write the rows ``_store`` wrote: every row of
    ``stored`` read back as tuples, then inserted into a fresh ledger of the same schema
    and pragmas (foreign keys unchecked), ``STORE_MAX`` entries' rows per transaction,
    with ``executemany`` (no per-row Python but the binding). The least any Python
    store of these rows costs."""
    src = sqlite3.connect(stored)
    tables = [r[0] for r in src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    rows = {t: src.execute(f"SELECT * FROM {t}").fetchall() for t in tables}
    src.close()
    rows = {t: r for t, r in rows.items() if r}
    conn = sqlite3.connect(Path(tempfile.mkdtemp()) / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    # Foreign keys off: each table's rows are cut into chunks apart, so a chunk may
    # hold a row whose parent comes in the next; a floor need not check them.
    for pragma in ("synchronous = NORMAL", "cache_size = -16384", "temp_store = MEMORY",
                   "secure_delete = ON"):
        conn.execute(f"PRAGMA {pragma}")
    migrate(conn, now_ms=0, software="floor")
    # What the schema itself wrote (its version, the node's metadata) is not ingest.
    rows = {t: r for t, r in rows.items()
            if conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0}
    entries = len(rows["entries"])
    chunks = max(1, entries // STORE_MAX)
    cpu = time.process_time()
    for i in range(chunks):
        conn.execute("BEGIN")
        for table, all_rows in rows.items():
            part = all_rows[i * len(all_rows) // chunks:(i + 1) * len(all_rows) // chunks]
            if part:
                marks = ", ".join("?" * len(part[0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", part)
        conn.execute("COMMIT")
    cpu = time.process_time() - cpu
    conn.close()
    return cpu


async def _store(checked: list[Checked], prof: cProfile.Profile | None,
                 path: Path) -> tuple[float, float]:
    groups: list[tuple[list[VerifiedEntry], dict[bytes, IndexRecord | None]]] = [([], {})]
    for batch in checked:
        if len(groups[-1][0]) >= STORE_MAX:
            groups.append(([], {}))
        groups[-1][0].extend(e for e in batch.entries if e is not None)
        groups[-1][1].update(batch.records)
    ledger = await Ledger.open(path,
                               identity=Identity(b"p" * 32),
                               is_trusted_origin=lambda _key: True)
    if prof is not None:
        prof.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    for entries, records in groups:
        await ledger.ingest(entries, records=records)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if prof is not None:
        prof.disable()
    await ledger.close()
    return wall, cpu


def _receive(runs: list[list[bytes]]) -> tuple[float, int]:
    """CPU seconds the engine takes to receive ``runs`` as ENTRIES frames, and the
    number of entries it hands over."""
    peer = Identity(b"q" * 32).public_key
    engine = GossipEngine(Identity(b"p" * 32).public_key, seed=b"s" * 32)
    engine.add_peer(peer, 0.0)
    frames = [encode_message(Entries(tuple(run), False)) for run in runs]
    handed = 0
    cpu = time.process_time()
    for frame in frames:
        engine.receive(peer, frame, 1.0)
        while (event := engine.next_event()) is not None:
            if isinstance(event, EntriesReceived):
                handed += len(event.raws)
    return time.process_time() - cpu, handed


def _pull_catch_up(entries: list[VerifiedEntry]) -> tuple[float, int]:
    """CPU seconds the catching-up engine takes to pull ``entries`` from a peer's engine
    that holds them (sans-I/O, no network: every message handed over at once, each
    batch reported stored at once), and the entries it had stored at the end."""
    a_key, b_key = Identity(b"a" * 32).public_key, Identity(b"b" * 32).public_key
    chains: dict[bytes, list[VerifiedEntry]] = {}
    for e in entries:
        chains.setdefault(e.origin.key_id, []).append(e)
    heads = {chain[0].origin: (chain[-1].seq, chain[-1].hash) for chain in chains.values()}
    by_raw = {e.raw: e for e in entries}
    a = GossipEngine(a_key, seed=b"a" * 32, heads=heads)
    b = GossipEngine(b_key, seed=b"b" * 32)
    now, cpu, stored = 0.0, 0.0, 0
    a.add_peer(b_key, now)
    start = time.process_time()
    b.add_peer(a_key, now)
    cpu += time.process_time() - start
    while stored < len(entries) and now < 600.0:
        moved = False
        for data in a.data_to_send(b_key, now):
            moved = True
            start = time.process_time()
            b.receive(a_key, data, now)
            while (event := b.next_event()) is not None:
                if isinstance(event, EntriesReceived):
                    done = [by_raw[raw] for raw in event.raws]
                    b.entries_stored(event.batch, done, now)
                    stored += len(done)
            cpu += time.process_time() - start
        start = time.process_time()
        out = b.data_to_send(a_key, now)
        cpu += time.process_time() - start
        for data in out:
            moved = True
            a.receive(b_key, data, now)
            while (event := a.next_event()) is not None:
                if isinstance(event, EntriesRequested):
                    chain = chains[event.origin.key_id]
                    a.send_entries(b_key, [e.raw for e in chain[event.from_seq - 1:
                                                                 event.to_seq]],
                                   request=event.request)
        if not moved:  # nothing in flight: the next timer (anti-entropy, eligibility)
            at = min(t for t in (a.get_timer(), b.get_timer(), now + 1.0) if t is not None)
            now = max(now, at)
            a.handle_timer(now)
            start = time.process_time()
            b.handle_timer(now)
            cpu += time.process_time() - start
    return cpu, stored


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    _, entries = make_entries(200, n, "prof")
    per = n // 200
    n = per * 200
    runs = [[e.raw for e in entries[o * per + i:o * per + min(per, i + 256)]]
            for i in range(0, per, 256) for o in range(200)]
    pull, stored = _pull_catch_up(entries)
    if stored != n:
        raise SystemExit(f"the pulling engine stored {stored} of {n} entries")
    receive, handed = _receive(runs)
    if handed != n:
        raise SystemExit(f"the engine handed over {handed} of {n} entries")
    t0 = time.process_time()
    verdicts = [check_raws(run) for run in runs]
    t1 = time.process_time()
    checked = [VerifyWorker._rebuild(run, v) for run, v in zip(runs, verdicts, strict=True)]
    t2 = time.process_time()
    prof = None if "noprof" in sys.argv[2:] else cProfile.Profile()
    stored = Path(tempfile.mkdtemp()) / "ledger.db"
    wall, cpu = asyncio.run(_store(checked, prof, stored))
    floor = _sqlite_floor(stored)
    print(f"pull {pull / n * 1e6:.1f} us/entry (main process); "
          f"receive {receive / n * 1e6:.1f} us/entry (main process); "
          f"check {(t1 - t0) / n * 1e6:.1f} us/entry (worker); rebuild "
          f"{(t2 - t1) / n * 1e6:.1f} us/entry; store {wall / n * 1e6:.1f} us/entry "
          f"({cpu / n * 1e6:.1f} us CPU) (main process), of which SQLite alone "
          f"{floor / n * 1e6:.1f} us CPU")
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
