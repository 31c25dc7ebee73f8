"""scale: the gossip engine at federation size (issue 20), simulated.

``NODES`` gossip engines (10,000; ``BENCH_SCALE_NODES`` sets another size; ``--quick``
200) in the sans-I/O simulator (bench/sim.py: real engines, real ``verify_entry`` once
per distinct entry, a virtual clock) on a random overlay of degree 3-5 with 25 ms +-10%
links, the engine's default parameters. After a warm-up (the broadcast tree settles,
``WARMUP`` entries not measured), entries of about 1 KiB are published at random
nodes, 20 per second. Two runs, each in its own process (fresh heap, so its memory is
its own):

- **steady**: nobody leaves.
- **churn**: 5% of the nodes (never the publishers) leave at a random instant of the
  measured window and come back 1-3 s later with their ledger and a fresh engine (they
  redial after 1 s and catch up); and the broadcast tree's root (the smallest key id,
  checked to be every node's root after the warm-up) is killed halfway through the
  window and stays down.

Figures of each run:

- publish-to-all p50/p99: from the publication until the last node *that stayed up the
  whole run* stored the entry (the churn run also gives the p99 over every node up at
  the end, the returning ones' catch-up included, and p50/p99 over the nodes up
  throughout that the schedule never cut off from the rest of the overlay: every
  neighbour away at once, which no protocol can bridge);
- copies: entry copies received per node per entry (engine counters, duplicates and
  catch-up included);
- control / payload: gossip bytes received that are not entry bytes, over entry bytes,
  in the measured window and its settling time (beacons, announcements, probes, pings);
- lost: measured entries that some node up at the end does not hold, 10 s (virtual)
  after the last publication;
- memory per simulated node: the process's resident memory after the steady run minus
  before the simulation was built, over the nodes (engine state, overlay, per-node
  ledger index; the entries themselves are shared by every simulated node, as bytes
  objects, and counted once).

Also kept per run (the JSON's params): CPU seconds and wall seconds, messages delivered,
signatures really checked (``verify_entry`` runs once per distinct entry: bench/sim.py's
per-run cache keyed on the entry's bytes) and the answers from that cache.

Baseline in the same run: the same simulation at 1,000 nodes (the size the first round
of targets used), so the 10,000-node figures also read as ratios.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

from bench.common import Context, Result

RATE = 20.0
LINK_DELAY = 0.025
JITTER = 0.1
CHURN = 0.05
SETTLE = 10.0
"""Virtual seconds after the last publication before entries are counted lost (a node
that left comes back 1-3 s later and catches up within a few seconds; idle virtual
time costs the simulation as much as busy time: every node's beacons and pings)."""


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    from bench.common import percentile

    return percentile(values, q)


def _cut_off(neighbours: dict[int, set[int]], away: dict[int, tuple[float, float]]) -> set[int]:
    """Nodes that the churn schedule alone cuts off from the rest of the overlay at some
    instant: outside the largest connected component of the nodes then up (a node is
    away from its leaving until its return plus the redial delay). No protocol reaches
    them meanwhile: at 10,000 nodes a few stable nodes of degree 3 see every neighbour
    leave at once (docs/benchmarks.md, "scale"). Checked at each leaving, the only
    instants the overlay loses links."""
    out: set[int] = set()
    for when in sorted({span[0] for span in away.values()}):
        gone = {i for i, (a, b) in away.items() if a <= when < b}
        comps: list[list[int]] = []
        seen: set[int] = set()
        for start in neighbours:
            if start in gone or start in seen:
                continue
            comp = [start]
            seen.add(start)
            for x in comp:
                for y in neighbours[x]:
                    if y not in gone and y not in seen:
                        seen.add(y)
                        comp.append(y)
            comps.append(comp)
        if comps:
            biggest = max(comps, key=len)
            out.update(i for comp in comps if comp is not biggest for i in comp)
    return out


def simulate(n: int, entries: int, warmup: int, *, churn: bool,
             seed: bytes = b"scale") -> dict[str, Any]:
    """One run (see the module docstring); returns its figures, times in seconds."""
    from bench.sim import LinkModel, Simulation, plan_entries, schedule, warm_up
    from protocol.prng import Prng

    started = time.perf_counter()
    cpu0 = time.process_time()
    rss0 = _rss_mb()
    sim = Simulation(n, seed=seed, link=LinkModel(delay=LINK_DELAY, jitter=JITTER))
    prng = Prng(seed + b"/plan")
    root = min(range(n), key=lambda i: sim.nodes[i].key.key_id)
    churned: set[int] = set()
    if churn:
        others = [i for i in range(n) if i != root]
        churned = set(prng.sample(others, max(1, round(CHURN * n))))
    publishers = [i for i in range(n) if i != root and i not in churned]
    plan = plan_entries(sim, publishers, warmup + entries, prng, body_bytes=1024 - 180,
                        tag=b"scale")
    warm_up(sim, plan[:warmup], RATE, prng)
    roots = {node.engine.tree.root for node in sim.nodes if node.engine is not None}
    one_root = roots == {sim.nodes[root].key.key_id}
    copies0, payload0, total0 = sim.traffic()
    t0 = sim.now
    measured = plan[warmup:]
    window = len(measured) / RATE
    t = schedule(sim, measured, t0, RATE, prng)
    away: dict[int, tuple[float, float]] = {}
    if churn:
        for i in sorted(churned):
            leave = t0 + prng.uniform(0.0, window)
            back = leave + prng.uniform(1.0, 3.0)
            sim.at(leave, lambda i=i: sim.crash(i))
            sim.at(back, lambda i=i: sim.restart(i))
            away[i] = (leave, back + sim.reconnect_delay)
        sim.at(t0 + window / 2, lambda: sim.crash(root))
        away[root] = (t0 + window / 2, float("inf"))
    cut_off = _cut_off(sim.neighbours, away)
    last = t
    sim.run_until(last + 5.0)
    copies1, payload1, total1 = sim.traffic()
    sim.run_until(last + SETTLE)
    rss1 = _rss_mb()
    stable = [node for node in sim.nodes if node.index != root and node.index not in churned]
    up = [node for node in sim.nodes if node.up]
    to_stable: list[float] = []
    to_up: list[float] = []
    to_linked: list[float] = []
    linked = [node for node in stable if node.index not in cut_off]
    lost = 0
    for _, entry in measured:
        born = sim.published[entry.hash]
        if any(entry.hash not in node.stored_at for node in up):
            lost += 1
            continue
        to_stable.append(max(node.stored_at[entry.hash] for node in stable) - born)
        to_up.append(max(node.stored_at[entry.hash] for node in up) - born)
        to_linked.append(max(node.stored_at[entry.hash] for node in linked) - born)
    payload = payload1 - payload0
    return {
        "nodes": n, "entries": len(measured), "links": len(sim.edges), "churned": len(churned),
        "root_killed": churn, "one_root_after_warmup": one_root,
        "p50": _percentile(to_stable, 0.5), "p99": _percentile(to_stable, 0.99),
        "p99_all_up": _percentile(to_up, 0.99), "lost": lost,
        "cut_off": sorted(node.index for node in stable if node.index in cut_off),
        "p50_linked": _percentile(to_linked, 0.5), "p99_linked": _percentile(to_linked, 0.99),
        "copies": (copies1 - copies0) / (n * len(measured)),
        "control_ratio": ((total1 - total0) - payload) / payload if payload else float("nan"),
        "rss_mb": rss1, "mb_per_node": (rss1 - rss0) / n,
        "virtual_s": round(sim.now, 1), "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(time.process_time() - cpu0, 1), "deliveries": sim.delivered,
        "signatures_checked": sim.verify.real, "verify_cache_hits": sim.verify.hits,
    }


def _job(args: tuple[int, int, int, bool]) -> dict[str, Any]:
    n, entries, warmup, churn = args
    return simulate(n, entries, warmup, churn=churn)


def run(ctx: Context) -> Result:
    n, entries, warmup, base_n = (200, 10, 5, 100) if ctx.quick else (
        int(os.environ.get("BENCH_SCALE_NODES", "10000")), 100, 20, 1_000)
    result = Result("scale", params={"link_delay_ms": LINK_DELAY * 1000, "jitter": JITTER,
                                     "rate_per_s": RATE, "churn": CHURN, "settle_s": SETTLE})
    ctx.log(f"scale: {n} simulated nodes, steady and with churn (2 processes), "
            f"then {base_n} as the baseline")
    jobs = [(n, entries, warmup, False), (n, entries, warmup, True),
            (base_n, entries, warmup, False)]
    # One fresh process per run: its heap, hence its memory figure, is its own. Two at
    # once: the machine's two cores (a virtual clock: the figures do not depend on speed).
    with multiprocessing.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        steady, churn, base = pool.map(_job, jobs, chunksize=1)
    for key, run_ in (("steady", steady), ("churn", churn), ("base", base)):
        result.params[key] = run_
    result.add("p50_ms", f"{n} nodes: publish-to-all p50", steady["p50"] * 1000, "ms")
    result.add("p99_ms", f"{n} nodes: publish-to-all p99", steady["p99"] * 1000, "ms",
               op="<=", target=1000)
    result.add("copies", f"{n} nodes: copies per node per entry", steady["copies"], "copies",
               op="<=", target=1.1)
    result.add("control_ratio", f"{n} nodes: control / payload bytes", steady["control_ratio"],
               "ratio", op="<=", target=0.10)
    result.add("mb_per_node", f"{n} nodes: memory per simulated node", steady["mb_per_node"],
               "MiB")
    result.add("churn_p50_ms", "5% churn, root killed: publish-to-all p50",
               churn["p50"] * 1000, "ms")
    result.add("churn_p99_ms", "5% churn, root killed: publish-to-all p99",
               churn["p99"] * 1000, "ms", op="<=", target=1500)
    result.add("churn_linked_p99_ms", "5% churn: p99 to the nodes up throughout and never "
               "cut off by the schedule", churn["p99_linked"] * 1000, "ms")
    result.add("churn_cut_off", "5% churn: nodes up throughout that the schedule cut off",
               len(churn["cut_off"]), "nodes")
    result.add("churn_all_up_p99_ms", "5% churn: p99 to every node up at the end",
               churn["p99_all_up"] * 1000, "ms")
    result.add("churn_copies", "5% churn: copies per node per entry", churn["copies"], "copies")
    result.add("churn_control_ratio", "5% churn: control / payload bytes",
               churn["control_ratio"], "ratio")
    result.add("churn_lost", "5% churn, root killed: entries lost", churn["lost"], "entries",
               op="<=", target=0)
    result.add("base_p99_ms", f"baseline {base_n} nodes: publish-to-all p99",
               base["p99"] * 1000, "ms")
    result.add("p99_vs_base", f"p99 {n} / {base_n} nodes", steady["p99"] / base["p99"], "x")
    result.add("base_mb_per_node", f"baseline {base_n} nodes: memory per node",
               base["mb_per_node"], "MiB")
    for key, run_ in (("steady", steady), ("churn", churn), ("base", base)):
        result.add(f"{key}_cpu_s", f"{key} run ({run_['nodes']} nodes): CPU", run_["cpu_s"], "s")
    for key, run_ in (("steady", steady), ("churn", churn)):
        if not run_["one_root_after_warmup"]:
            result.notes.append(f"{key}: the tree had more than one root after the warm-up")
    return result
