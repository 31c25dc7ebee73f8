"""chainrun: chain-authenticated runs against per-entry verification (issue 20 item 1).

The same entries (``ORIGINS`` origins, about 1 KiB each, CLEAR and AMBER mixed) are
verified three ways, one core, in one process, one after the other:

- per entry, as catch-up does today: ``verify_entry`` and ``check_successor`` on each;
- chain-authenticated (protocol/chainrun.py): ``verify_run`` on each origin's entries in
  runs of 256 (the engine's ``want_batch``: what one WANT reply carries), one signature
  per run;
- the same with one run per origin (a fresh node's catch-up of a whole chain).

Baselines measured in the same run: raw PyNaCl verify on one core and on two threads
(the "2-core raw verify rate" of the issue's catch-up target). Figures: entries/s of
each, and their ratios to per-entry verification and to the 2-core raw verify rate.
Then end to end: a fresh node B (``entraide run``, empty ledger) catches up from node A
holding ``ENTRIES`` entries of 200 origins (1,000,000; ``BENCH_CHAINRUN_ENTRIES``
sets another size, ``--quick`` 4,000 of 20): timed from B's dial until B's ledger holds
every entry (``bench.ingest.timed_sync``), entries/s and its ratio to the 2-core raw
verify rate above: the issue's catch-up target (>= 40,000/s and >= 1.2x).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from bench.baseline import _parallel_verify_rate
from bench.catchup import _fill, _forget_url
from bench.common import Context, Result, verify_rate
from bench.fed import Client, add_origins, identity, new_federation
from bench.ingest import make_entries, timed_sync
from protocol.chainrun import verify_run
from protocol.entries import TLP, VerifiedEntry, check_successor, sign_entry, verify_entry

RUN = 256
"""Run length: the gossip engine's ``want_batch`` (docs/protocol.md §8)."""


def _chains(origins: int, per: int) -> list[list[bytes]]:
    """``per`` entries of each of ``origins`` origins in wire form; bodies of 880 bytes
    (entries of about 1 KiB), every third AMBER with a one-recipient audience."""
    out = []
    body = bytes(range(256)) * 3 + bytes(112)
    for o in range(origins):
        ident = identity(f"chainrun-{o}")
        prev: bytes | None = None
        raws = []
        for seq in range(1, per + 1):
            tlp = TLP.AMBER if seq % 3 == 0 else TLP.CLEAR
            entry = sign_entry(ident, seq=seq, prev=prev, now_ms=1_780_000_000_000 + seq,
                               tlp=tlp, audience=(b"\x02" * 8,) if tlp.encrypted else None,
                               body=seq.to_bytes(8, "big") + body)
            raws.append(entry.raw)
            prev = entry.hash
        out.append(raws)
    return out


def _per_entry(chains: list[list[bytes]]) -> int:
    done = 0
    for raws in chains:
        link: tuple[int, bytes] | None = None
        for raw in raws:
            entry = verify_entry(raw)
            check_successor(link, entry)
            link = (entry.seq, entry.hash)
            done += 1
    return done


def _runs(chains: list[list[bytes]], size: int) -> int:
    done = 0
    for raws in chains:
        head: tuple[int, bytes] | None = None
        for at in range(0, len(raws), size):
            run: tuple[VerifiedEntry, ...] = verify_run(raws[at:at + size], head)
            head = (run[-1].seq, run[-1].hash)
            done += len(run)
    return done


def _rate(step: Callable[[], int], repeat: int) -> float:
    """Best entries/s of ``repeat`` passes (the least disturbed by other processes)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        done = step()
        best = max(best, done / (time.perf_counter() - start))
    return best


def _catch_up(ctx: Context, origins: int, total: int) -> dict[str, Any]:
    """A fresh node catches up ``total`` entries of ``origins`` origins from another."""
    ctx.log(f"chainrun: signing {total:,} entries of {origins} origins for node A")
    names, entries = make_entries(origins, total, "cr")
    raw_bytes = sum(len(e.raw) for e in entries)
    fed = new_federation(ctx.tempdir("chainrun"), ["A", "B"], [("B", "A")])
    a, b = fed["A"], fed["B"]
    for node in fed.nodes:
        add_origins(node, names)
    ctx.log("chainrun: filling A's ledger")
    asyncio.run(_fill(a, entries))
    count = len(entries)
    del entries
    _forget_url(b, a)  # B dials A only when told (the timed part starts there)
    with fed:
        fed.start(["A", "B"])

        async def go() -> tuple[float, float, float, float]:
            async with Client(b) as client:
                return await timed_sync(client, a, b, count,
                                        timeout=120 if ctx.quick else 1800)
        ctx.log(f"chainrun: B catches up {count:,} entries")
        seconds, b_cpu, a_cpu, b_own = asyncio.run(go())
    return {"entries": count, "seconds": seconds, "b_cpu": b_cpu, "a_cpu": a_cpu,
            "b_own": b_own, "entry_bytes": raw_bytes / count}


def run(ctx: Context) -> Result:
    origins, per, repeat = (20, 100, 1) if ctx.quick else (200, 500, 2)
    seconds = 0.3 if ctx.quick else 2.0
    result = Result("chainrun", params={"origins": origins, "entries_per_origin": per,
                                        "entries": origins * per, "run": RUN,
                                        "entry_bytes": 0, "passes": repeat})
    ctx.log(f"chainrun: signing {origins * per:,} entries of {origins} origins")
    chains = _chains(origins, per)
    result.params["entry_bytes"] = round(sum(len(r) for c in chains for r in c)
                                         / (origins * per), 1)
    raw1 = verify_rate(seconds)
    raw2 = _parallel_verify_rate(2, seconds)
    per_entry = _rate(lambda: _per_entry(chains), repeat)
    runs = _rate(lambda: _runs(chains, RUN), repeat)
    whole = _rate(lambda: _runs(chains, per), repeat)
    result.add("verify_per_s", "raw Ed25519 verify, 1 core", raw1, "ops/s")
    result.add("verify_2threads_per_s", "raw Ed25519 verify, 2 threads", raw2, "ops/s")
    result.add("per_entry_per_s", "per-entry verify + chain check, 1 core", per_entry,
               "entries/s")
    result.add("run_per_s", f"chain-authenticated runs of {RUN}, 1 core", runs, "entries/s")
    result.add("whole_per_s", f"one run per origin ({per}), 1 core", whole, "entries/s")
    result.add("run_vs_per_entry", "runs / per-entry", runs / per_entry, "x")
    result.add("run_vs_2core_verify", "runs (1 core) / raw verify (2 threads)", runs / raw2,
               "x")
    e2e_origins = 20 if ctx.quick else 200
    e2e_total = 4_000 if ctx.quick else int(os.environ.get("BENCH_CHAINRUN_ENTRIES",
                                                           "1000000"))
    e2e = _catch_up(ctx, e2e_origins, e2e_total)
    result.params["catch_up"] = {"origins": e2e_origins, **{k: round(v, 3)
                                                           for k, v in e2e.items()}}
    n = e2e["entries"]
    rate = n / e2e["seconds"]
    result.add("catchup_per_s", f"fresh node catching up {n:,} entries of {e2e_origins} "
               "origins", rate, "entries/s", op=">=", target=40_000)
    result.add("catchup_vs_2core_verify", "catch-up / raw verify (2 threads)", rate / raw2,
               "x", op=">=", target=1.2)
    result.add("catchup_b_cpu_us", "catching-up node CPU per entry (its workers included)",
               e2e["b_cpu"] / n * 1e6, "us")
    result.add("catchup_b_main_cpu_us", "catching-up node: its main process",
               e2e["b_own"] / n * 1e6, "us")
    result.add("catchup_a_cpu_us", "serving node CPU per entry", e2e["a_cpu"] / n * 1e6, "us")
    return result
