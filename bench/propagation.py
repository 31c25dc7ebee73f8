"""propagation: how fast, and at what cost, one entry reaches every node.

(a) Real nodes: ``REAL_NODES`` nodes on 127.0.0.1 split across ``WORKERS`` worker
processes (each hosts its share in one asyncio loop: real ledgers on SQLite files,
real replicators, WebSocket sessions across processes), on a random connected overlay
of degree 3-5, with the gossip settings ``entraide run`` uses by default. After a
warm-up (the broadcast tree settles), entries of about 1 KiB are appended at random
nodes (signed and durably stored as the node's submit path does, then ``publish``) at 20/s.
Each node timestamps every entry as its ledger commits it (a ledger subscription,
``time.monotonic``, one clock for all processes on Linux).
- publish-to-all latency: from the start of the append at the origin until the last
  node has committed the entry; p50/p99/max over the entries;
- payload copies received per node per entry: entry copies received (engine
  counters, duplicates included) / (entries x receiving nodes);
- control / payload: gossip message bytes received minus entry bytes, over entry
  bytes (engine counters); the wire figure uses WebSocket bytes (secretstream and
  framing included, everything in the window: pings, anti-entropy, announcements).

(b) Simulated: 1,000 gossip engines in the sans-I/O simulator (bench/sim.py)
with a virtual clock and 25 ms +-10% link delay, same overlay rule and figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.common import Context, Result, percentile
from bench.fed import identity
from protocol.entries import TLP
from protocol.payloads import LocalizedText, Observation

WORKERS = 2
RATE = 20.0  # entries published per second


# --- the overlay ----------------------------------------------------------------------


def overlay(n: int, seed: int, degree: tuple[int, int] = (3, 5)) -> list[tuple[int, int]]:
    """A connected random graph: a shuffled ring, then random chords up to a per-node
    degree drawn from ``degree`` (the simulator's rule)."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    edges = {tuple(sorted((order[i], order[(i + 1) % n]))) for i in range(n)} if n > 2 else {
        (0, 1)}
    deg = dict.fromkeys(range(n), 0)
    for a, b in edges:
        deg[a] += 1
        deg[b] += 1
    target = {i: rng.randint(*degree) for i in range(n)}
    for _ in range(20 * n):
        want = [i for i in range(n) if deg[i] < min(target[i], n - 1)]
        if len(want) < 2:
            break
        a, b = rng.sample(want, 2)
        edge = (min(a, b), max(a, b))
        if edge in edges:
            continue
        edges.add(edge)
        deg[a] += 1
        deg[b] += 1
    return sorted(edges)  # type: ignore[arg-type]


def _payload(k: int, description_chars: int) -> Observation:
    return Observation(
        type="ipv4-addr", value=f"198.51.{k >> 8 & 255}.{k & 255}", confidence=60,
        severity="low", tags=("bench", "propagation"),
        description=LocalizedText(en=("propagation benchmark " * 80)[:description_chars]))


# --- the worker process ---------------------------------------------------------------


def _worker_main(conn: Connection, indices: list[int], root: str, seed: bytes,
                 description_chars: int) -> None:
    asyncio.run(_worker(conn, indices, Path(root), seed, description_chars))


async def _worker(conn: Connection, indices: list[int], root: Path, seed: bytes,
                  description_chars: int) -> None:
    from agent.config.settings import GossipConfig
    from agent.node.author import Author
    from agent.peering.replicator import TransportParams, TrustedPeer, gossip_params
    from agent.storage.ledger import OwnDraft
    from protocol.keys import PublicKey
    from tests.agent._ledger_helpers import append_own
    from tests.agent.nodes import Node

    loop = asyncio.get_running_loop()
    params = gossip_params(GossipConfig())  # what `entraide run` uses by default
    nodes = {i: Node(f"P{i:02d}", identity(f"{seed!r}/{i}"), root / f"p{i:02d}",
                     params=params, transport=TransportParams()) for i in indices}
    authors = {i: Author(node.identity) for i, node in nodes.items()}
    arrivals: dict[int, dict[str, float]] = {i: {} for i in indices}
    published: list[tuple[str, int, int, float]] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def follow(i: int) -> None:
        sub = nodes[i].db.subscribe(maxsize=100_000)
        async for event in sub:
            arrivals[i][event.observation["id"]] = time.monotonic()

    async def publish(i: int, k: int) -> None:
        node = nodes[i]
        t0 = time.monotonic()
        entries = await append_own(node.db, authors[i],
                                   [OwnDraft(_payload(k, description_chars), TLP.CLEAR)])
        node.repl.publish(entries)
        published.append((entries[0].id, i, k, t0))

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        while True:
            command, arg = await loop.run_in_executor(None, conn.recv)
            if command == "listen":
                for node in nodes.values():
                    node.data_dir.mkdir(parents=True, exist_ok=True)
                    await node.listen()
                conn.send({i: (n.port, n.key.raw) for i, n in nodes.items()})
            elif command == "start":
                for i, trust in arg.items():
                    nodes[i].set_trust([TrustedPeer(name, PublicKey(raw), url)
                                        for name, raw, url in trust])
                for i, node in nodes.items():
                    await node.start()
                    spawn(follow(i))
                conn.send(True)
            elif command == "connected":
                conn.send({i: len(n.repl.connected()) for i, n in nodes.items()})
            elif command == "publish":
                spawn(publish(*arg))
            elif command == "counts":
                conn.send({i: len(a) for i, a in arrivals.items()})
            elif command == "counters":
                out = {}
                for i, node in nodes.items():
                    engine = node.repl.engine
                    assert engine is not None
                    tot = engine.totals()
                    wire = sum(c.wire_bytes_in for c in node.repl.counters.values())
                    out[i] = {"entries_in": tot.entries_in, "payload_in": tot.payload_in,
                              "bytes_in": sum(tot.bytes_in.values()),
                              "duplicates": tot.duplicates, "wire_in": wire,
                              "frames_in": dict(tot.frames_in)}
                conn.send(out)
            elif command == "collect":
                if tasks:
                    await asyncio.wait(list(tasks), timeout=0.5)
                conn.send((arrivals, published))
            elif command == "stop":
                break
    finally:
        for task in list(tasks):
            task.cancel()
        for node in nodes.values():
            with contextlib.suppress(Exception):
                await node.stop()
        conn.send("stopped")


class _Workers:
    """The worker processes and a request/reply channel to each."""

    def __init__(self, n_nodes: int, root: Path, seed: bytes, description_chars: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.owner = {i: i % WORKERS for i in range(n_nodes)}
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for w in range(WORKERS):
            mine = [i for i in range(n_nodes) if self.owner[i] == w]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, mine, str(root), seed,
                                                          description_chars), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def ask(self, command: str, arg: Any = None, *, timeout: float = 120.0) -> list[Any]:
        for conn in self.conns:
            conn.send((command, arg))
        replies = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"worker did not answer {command!r}")
            replies.append(conn.recv())
        return replies

    def merged(self, command: str) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for reply in self.ask(command):
            out.update(reply)
        return out

    def tell(self, node: int, command: str, arg: Any) -> None:
        self.conns[self.owner[node]].send((command, arg))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("stop", timeout=30)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _description_chars(target_entry_bytes: int) -> int:
    """Description length that makes a CLEAR entry of about ``target_entry_bytes``."""
    from protocol.entries import sign_entry
    from protocol.payloads import encode_payload

    ident = identity("calibrate")
    base = sign_entry(ident, seq=1, prev=None, now_ms=1, tlp=TLP.CLEAR, audience=None,
                      body=encode_payload(_payload(1, 1)))
    return max(1, target_entry_bytes - len(base.raw) + 1)


def run_real(n: int, entries: int, warmup: int, root: Path, log: Any, result: Result) -> None:
    seed = b"propagation"
    chars = _description_chars(1024)
    edges = overlay(n, seed=7)
    degree = {i: sum(i in e for e in edges) for i in range(n)}
    workers = _Workers(n, root, seed, chars)
    try:
        info = workers.merged("listen")
        trust: dict[int, list[tuple[str, bytes, str | None]]] = {}
        for i in range(n):
            dials = {b for a, b in edges if a == i}
            trust[i] = [(f"P{j:02d}", info[j][1],
                         f"http://127.0.0.1:{info[j][0]}" if j in dials else None)
                        for j in range(n) if j != i]
        for w in range(WORKERS):
            mine = {i: trust[i] for i in range(n) if workers.owner[i] == w}
            workers.conns[w].send(("start", mine))
        for conn in workers.conns:
            conn.recv()
        _wait(lambda: all(c >= degree[i] for i, c in workers.merged("connected").items()),
              60, "every overlay link connected")
        log(f"propagation: {n} nodes in {WORKERS} processes connected "
            f"({len(edges)} links); warm-up")
        rng = random.Random(11)
        plan = [rng.randrange(n) for _ in range(warmup + entries)]

        def publish(ks: range) -> None:
            at = time.monotonic()
            for k in ks:
                at += rng.uniform(0.5, 1.5) / RATE
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                workers.tell(plan[k], "publish", (plan[k], k))

        def all_in(count: int) -> bool:
            return all(c >= count for c in workers.merged("counts").values())

        publish(range(warmup))
        _wait(lambda: all_in(warmup), 30, "warm-up entries everywhere")
        time.sleep(1.0)
        before = workers.merged("counters")
        publish(range(warmup, warmup + entries))
        _wait(lambda: all_in(warmup + entries), 60, "every entry everywhere")
        after = workers.merged("counters")
        arrivals: dict[int, dict[str, float]] = {}
        published: list[tuple[str, int, int, float]] = []
        for node_arrivals, node_published in workers.ask("collect"):
            arrivals.update(node_arrivals)
            published.extend(node_published)
    finally:
        workers.close()
    measured = [p for p in published if p[2] >= warmup]
    to_all, each = [], []
    for entry_id, origin, _k, t0 in measured:
        times = [arrivals[i][entry_id] - t0 for i in range(n) if i != origin]
        to_all.append(max(times))
        each.extend(times)

    def delta(field: str) -> float:
        return float(sum(after[i][field] - before[i][field] for i in range(n)))

    payload = delta("payload_in")
    result.add("real_p50_ms", f"{n} real nodes: publish-to-all p50",
               percentile(to_all, 0.5) * 1000, "ms")
    result.add("real_p99_ms", f"{n} real nodes: publish-to-all p99",
               percentile(to_all, 0.99) * 1000, "ms", op="<=", target=250)
    result.add("real_max_ms", f"{n} real nodes: publish-to-all max", max(to_all) * 1000, "ms")
    result.add("real_delivery_p50_ms", f"{n} real nodes: per-node delivery p50",
               percentile(each, 0.5) * 1000, "ms")
    result.add("real_copies", f"{n} real nodes: payload copies per node per entry",
               delta("entries_in") / (len(measured) * (n - 1)), "copies", op="<=", target=1.2)
    result.add("real_control_ratio", f"{n} real nodes: control / payload bytes",
               (delta("bytes_in") - payload) / payload, "ratio", op="<=", target=0.15)
    result.add("real_wire_control_ratio", f"{n} real nodes: wire overhead / payload bytes",
               (delta("wire_in") - payload) / payload, "ratio",
               note="WebSocket + secretstream bytes, everything in the window")
    result.params["real"] = {"nodes": n, "processes": WORKERS, "links": len(edges),
                             "entries": len(measured), "warmup": warmup, "rate_per_s": RATE,
                             "entry_bytes": round(payload / max(1, delta("entries_in")), 1)}


def run_sim(n: int, entries: int, warmup: int, result: Result) -> None:
    from bench.sim import run_propagation

    sim = run_propagation(nodes=n, entries=entries, warmup=warmup, delay=0.025, jitter=0.1,
                          entry_bytes=1024, rate=RATE)
    result.add("sim_p50_ms", f"{n} simulated: publish-to-all p50",
               sim.publish_to_all_p50 * 1000, "ms")
    result.add("sim_p99_ms", f"{n} simulated: publish-to-all p99",
               sim.publish_to_all_p99 * 1000, "ms", op="<=", target=600)
    result.add("sim_max_ms", f"{n} simulated: publish-to-all max",
               sim.publish_to_all_max * 1000, "ms")
    result.add("sim_copies", f"{n} simulated: payload copies per node per entry",
               sim.copies_per_node_per_entry, "copies", op="<=", target=1.2)
    result.add("sim_control_ratio", f"{n} simulated: control / payload bytes",
               sim.control_payload_ratio, "ratio", op="<=", target=0.15)
    result.params["sim"] = {"nodes": n, "entries": sim.entries, "warmup": warmup,
                            "link_delay_ms": 25, "jitter": 0.1, "reached_all": sim.reached_all,
                            "wall_s": round(sim.wall_seconds, 1)}
    if not sim.reached_all:
        result.notes.append("simulation: some entries did not reach every node")


def run(ctx: Context) -> Result:
    result = Result("propagation")
    real_n, real_entries, real_warmup = (6, 20, 5) if ctx.quick else (20, 200, 20)
    sim_n, sim_entries, sim_warmup = (100, 20, 5) if ctx.quick else (1000, 200, 20)
    run_real(real_n, real_entries, real_warmup, ctx.tempdir("propagation"), ctx.log, result)
    ctx.log(f"propagation: {sim_n} simulated nodes")
    run_sim(sim_n, sim_entries, sim_warmup, result)
    return result
