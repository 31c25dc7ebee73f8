"""bigledger: one node whose ledger holds ten million observations (issue 20).

Setup, cached: ``ORIGINS`` author identities each sign a chain of CLEAR IPv4
observations; every indicator value is observed by ``SHARING`` origins. Both cores
sign (a pool of two helper processes, each signing whole chains of its own origins)
while this process stores the finished chains with the ledger's batched ``ingest``
(the path replicated entries take: the real schema, every index and derived table).
At most ``_AHEAD`` chains wait in memory. The node's data dir is built under
``/var/tmp/entraide-bench/bigledger-<N>-s<schema>/`` (``BENCH_BIGLEDGER_DIR`` for
another parent) and kept: a later run with the same size and schema reuses it (the
output says so). The size is ``BENCH_BIGLEDGER_OBS`` (default 10,000,000; 100,000
with ``--quick``). A run refuses with one line when the disk is short.

Measured, the node an ``entraide run`` process:
- bytes on disk: the ledger files after a WAL checkpoint (node stopped) over the
  observations, against the mean wire size of an entry (``len(raw)``); the biggest
  tables and indexes (SQLite's dbstat) in the notes;
- start-up: from spawning ``entraide run`` until a lookup answers 200 (and until
  ``/health`` answers);
- RSS of the node's main process and, listed apart, of each helper process (private
  memory too: their RSS counts the ledger pages they map, which the page cache
  shares), after start and after the lookup load;
- indicator lookups ``GET /api/v1/indicators/ipv4-addr/{value}`` through
  bench/httpload.py (the query scenario's load generator and checks): 1 client, then
  32 clients, p50/p99, each response checked;
- last, a fresh node (a second ``entraide run``, trusting the same origins) dials
  this one and catches up; timed until it holds every entry, or, when that would
  take over ``CATCHUP_FULL_S`` at the rate seen, until it holds ``CATCHUP_PART`` and
  extrapolated (said so in the figure's label).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.cli.localfed import child_pids, wait_idle
from agent.config.datadir import DataDir
from agent.config.settings import load_node_config, write_node_config
from agent.storage.schema import SCHEMA_VERSION
from bench.common import Context, Result, percentile, private_mb, rss_peak_mb
from bench.fed import (
    Client,
    FedNode,
    LocalFederation,
    add_origins,
    identity,
    new_federation,
    open_ledger,
)
from bench.httpload import run_load
from bench.query import _body, lookup_check
from protocol.entries import TLP, VerifiedEntry, sign_entry

ORIGINS = 200
SHARING = 4
CLIENTS = 32
TS0 = 1_760_000_000_000
BATCH = 10_000
_AHEAD = 4
"""Signed chains waiting for the store at most (each ~50,000 entries at full size)."""
DISK_BYTES_PER_OBS = 1_200
"""Free space a build needs per observation (the ledger, its WAL, a margin)."""
CATCHUP_FULL_S = 20 * 60
CATCHUP_PART = 1_000_000
START_TIMEOUT_S = 120.0


def _value(index: int) -> str:
    """A distinct IPv4 address for each ``index`` below 16,384,000."""
    return f"{11 + index % 200}.{(index >> 8) & 255}.{index & 255}.{1 + (index >> 16) % 250}"


def _sign_origin(args: tuple[int, int, int]) -> tuple[list[VerifiedEntry], int]:
    """Origin ``o``'s whole chain of ``per`` observations and its wire bytes (runs in a
    helper process). Value ``(o * per + seq) % distinct``: with ``ORIGINS`` a multiple of
    ``SHARING``, every value is observed by ``SHARING`` origins."""
    o, per, distinct = args
    ident = identity(f"bigledger-origin-{o}")
    prev = None
    out = []
    wire = 0
    for seq in range(1, per + 1):
        entry = sign_entry(ident, seq=seq, prev=prev, now_ms=TS0 + seq, tlp=TLP.CLEAR,
                           audience=None, body=_body(_value((o * per + seq) % distinct)))
        out.append(entry)
        wire += len(entry.raw)
        prev = entry.hash
    return out, wire


def _origin_names() -> list[tuple[str, Any]]:
    return [(f"BL{o:03d}", identity(f"bigledger-origin-{o}").public_key)
            for o in range(ORIGINS)]


async def _build_ledger(node: FedNode, total: int, log: Any) -> dict[str, float]:
    """Fill the stopped node's ledger with ``total`` observations."""
    per = total // ORIGINS
    distinct = total // SHARING
    start = time.perf_counter()
    done = wire = 0
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    async with open_ledger(node) as ledger:
        with ctx.Pool(2) as pool:
            tasks: Iterator[tuple[int, int, int]] = iter(
                [(o, per, distinct) for o in range(ORIGINS)])
            pending: deque[Any] = deque()

            def refill() -> None:
                while len(pending) < _AHEAD:
                    task = next(tasks, None)
                    if task is None:
                        return
                    pending.append(pool.apply_async(_sign_origin, (task,)))

            refill()
            while pending:
                chain, chain_wire = await loop.run_in_executor(None, pending.popleft().get)
                refill()
                for at in range(0, len(chain), BATCH):
                    chunk = chain[at:at + BATCH]
                    result = await ledger.ingest(chunk)
                    if result.stored != len(chunk):
                        raise RuntimeError(f"stored {result.stored} of {len(chunk)}")
                done += len(chain)
                wire += chain_wire
                del chain
                if done % (per * 10) == 0 or done == total:
                    log(f"bigledger: ledger holds {done:,} observations "
                        f"({done / (time.perf_counter() - start):,.0f}/s)")
    seconds = time.perf_counter() - start
    return {"build_s": seconds, "build_per_s": done / seconds, "wire_bytes": wire,
            "observations": done, "distinct": distinct}


def _cache_root() -> Path:
    return Path(os.environ.get("BENCH_BIGLEDGER_DIR", "/var/tmp/entraide-bench"))


def _ledger_files(node: FedNode) -> list[Path]:
    dd = DataDir(node.data_dir)
    path = load_node_config(dd).ledger_path(dd)
    return sorted(p for p in path.parent.glob(path.name + "*") if p.is_file())


def _checkpoint(node: FedNode) -> Path:
    """The (stopped) node's ledger with its WAL checkpointed into the main file."""
    dd = DataDir(node.data_dir)
    path = load_node_config(dd).ledger_path(dd)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return path


def _biggest(path: Path, n: int = 8) -> list[tuple[str, int]]:
    """The ``n`` biggest tables and indexes of the SQLite file (dbstat), bytes each."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name "
                            "ORDER BY 2 DESC LIMIT ?", (n,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [(str(name), int(size)) for name, size in rows]


def _wire_bytes(path: Path) -> int:
    """The wire bytes of every entry in the ledger file, from the stored parts: an
    entry is ``encode([header, body])`` (protocol/entries.py ``split_entry``)."""
    framing = ("(CASE WHEN length({0}) < 256 THEN 2 WHEN length({0}) < 65536 THEN 3 "
               "ELSE 5 END + length({0}))")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(f"SELECT sum(1 + {framing.format('header')} + coalesce("
                           f"{framing.format('body')}, 1)) FROM entries").fetchone()
    finally:
        conn.close()
    return int(row[0] or 0)


def finalize(building: Path, started: float) -> Path:
    """Keep a build that was stopped before the end (a deadline): its ledger holds the
    chains stored so far (the last one possibly a prefix), a real ledger of fewer
    observations, cached as ``bigledger-<stored>-s<schema>`` and marked partial."""
    path = building / "l" / "ledger.sqlite3"
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        stored = int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    finally:
        conn.close()
    total = int(building.name.split("-")[1])
    ident = json.loads(subprocess.run(
        [sys.executable, "-m", "agent.cli", "id", "--json", "--data-dir", str(building / "l")],
        capture_output=True, text=True, check=True).stdout)
    token = json.loads(subprocess.run(
        [sys.executable, "-m", "agent.cli", "token", "create", "--scope", "admin", "--name",
         "bigledger", "--json", "--data-dir", str(building / "l")],
        capture_output=True, text=True, check=True).stdout)["token"]
    seconds = path.stat().st_mtime - started
    meta = {"key": ident["key"], "token": token, "schema": SCHEMA_VERSION,
            "build_s": seconds, "build_per_s": stored / seconds,
            "wire_bytes": _wire_bytes(path), "observations": stored,
            "distinct": total // SHARING, "partial_of": total,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))}
    (building / "bigledger.json").write_text(json.dumps(meta, indent=2) + "\n",
                                             encoding="utf-8")
    root = building.parent / f"bigledger-{stored}-s{SCHEMA_VERSION}"
    building.rename(root)
    return root


def _federation(root: Path) -> tuple[LocalFederation, dict[str, Any]]:
    """The cached node at ``root`` (built by :func:`_prepare`), on new free ports."""
    meta = json.loads((root / "bigledger.json").read_text(encoding="utf-8"))
    fed = LocalFederation(root, [("L", "Bench L")], [])
    node = fed["L"]
    node.key, node.token = meta["key"], meta["token"]
    dd = DataDir(node.data_dir)
    config = load_node_config(dd)
    write_node_config(dd, config.model_copy(update={
        "api": config.api.model_copy(update={"port": node.api_port}),
        "peer": config.peer.model_copy(update={"port": node.peer_port})}))
    node.card = json.loads(node.cli("id", "--json").stdout)["card"]
    return fed, meta


def _prepare(ctx: Context, total: int, result: Result) -> tuple[LocalFederation, dict[str, Any]]:
    """The node with ``total`` observations: from the cache, or built into it."""
    parent = _cache_root()
    root = parent / f"bigledger-{total}-s{SCHEMA_VERSION}"
    if (root / "bigledger.json").exists():
        ctx.log(f"bigledger: reusing the ledger built before in {root}")
        result.notes.append(f"ledger reused from {root} (built by an earlier run)")
        return _federation(root)
    parent.mkdir(parents=True, exist_ok=True)
    need = total * DISK_BYTES_PER_OBS
    free = shutil.disk_usage(parent).free
    if free < need:
        raise RuntimeError(f"{parent} has {free / 2**30:.1f} GiB free; a ledger of "
                           f"{total:,} observations needs about {need / 2**30:.1f} GiB")
    building = parent / f"{root.name}.partial-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    fed = new_federation(building, ["L"])
    node = fed["L"]
    add_origins(node, _origin_names())
    ctx.log(f"bigledger: building {total:,} observations of {ORIGINS} origins in {building}")
    built = asyncio.run(_build_ledger(node, total, ctx.log))
    meta = {"key": node.key, "token": node.token, "schema": SCHEMA_VERSION, **built,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (building / "bigledger.json").write_text(json.dumps(meta, indent=2) + "\n",
                                             encoding="utf-8")
    building.rename(root)
    result.notes.append(f"ledger built into {root} (kept: the next run reuses it)")
    return _federation(root)


def _rss(pid: int, result: Result, when: str) -> None:
    peak, current = rss_peak_mb(pid)
    result.add(f"rss_{when}_mb", f"node main process RSS, {when.replace('_', ' ')}",
               current, "MiB", op="<=", target=300)
    result.params[f"rss_peak_{when}_mb"] = round(peak, 1)
    helpers: list[dict[str, Any]] = []
    for child in child_pids(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[-80:]
            helpers.append({"pid": child, "cmd": cmd, "rss_mb": round(rss_peak_mb(child)[1], 1),
                            "private_mb": round(private_mb(child), 1)})
        except OSError:
            continue
    result.params[f"helpers_{when}"] = helpers
    result.add(f"helpers_private_{when}_mb", f"its {len(helpers)} helper processes' private "
               f"memory, summed, {when.replace('_', ' ')}",
               sum(h["private_mb"] for h in helpers), "MiB")
    result.add(f"helpers_rss_{when}_mb", f"its helper processes' RSS, summed (mapped ledger "
               f"pages included), {when.replace('_', ' ')}",
               sum(h["rss_mb"] for h in helpers), "MiB")


def _start_timed(fed: LocalFederation, lookup: str) -> tuple[float, float]:
    """Start the node; seconds until /health answers and until ``lookup`` answers 200."""
    node = fed["L"]
    t0 = time.perf_counter()
    fed.start(timeout=START_TIMEOUT_S)
    health = time.perf_counter() - t0
    while True:
        try:
            node.call("GET", lookup)
            return health, time.perf_counter() - t0
        except Exception:
            if time.perf_counter() - t0 > START_TIMEOUT_S:
                raise
            time.sleep(0.01)


async def _lookups(node: FedNode, distinct: int, lookups: int, result: Result) -> None:
    rng = random.Random(20)
    auth = [("Authorization", f"Bearer {node.token}")]
    check = lookup_check(1, SHARING)  # 1 to SHARING origins: a build may have stopped

    def paths(n: int) -> list[str]:
        return [f"/api/v1/indicators/ipv4-addr/{_value(rng.randrange(distinct))}"
                for _ in range(n)]

    async def lean(todo: list[str], clients: int) -> tuple[float, list[float]]:
        warm = max(4 * clients, len(todo) // 10)  # untimed, as in the query scenario
        done = await run_load("127.0.0.1", node.api_port, todo[warm:], connections=clients,
                              headers=auth, check=check, warmup=todo[:warm])
        return done.seconds, done.latencies

    _, lat = await lean(paths(max(200, lookups // 10)), 1)
    result.add("lookup_1_p50_ms", "indicator lookup p50 (1 client)",
               percentile(lat, 0.5) * 1000, "ms")
    result.add("lookup_1_p99_ms", "indicator lookup p99 (1 client)",
               percentile(lat, 0.99) * 1000, "ms")
    seconds, lat = await lean(paths(lookups), CLIENTS)
    result.add("lookup_p50_ms", f"indicator lookup p50 ({CLIENTS} clients)",
               percentile(lat, 0.5) * 1000, "ms")
    result.add("lookup_p99_ms", f"indicator lookup p99 ({CLIENTS} clients)",
               percentile(lat, 0.99) * 1000, "ms", op="<=", target=10)
    result.add("lookup_per_s", "indicator lookups/s", len(lat) / seconds, "req/s")


def _catch_up(ctx: Context, fed: LocalFederation, total: int, result: Result) -> None:
    """A fresh node dials the big one and fetches its ledger (see the module doc)."""
    big = fed["L"]
    fresh_fed = new_federation(ctx.tempdir("bigledger-fresh"), ["F"])
    fresh = fresh_fed["F"]
    add_origins(fresh, _origin_names())
    fresh.cli("peers", "add", "--card", big.card)
    big.cli("peers", "remove", "F", check=False)
    big.cli("peers", "add", "--name", "F", "--key", fresh.key)
    try:
        fed.stop()
        fed.start(timeout=START_TIMEOUT_S)
        with fresh_fed:
            fresh_fed.start()
            t0 = time.perf_counter()
            goal = total
            seen = 0
            decided = False  # full or partial: judged once, 30 s in

            async def poll() -> None:
                nonlocal goal, seen, decided
                async with Client(fresh) as client:
                    last_log = 0.0
                    while seen < goal:
                        status = await client.request("GET", "/api/v1/status")
                        seen = int(status["ledger"]["entries"])
                        elapsed = time.perf_counter() - t0
                        if elapsed > 30 and seen and not decided:
                            decided = True
                            if total > CATCHUP_PART and total / (seen / elapsed) > CATCHUP_FULL_S:
                                goal = CATCHUP_PART
                        if elapsed - last_log > 30:
                            last_log = elapsed
                            ctx.log(f"bigledger: fresh node holds {seen:,} "
                                    f"({seen / elapsed:,.0f}/s)")
                        if elapsed > 4 * CATCHUP_FULL_S:
                            raise TimeoutError(f"fresh node held {seen:,} after {elapsed:.0f} s")
                        await asyncio.sleep(0.5)

            asyncio.run(poll())
            seconds = time.perf_counter() - t0
        rate = seen / seconds
        if goal < total:
            result.add("catchup_per_s", f"fresh node catch-up rate (first {seen:,} entries)",
                       rate, "entries/s")
            result.add("catchup_s", f"fresh node catch-up of all {total:,}: EXTRAPOLATED from "
                       f"the first {seen:,}", total / rate, "s")
        else:
            result.add("catchup_per_s", "fresh node catch-up rate", rate, "entries/s")
            result.add("catchup_s", f"fresh node catch-up of all {total:,}", seconds, "s")
    finally:
        fed.stop()
        big.cli("peers", "remove", "F", check=False)


def run(ctx: Context) -> Result:
    total = int(os.environ.get("BENCH_BIGLEDGER_OBS", 100_000 if ctx.quick else 10_000_000))
    cached = (_cache_root() / f"bigledger-{total}-s{SCHEMA_VERSION}" / "bigledger.json").exists()
    if not cached and (total % ORIGINS or total < ORIGINS * SHARING):
        raise ValueError(f"BENCH_BIGLEDGER_OBS must be a multiple of {ORIGINS}")
    lookups = 1_000 if ctx.quick else 10_000
    result = Result("bigledger", params={"observations": total, "origins": ORIGINS,
                                         "clients": CLIENTS, "lookups": lookups})
    fed, meta = _prepare(ctx, total, result)
    distinct = int(meta["distinct"])
    result.params["distinct_values"] = distinct
    if "partial_of" in meta:
        result.notes.append(f"a build of {meta['partial_of']:,} stopped at {total:,}: every "
                            f"value is observed by 1-{SHARING} origins")
    node = fed["L"]
    result.params["build_s"] = round(meta["build_s"], 1)
    result.add("build_per_s", "ledger build (2 signing processes, batched ingest)",
               meta["build_per_s"], "entries/s", note=f"built {meta['built']}")

    ledger = _checkpoint(node)
    on_disk = sum(p.stat().st_size for p in _ledger_files(node))
    wire = meta["wire_bytes"] / meta["observations"]
    result.params["ledger_mb"] = round(on_disk / 2**20, 1)
    result.params["biggest"] = _biggest(ledger)
    result.add("wire_bytes", "entry wire bytes, mean", wire, "bytes")
    result.add("disk_per_obs", "bytes on disk per observation (ledger, WAL checkpointed)",
               on_disk / total, "bytes")
    result.add("disk_ratio", "bytes on disk per observation / entry wire bytes",
               on_disk / total / wire, "ratio", op="<=", target=2)

    lookup = f"/api/v1/indicators/ipv4-addr/{_value(12345 % distinct)}"
    with fed:
        health_s, start_s = _start_timed(fed, lookup)
        result.add("start_health_s", "node start-up: spawn until /health answers", health_s, "s")
        result.add("start_s", "node start-up: spawn until a lookup answers", start_s, "s",
                   op="<=", target=5)
        assert node.process is not None
        wait_idle([node.process.pid])
        _rss(node.process.pid, result, "after_start")
        asyncio.run(_lookups(node, distinct, lookups, result))
        _rss(node.process.pid, result, "after_lookups")
    ctx.log("bigledger: a fresh node catches up")
    _catch_up(ctx, fed, total, result)
    return result


def main() -> int:
    """``python -m bench.bigledger`` builds the cached ledger only (no measurement);
    ``python -m bench.bigledger finalize DIR STARTED`` keeps a stopped build (DIR the
    ``.partial-<pid>`` directory, STARTED its start as a Unix time)."""
    from bench.common import stderr_log

    if sys.argv[1:2] == ["finalize"]:
        print(finalize(Path(sys.argv[2]), float(sys.argv[3])))
        return 0
    total = int(os.environ.get("BENCH_BIGLEDGER_OBS", 10_000_000))
    ctx = Context(quick=False, workdir=Path("/tmp"), log=stderr_log)
    _prepare(ctx, total, Result("bigledger"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
