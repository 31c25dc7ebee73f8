"""mixed: one node under everything at once (issue 20): entries arriving from a peer at
a target rate, 32 lookup clients, 16 stream subscribers and batched submits.

The node is an ``entraide run`` process whose ledger holds ``PREFILL`` observations of
``ORIGINS`` author identities before it starts (the values the lookups ask for).
- *The peer* (bench/mixed_peer.py) is a helper process (spawn) running an in-process node
  (tests/agent/nodes.py: replicator, WebSocket session) that dials the node over the
  real peer protocol. Its entries are signed by it before the timed part; it then
  publishes them (``Replicator.publish``, the gossip a submit ends with) in chunks every
  ``TICK_S`` at ``RATE`` entries/s and ``OFFER_MARGIN`` more, and says when each chunk
  was published
  (``time.monotonic``: the same clock in every process). It does not store them in its
  own ledger first, as a real peer would on its own host: here that took 0.25 core of
  the two the node is measured on (docs/benchmarks.md, "A load generator's own
  ledger"). The node receives the same frames either way; a WANT it sent for one of
  them would go unanswered, and the delivery check would count that entry missing.
- *Lookups*: bench/httpload.py's lean client in a process of its own (as a separate
  tool would be), ``CLIENTS`` keep-alive connections,
  ``GET /api/v1/indicators/ipv4-addr/{value}`` of prefilled values; every answer
  checked (200, the value asked).
- *Stream subscribers*: ``SUBSCRIBERS`` unfiltered ``GET /api/v1/stream``; each event's
  delivery latency is from the publish of its chunk by the peer (ingest) or from the
  moment its batch's POST was sent (submit) until the subscriber holds the event. A
  subscriber the node disconnects (its queue full) resumes with Last-Event-ID; the
  disconnects are counted.
- *Batched submits*: one client POSTs ``SUBMIT_BATCH`` GREEN observations every
  ``SUBMIT_EVERY_S``.

``BENCH_MIXED_RATE`` and ``BENCH_MIXED_SUBSCRIBERS`` change the full run's rate and
number of subscribers (to see what one of them costs).

Each figure is also measured alone in the same run, as its baseline: the lookups with
nothing else, the peer's ingest with nothing else, and the stream with the submits
only. Then all run at once for ``DURATION`` s.
Ingest rate: entries the node stored from the window's start to its end (status
polls), less the acknowledged submits, over the window.
The node's own share of a delivery ("in the node" figures): its histograms
``entraide_ingest_seconds{stage}`` and ``entraide_stream_delay_seconds`` diffed
between two scrapes around the ingest-alone phase and around the mixed one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from agent.cli.localfed import tree_cpu_seconds, wait_idle
from agent.workers.supervisor import default_readers
from bench.common import Context, Result, cpu_seconds, percentile, settled_gc
from bench.fed import (
    Client,
    FedNode,
    add_origins,
    fill_ledger,
    histogram_quantile,
    identity,
    ipv4,
    metric,
    metrics,
    new_federation,
    open_ledger,
    sign_chain,
)
from bench.httpload import run_load
from bench.mixed_peer import TICK_S, Peer, peer_times

ORIGINS = 4
CLIENTS = 32
SUBSCRIBERS = 16
RATE = 5_000
OFFER_MARGIN = 1.01
"""The peer offers 1% over ``RATE``: the node's ingest can only follow what it is
offered, and measured between two polls it is within ~0.5% of it (where a batch's
commit falls against each poll), so an offer of exactly 5,000/s was judged a miss
at 4,976/s as often as a hit. The target is judged under slightly more load, not
less."""
SUBMIT_BATCH = 100
SUBMIT_EVERY_S = 0.2
SUBMIT_BASE = 8_000_000
"""Submit ``i`` observes ``ipv4(SUBMIT_BASE + i)``; the peer's entries are in
bench/mixed_peer.py."""
_MAX_EVENT = 64 * 1024
WORKER_START_S = 30.0  # a guard: past it, the run goes on with in-process lookups


# --- stream subscribers -------------------------------------------------------------


class _Subscriber:
    """One unfiltered stream; records the value and monotonic arrival of every
    observation."""

    def __init__(self, node: FedNode) -> None:
        self.url = node.api + "/api/v1/stream"
        self.headers = {"Authorization": f"Bearer {node.token}"}
        # Two flat lists, not a list of tuples: a million small tuples would make each
        # full collection of this process's garbage collector a pause in the readings.
        self.values: list[str] = []
        self.times: list[float] = []
        self.last_id: str | None = None
        self.disconnects = 0
        self.ready = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            headers = dict(self.headers)
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with session.get(self.url, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"stream: HTTP {resp.status}")
                    await self._read(resp)
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
            self.disconnects += 1

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        buf = b""
        async for data in resp.content.iter_any():
            now = time.monotonic()
            buf += data
            *events, buf = buf.split(b"\n\n")
            if len(buf) > _MAX_EVENT:
                raise RuntimeError("a stream event over 64 KiB")
            for event in events:
                if event.startswith(b"retry:"):
                    self.ready.set()
                if not event.startswith(b"event: observation\n"):
                    continue
                _, id_line, data_line = event.split(b"\n", 2)
                self.last_id = id_line[4:].strip().decode("ascii")
                at = data_line.find(b'"value":"')
                if at < 0:
                    raise RuntimeError(f"an event without a value: {event[:200]!r}")
                end = data_line.index(b'"', at + 9)
                self.values.append(data_line[at + 9:end].decode("ascii"))
                self.times.append(now)


def _delivery(subs: list[_Subscriber], sent: dict[str, float]) -> tuple[list[float], int]:
    """Latencies (s) of every event of a value in ``sent`` each subscriber received, and
    how many (subscriber, value) deliveries are missing."""
    out: list[float] = []
    for sub in subs:
        for value, t in zip(sub.values, sub.times, strict=True):
            at = sent.get(value)
            if at is not None:
                out.append(t - at)
    return out, len(sent) * len(subs) - len(out)


# --- the node's load ----------------------------------------------------------------


def _lookup_clients(port: int, token: str, prefill: int, seed: int, until: float | None,
                    count: int) -> tuple[list[float], float]:
    """In the lookup clients' process: ``CLIENTS`` keep-alive connections asking for
    random prefilled values until ``until`` (``time.monotonic``) or ``count`` requests;
    the latencies (s) and this process's CPU seconds for them."""
    rng = random.Random(seed)

    def paths() -> Iterator[str]:
        for n in itertools.count():
            if (until is not None and time.monotonic() >= until) or (
                    until is None and n >= count):
                return
            yield f"/api/v1/indicators/ipv4-addr/{ipv4(rng.randrange(prefill))}"

    def check(path: str, body: bytes) -> None:
        if path.rsplit("/", 1)[1].encode() not in body:
            raise ValueError("answered for another value")

    warm = [f"/api/v1/indicators/ipv4-addr/{ipv4(i)}" for i in range(4 * CLIENTS)]
    cpu = time.process_time()
    with settled_gc():
        done = asyncio.run(run_load("127.0.0.1", port, paths(), connections=CLIENTS,
                                    headers=[("Authorization", f"Bearer {token}")],
                                    check=check, warmup=warm))
    return done.latencies, time.process_time() - cpu


class _Load:
    def __init__(self, node: FedNode, client: Client, prefill: int,
                 pool: concurrent.futures.Executor) -> None:
        self.node = node
        self.client = client
        self.prefill = prefill
        self.pool = pool
        """Where the lookup clients run: a process of their own, as separate tools would
        be (in this one, their answers waited behind the parsing of ~85,000 stream
        events/s, and that wait was read as the node's latency)."""
        self.rng = random.Random(20)
        self.submit_counter = itertools.count()
        self.submit_sent: dict[str, float] = {}
        self.submitted = 0
        self.expected = prefill
        """Entries the node holds once it stored what the peer published (submits apart)."""
        self.lookup_cpu_s = 0.0
        """CPU seconds of the lookup clients' last run."""
        self.cpu: dict[str, float] = {}
        """Cores used during the last window: the node (with its workers), its main
        process, the clients (this process and the lookup clients'), the peer process."""

    async def entries(self) -> int:
        status = await self.client.request("GET", "/api/v1/status")
        return int(status["ledger"]["entries"])

    async def lookups(self, until: float | None, count: int) -> list[float]:
        """The lookup clients' latencies (s), run in their own process (:attr:`pool`)."""
        loop = asyncio.get_running_loop()
        lat, self.lookup_cpu_s = await loop.run_in_executor(
            self.pool, _lookup_clients, self.node.api_port, self.node.token, self.prefill,
            self.rng.randrange(1 << 32), until, count)
        return lat

    async def submits(self, until: float) -> None:
        """POST a batch every SUBMIT_EVERY_S until ``until``."""
        nxt = time.monotonic()
        while nxt < until:
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            values = [ipv4(SUBMIT_BASE + next(self.submit_counter))
                      for _ in range(SUBMIT_BATCH)]
            body = {"observations": [{"type": "ipv4-addr", "value": v, "tlp": "GREEN",
                                      "confidence": 80, "tags": ["bench", "mixed"]}
                                     for v in values]}
            t = time.monotonic()
            for v in values:
                self.submit_sent[v] = t
            reply = await self.client.request("POST", "/api/v1/observations", body, expect=201)
            if len(reply["ids"]) != SUBMIT_BATCH:
                raise RuntimeError("a batch was not stored whole")
            self.submitted += SUBMIT_BATCH
            nxt += SUBMIT_EVERY_S


async def _measure(node: FedNode, peer: Peer, prefill: int, duration: float,
                   lookups_alone: int, result: Result, log: Any) -> None:
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        async with Client(node) as client:
            await _phases(node, peer, client, _Load(node, client, prefill, pool), duration,
                          lookups_alone, result, log)


async def _phases(node: FedNode, peer: Peer, client: Client, load: _Load, duration: float,
                  lookups_alone: int, result: Result, log: Any) -> None:
    rate = result.params["offered_rate"]
    per_phase = int(rate * duration)
    await peer.recv(90)  # ready: connected to the node
    # The first lookup connection starts the read lane's readers; measure once they
    # take connections (as bench/query.py), else the lookup clients' keep-alive
    # connections all stay with the node's main process.
    await client.request("GET", f"/api/v1/indicators/ipv4-addr/{ipv4(0)}")
    # Every reader: connections opened while only the first is up all stay with it.
    deadline = time.monotonic() + WORKER_START_S
    while (metric(await metrics(client), "entraide_read_lane_readers") < default_readers()
           and time.monotonic() < deadline):
        await asyncio.sleep(0.05)
    result.params["read_lane_readers"] = int(
        metric(await metrics(client), "entraide_read_lane_readers"))

    async def work_mark() -> tuple[float, float, float]:
        """(monotonic, CPU s of the node's main process, stream events written)."""
        parsed = await metrics(client)
        pid = node.process.pid  # type: ignore[union-attr]
        return (time.monotonic(), tree_cpu_seconds(pid)[1],
                metric(parsed, "entraide_stream_events_total"))

    # 1. Lookups alone.
    lat = await load.lookups(None, lookups_alone)
    alone_lookup = percentile(lat, 0.99) * 1000
    result.add("alone_lookup_p99_ms", f"alone: lookup p99 ({CLIENTS} clients)",
               alone_lookup, "ms")
    log(f"mixed: lookups alone p99 {alone_lookup:.1f} ms")

    # 2. The peer's ingest alone.
    async def ingest_window(extra: Any = None) -> tuple[float, float, list[Any]]:
        """Run the peer for ``duration`` s (with ``extra`` coroutines); the node's
        ingest rate between two status polls in the window (at 1/5 and at its end,
        both in steady state), less the submits acknowledged meanwhile."""
        async def count_at(when: float) -> tuple[float, int, int]:
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            acked = load.submitted
            entries = await load.entries()
            return time.monotonic(), entries, acked

        pid = node.process.pid  # type: ignore[union-attr]
        load.lookup_cpu_s = 0.0
        cpu0, bench0, peer0 = (tree_cpu_seconds(pid), cpu_seconds(os.getpid()),
                               cpu_seconds(peer.proc.pid or 0))
        t0 = time.monotonic()
        peer.conn.send(("go", per_phase, rate))
        polls = asyncio.gather(count_at(t0 + duration / 5), count_at(t0 + duration))
        others = await asyncio.gather(*(extra or []))
        (t1, c1, a1), (t2, c2, a2) = await polls
        window = time.monotonic() - t0
        cpu1 = tree_cpu_seconds(pid)
        load.cpu = {"node": (cpu1[0] - cpu0[0]) / window,
                    "node_main": (cpu1[1] - cpu0[1]) / window,
                    "bench": (cpu_seconds(os.getpid()) - bench0
                              + load.lookup_cpu_s) / window,
                    "peer": (cpu_seconds(peer.proc.pid or 0) - peer0) / window}
        _, chunks = await peer.recv(duration * 10 + 60)
        ingest = (c2 - c1 - (a2 - a1)) / (t2 - t1)
        # The next phase starts with the node's backlog stored (not timed).
        load.expected += per_phase
        deadline = time.monotonic() + 30 + 4 * duration
        while (await load.entries() < load.expected + load.submitted
               and time.monotonic() < deadline):
            await asyncio.sleep(0.1)
        return ingest, per_phase / (chunks[-1][2] - t0), [chunks, *others]

    await asyncio.to_thread(wait_idle, [node.process.pid])  # type: ignore[union-attr]
    seen0 = await metrics(client)
    ingest, offered, _ = await ingest_window()
    _in_node(result, seen0, await metrics(client), "alone", stream=False)
    result.params["alone_ingest_cores"] = {k: round(v, 2) for k, v in load.cpu.items()}
    result.add("alone_ingest_per_s", "alone: ingest from the peer", ingest, "entries/s")
    result.add("alone_offered_per_s", "alone: the peer's publish rate", offered,
               "entries/s")
    result.add("alone_ingest_main_us", "alone: main-process CPU per ingested entry",
               load.cpu["node_main"] / max(ingest, 1) * 1e6, "us")
    log(f"mixed: ingest alone {ingest:,.0f}/s (offered {offered:,.0f}/s)")

    # 3. The stream with the submits only; 4. everything at once.
    async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
        async def with_subscribers(body: Any) -> tuple[list[_Subscriber], Any]:
            subs = [_Subscriber(node) for _ in range(result.params["subscribers"])]
            tasks = [asyncio.create_task(s.run(session)) for s in subs]
            try:
                await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subs)), 30)
                out = await body()
                sent = set(load.submit_sent) | set(out[1])
                deadline = time.monotonic() + max(20.0, 2 * duration)
                hits, scanned = [0] * len(subs), [0] * len(subs)
                while time.monotonic() < deadline:
                    for n, sub in enumerate(subs):
                        hits[n] += sum(1 for v in sub.values[scanned[n]:] if v in sent)
                        scanned[n] = len(sub.values)
                    if min(hits) >= len(sent):
                        break
                    await asyncio.sleep(0.25)
                return subs, out[0]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        async def stream_alone() -> tuple[None, list[str]]:
            await load.submits(time.monotonic() + duration)
            return None, []

        mark0 = await work_mark()
        subs, _ = await with_subscribers(stream_alone)
        mark1 = await work_mark()
        events = mark1[2] - mark0[2]
        result.add("alone_stream_events_per_s", "alone: stream events written",
                   events / (mark1[0] - mark0[0]), "events/s")
        result.add("alone_stream_main_us", "alone: main-process CPU per event written "
                   "(submits included)", (mark1[1] - mark0[1]) / max(events, 1) * 1e6, "us")
        lat, missing = _delivery(subs, load.submit_sent)
        result.add("alone_stream_p99_ms", "alone: stream delivery p99 (submits only)",
                   percentile(lat, 0.99) * 1000, "ms")
        log(f"mixed: stream alone p99 {percentile(lat, 0.99) * 1000:.1f} ms, "
            f"{missing} missing")
        load.submit_sent.clear()

        async def everything() -> tuple[Any, list[str]]:
            until = time.monotonic() + duration
            out = await ingest_window([load.lookups(until, 0), load.submits(until)])
            return out, list(peer_times(out[2][0]))

        mark0, seen0 = await work_mark(), await metrics(client)
        subs, (ingest, offered, (chunks, lat, _)) = await with_subscribers(everything)
        mark1, seen1 = await work_mark(), await metrics(client)
        result.add("stream_events_per_s", "mixed: stream events written (window and "
                   "after)", (mark1[2] - mark0[2]) / (mark1[0] - mark0[0]), "events/s")
    _in_node(result, seen0, seen1, "mixed")
    result.params["mixed_cores"] = {k: round(v, 2) for k, v in load.cpu.items()}
    result.add("node_cores", "mixed: cores the node used (workers included)",
               load.cpu["node"], "cores")
    result.add("node_main_cores", "mixed: the node's main process", load.cpu["node_main"],
               "cores")
    result.add("bench_cores", "mixed: cores the clients used (lookup process included)",
               load.cpu["bench"], "cores")
    parsed = await metrics(client)
    result.params["read_lane_connections"] = int(
        metric(parsed, "entraide_read_lane_connections_total"))
    # The peer does not store what it publishes (see the module's docstring): a WANT
    # the node sent it went unanswered.
    result.params["wants_to_peer"] = int(
        metric(parsed, "entraide_peer_messages_total", direction="out", kind="WANT"))
    result.params["stream_disconnect_reasons"] = {
        dict(k).get("reason", ""): v for k, v in
        parsed.get("entraide_stream_disconnects_total", {}).items()}
    peer_sent = peer_times(chunks)
    mixed_lookup = percentile(lat, 0.99) * 1000
    result.add("lookup_p99_ms", f"mixed: lookup p99 ({CLIENTS} clients)", mixed_lookup,
               "ms", op="<=", target=20)
    result.add("lookup_vs_alone", "mixed / alone lookup p99", mixed_lookup / alone_lookup,
               "ratio")
    result.add("lookups", "mixed: lookups answered", len(lat), "requests")
    both = {**peer_sent, **load.submit_sent}
    lat_all, missing = _delivery(subs, both)
    lat_sub, _ = _delivery(subs, load.submit_sent)
    stream = percentile(lat_all, 0.99) * 1000
    result.add("stream_p99_ms", "mixed: stream delivery p99 (ingested and submitted)",
               stream, "ms", op="<=", target=100)
    result.add("stream_p50_ms", "mixed: stream delivery p50", percentile(lat_all, 0.5)
               * 1000, "ms")
    result.add("stream_submit_p99_ms", "mixed: stream delivery p99 of submits",
               percentile(lat_sub, 0.99) * 1000, "ms")
    result.add("stream_vs_alone", "mixed / alone stream p99 (submits)",
               percentile(lat_sub, 0.99) * 1000
               / result.figure("alone_stream_p99_ms").value, "ratio")
    result.add("stream_missing", "mixed: deliveries not seen in time", missing, "events")
    result.add("stream_disconnects", "mixed: subscribers disconnected by the node",
               sum(s.disconnects for s in subs), "streams")
    result.add("ingest_per_s", "mixed: ingest from the peer", ingest, "entries/s",
               op=">=", target=5_000)
    result.add("ingest_vs_alone", "mixed / alone ingest", ingest
               / result.figure("alone_ingest_per_s").value, "ratio")
    result.add("offered_per_s", "mixed: the peer's publish rate", offered, "entries/s")
    result.add("submitted_per_s", "mixed: submitted (batched)",
               len(load.submit_sent) / duration, "obs/s")


def _in_node(result: Result, before: dict[str, Any], after: dict[str, Any], phase: str,
             *, stream: bool = True) -> None:
    """The node's own share of a delivery, from its histograms between two scrapes
    (agent/peering/ingest.py, agent/api/stream.py): a received batch's time from its
    hand-over to its store, by stage, and a live write's from the commit."""
    def q(name: str, quantile: float, **labels: str) -> float:
        return histogram_quantile(before, after, name, quantile, **labels) * 1000

    for stage in ("check", "wait", "store"):
        result.add(f"{phase}_node_{stage}_p99_ms", f"{phase}, in the node: batch {stage} p99",
                   q("entraide_ingest_seconds", 0.99, stage=stage), "ms")
    for name, quantile in (("p50", 0.5), ("p99", 0.99)):
        result.add(f"{phase}_node_ingest_{name}_ms",
                   f"{phase}, in the node: batch handed over to stored {name}",
                   q("entraide_ingest_seconds", quantile, stage="total"), "ms")
    if stream:
        result.add(f"{phase}_node_stream_p99_ms",
                   f"{phase}, in the node: commit to stream write p99",
                   q("entraide_stream_delay_seconds", 0.99), "ms")


def _offset_ipv4(offset: int) -> Callable[[int], str]:
    return lambda seq: ipv4(offset + seq)


def run(ctx: Context) -> Result:
    quick = ctx.quick
    prefill = 2_000 if quick else 100_000
    duration = 1.5 if quick else 15.0
    rate = 1_000 if quick else int(os.environ.get("BENCH_MIXED_RATE", RATE))
    subscribers = int(os.environ.get("BENCH_MIXED_SUBSCRIBERS", SUBSCRIBERS))
    lookups_alone = 1_000 if quick else 20_000
    result = Result("mixed", params={
        "prefill": prefill, "rate": rate, "offered_rate": round(rate * OFFER_MARGIN),
        "duration_s": duration, "clients": CLIENTS,
        "subscribers": subscribers, "submit_batch": SUBMIT_BATCH,
        "submit_every_s": SUBMIT_EVERY_S, "tick_s": TICK_S,
        "nodes": "MIX: entraide run process; the peer: an in-process node in a helper "
                 "process; lookup clients in a process of their own; stream and submit "
                 "clients in the bench process"})
    root = ctx.tempdir("mixed")
    fed = new_federation(root, ["MIX"])
    node = fed["MIX"]
    idents = [identity(f"mixed-origin-{o}") for o in range(ORIGINS)]
    add_origins(node, [(f"MO{o}", i.public_key) for o, i in enumerate(idents)]
                + [("PEER", identity("mixed-peer").public_key)])
    per = prefill // ORIGINS
    entries = [e for o, i in enumerate(idents)
               for e in sign_chain(i, per, value=_offset_ipv4(o * per - 1))]

    async def fill() -> None:
        async with open_ledger(node) as ledger:
            await fill_ledger(ledger, entries)
    asyncio.run(fill())
    ctx.log(f"mixed: {len(entries):,} observations in the node; starting it and the peer")
    with fed:
        fed.start()
        assert node.process is not None
        wait_idle([node.process.pid])
        peer_dir = root / "peer"
        peer_dir.mkdir()
        peer = Peer(peer_dir, node, 2 * int(result.params["offered_rate"] * duration))
        try:
            with settled_gc():
                asyncio.run(_measure(node, peer, prefill, duration, lookups_alone, result,
                                     ctx.log))
        finally:
            peer.close()
    return result
