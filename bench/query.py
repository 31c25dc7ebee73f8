"""query: reads from a node whose ledger holds a million observations.

Setup (not timed): ``ORIGINS`` author identities each sign a chain of CLEAR IPv4
observations (signing runs in a helper process, on the other core, while this
process stores the previous chain with the ledger's batched ``ingest``, the path
replicated entries take). Every indicator value is observed by ``SHARING`` origins.
Then the node runs as an ``entraide run`` process and 32 concurrent clients (this
process, the other core; keep-alive connections, each sends its next request when the
last one is answered) ask it:
- indicator lookups ``GET /api/v1/indicators/ipv4-addr/{value}`` (every value known);
- the HTTP floor ``GET /api/v1/health`` (no token, no ledger);
- filtered lists ``GET /api/v1/observations`` (by type+value; by origin; by a narrow
  time window; by TLP), 50 per page.
The clients are bench/httpload.py's lean load generator: aiohttp's client cost
~200-300 us of Python per request on the two cores the node uses too, so it measured
itself as much as the node. The lookups and the floor are also run through aiohttp's
client (the ``aiohttp_*`` figures, as measured before) for comparison. Latency is
per request, as the clients see it, from sending the request to holding the whole
body, on connections in steady state: the first tenth of each lean run's requests go
first on the same connections, checked but not timed (without that, the node's
accepting 32 new connections put ~30-300 slow requests at the start of each run:
most of a 1% tail); every response is checked (status 200; a lookup answers for the value asked,
with the expected number of origins and as many observations as its count). Peak
RSS is the node process's VmHWM.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections.abc import Callable
from typing import Any

import msgpack
import orjson

from agent.cli.localfed import child_pids, tree_cpu_seconds, wait_idle
from bench.common import Context, Result, percentile, private_mb, rss_peak_mb
from bench.fed import (
    Client,
    FedNode,
    add_origins,
    identity,
    metric,
    metrics,
    new_federation,
    open_ledger,
)
from bench.httpload import run_load
from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.payloads import Observation, encode_payload

ORIGINS = 10
SHARING = 4
CLIENTS = 32
WORKER_START_S = 30.0  # a guard: past it, the run goes on with in-process lookups
TS0 = 1_760_000_000_000
_PREFIX: bytes | None = None


def _value(index: int) -> str:
    return f"{11 + index % 200}.{(index >> 8) & 255}.{index & 255}.{1 + (index >> 16) % 250}"


def _body(value: str) -> bytes:
    """A canonical observation payload, built from a template: ``value`` is the last
    key in canonical (sorted) order, so the bytes are the prefix plus its encoding."""
    global _PREFIX
    if _PREFIX is None:
        sample = encode_payload(_observation("192.0.2.1"))
        tail = msgpack.packb("value") + msgpack.packb("192.0.2.1")
        assert sample.endswith(tail)
        _PREFIX = sample[:-len(msgpack.packb("192.0.2.1"))]
    return _PREFIX + msgpack.packb(value)


def _observation(value: str) -> Observation:
    return Observation(type="ipv4-addr", value=value, confidence=75, severity="high",
                       tags=("bench", "query"))


def _sign_origin(args: tuple[int, int, int]) -> list[VerifiedEntry]:
    """Origin ``o``'s whole chain of ``count`` observations (runs in a helper process)."""
    o, count, distinct = args
    ident = identity(f"query-origin-{o}")
    prev = None
    out = []
    offset = o * (distinct // ORIGINS) * (ORIGINS // SHARING)
    for seq in range(1, count + 1):
        body = _body(_value((offset + seq) % distinct))
        entry = sign_entry(ident, seq=seq, prev=prev, now_ms=TS0 + seq, tlp=TLP.CLEAR,
                           audience=None, body=body)
        out.append(entry)
        prev = entry.hash
    return out


async def build_ledger(node: FedNode, total: int, distinct: int, log: Any) -> float:
    """Fill the stopped node's ledger; returns entries/s of the whole build."""
    per = total // ORIGINS
    assert _body("198.51.100.9") == encode_payload(_observation("198.51.100.9"))
    start = time.perf_counter()
    done = 0
    ctx = multiprocessing.get_context("spawn")
    async with open_ledger(node) as ledger:
        with ctx.Pool(1) as pool:
            chains = pool.imap(_sign_origin, [(o, per, distinct) for o in range(ORIGINS)])
            loop = asyncio.get_running_loop()
            it = iter(chains)
            while True:
                chain = await loop.run_in_executor(None, next, it, None)
                if chain is None:
                    break
                for at in range(0, len(chain), 10_000):
                    chunk = chain[at:at + 10_000]
                    result = await ledger.ingest(chunk)
                    if result.stored != len(chunk):
                        raise RuntimeError(f"stored {result.stored} of {len(chunk)}")
                done += len(chain)
                log(f"query: ledger holds {done:,} observations "
                    f"({done / (time.perf_counter() - start):,.0f}/s)")
    return done / (time.perf_counter() - start)


async def _load(client: Client, paths: list[str], clients: int = CLIENTS
                ) -> tuple[float, list[float]]:
    """The same load through aiohttp's client (the figures before the lean one)."""
    queue = iter(paths)
    latencies: list[float] = []

    async def worker() -> None:
        for path in queue:
            t0 = time.perf_counter()
            await client.request("GET", path, expect=200)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0, latencies


def lookup_check(fewest: int, most: int | None = None) -> Callable[[str, bytes], None]:
    """Every lookup answers for the value asked, with ``fewest`` origins (up to ``most``
    when given) and as many observations as its count says."""
    prefix = len("/api/v1/indicators/ipv4-addr/")
    most = fewest if most is None else most

    def check(path: str, body: bytes) -> None:
        doc = orjson.loads(body)
        value = path[prefix:]
        if doc["type"] != "ipv4-addr" or doc["value"] != value:
            raise ValueError(f"answered for {doc['type']}/{doc['value']}")
        if not fewest <= len(doc["origins"]) <= most or doc["count"] != len(
                doc["observations"]):
            raise ValueError(f"{len(doc['origins'])} origins, count {doc['count']}")
        if any(o["value"] != value for o in doc["observations"]):
            raise ValueError("an observation of another value")

    return check


def _health_check(path: str, body: bytes) -> None:
    if orjson.loads(body) != {"status": "ok"}:
        raise ValueError("not ok")


def _list_check(path: str, body: bytes) -> None:
    doc = orjson.loads(body)
    if not isinstance(doc["observations"], list) or len(doc["observations"]) > 50:
        raise ValueError("not a page of at most 50 observations")


async def _measure(node: FedNode, lookups: int, lists: int, distinct: int, per: int,
                   result: Result) -> None:
    rng = random.Random(5)
    host, port = "127.0.0.1", node.api_port
    auth = [("Authorization", f"Bearer {node.token}")]

    async def lean(paths: list[str], check: Callable[[str, bytes], None] | None,
                   clients: int = CLIENTS, headers: list[tuple[str, str]] = auth
                   ) -> tuple[float, list[float]]:
        # The first 10% (at least 4 per connection) warm the connections up, untimed.
        warm = max(4 * clients, len(paths) // 10)
        done = await run_load(host, port, paths[warm:], connections=clients,
                              headers=headers, check=check, warmup=paths[:warm])
        return done.seconds, done.latencies

    def lookup_paths(n: int) -> list[str]:
        return [f"/api/v1/indicators/ipv4-addr/{_value(rng.randrange(distinct))}"
                for _ in range(n)]

    assert node.process is not None
    pid = node.process.pid
    async with Client(node, concurrency=CLIENTS) as client:
        sample = await client.request("GET", lookup_paths(1)[0])
        result.params["observations_per_indicator"] = len(sample["observations"])
        check = lookup_check(len(sample["origins"]))
        # The first lookup connection started the read lane's readers; time them once
        # they take connections (the lean runs' connections open with a lookup).
        deadline = time.perf_counter() + WORKER_START_S
        while (not metric(await metrics(client), "entraide_read_lane_readers")
               and time.perf_counter() < deadline):
            await asyncio.sleep(0.05)
        result.params["read_lane_readers"] = int(
            metric(await metrics(client), "entraide_read_lane_readers"))
        # Service time: one client, one request at a time (no queueing in the node).
        _, lat = await lean(lookup_paths(lookups // 10), check, clients=1)
        result.add("lookup_1_p50_ms", "indicator lookup p50 (1 client)",
                   percentile(lat, 0.5) * 1000, "ms")
        result.add("lookup_1_p99_ms", "indicator lookup p99 (1 client)",
                   percentile(lat, 0.99) * 1000, "ms")
        paths = lookup_paths(lookups)
        cpu0, main0 = tree_cpu_seconds(pid)
        seconds, lat = await lean(paths, check)
        cpu1, main1 = tree_cpu_seconds(pid)
        cpu, main = (cpu1 - cpu0) / lookups, (main1 - main0) / lookups
        result.add("lookup_p50_ms", f"indicator lookup p50 ({CLIENTS} clients)",
                   percentile(lat, 0.5) * 1000, "ms")
        result.add("lookup_p99_ms", f"indicator lookup p99 ({CLIENTS} clients)",
                   percentile(lat, 0.99) * 1000, "ms", op="<=", target=10)
        result.add("lookup_per_s", "indicator lookups/s", len(lat) / seconds, "req/s")
        result.add("lookup_cpu_us", "indicator lookup: node CPU per request", cpu * 1e6, "us")
        result.add("lookup_main_cpu_us", "indicator lookup: node's main process", main * 1e6,
                   "us")

        # The floor: the same load on the cheapest route (no token, no ledger).
        seconds, lat = await lean(["/api/v1/health"] * lookups, _health_check, headers=[])
        result.add("health_p99_ms", f"floor: GET /health p99 ({CLIENTS} clients)",
                   percentile(lat, 0.99) * 1000, "ms")
        result.add("health_per_s", "floor: GET /health requests/s", len(lat) / seconds,
                   "req/s")

        # The same lookups and floor through aiohttp's client, as measured before the
        # lean client: its own ~200-300 us per request share the node's two cores.
        _, lat = await _load(client, lookup_paths(lookups // 10), clients=1)
        result.add("aiohttp_lookup_1_p99_ms", "aiohttp client: lookup p99 (1 client)",
                   percentile(lat, 0.99) * 1000, "ms")
        seconds, lat = await _load(client, lookup_paths(lookups))
        result.add("aiohttp_lookup_p50_ms", f"aiohttp client: lookup p50 ({CLIENTS} clients)",
                   percentile(lat, 0.5) * 1000, "ms")
        result.add("aiohttp_lookup_p99_ms", f"aiohttp client: lookup p99 ({CLIENTS} clients)",
                   percentile(lat, 0.99) * 1000, "ms")
        result.add("aiohttp_lookup_per_s", "aiohttp client: lookups/s", lookups / seconds,
                   "req/s")
        seconds, lat = await _load(client, ["/api/v1/health"] * lookups)
        result.add("aiohttp_health_p99_ms", f"aiohttp client: GET /health p99 ({CLIENTS} "
                   "clients)", percentile(lat, 0.99) * 1000, "ms")
        result.add("aiohttp_health_per_s", "aiohttp client: GET /health requests/s",
                   lookups / seconds, "req/s")

        def window() -> str:
            t = TS0 + rng.randrange(1, per)
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000))
            until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000 + 1))
            return f"/api/v1/observations?since={since}Z&until={until}Z&limit=50"

        kinds = [
            lambda: f"/api/v1/observations?type=ipv4-addr&value={_value(rng.randrange(distinct))}",
            lambda: f"/api/v1/observations?origin=QO{rng.randrange(ORIGINS):02d}&limit=50",
            window,
            lambda: "/api/v1/observations?tlp=CLEAR&type=ipv4-addr&limit=50",
        ]
        paths = [kinds[i % len(kinds)]() for i in range(lists)]
        seconds, lat = await lean(paths, _list_check)
        result.add("list_p50_ms", f"filtered list p50 ({CLIENTS} clients)",
                   percentile(lat, 0.5) * 1000, "ms")
        result.add("list_p99_ms", f"filtered list p99 ({CLIENTS} clients)",
                   percentile(lat, 0.99) * 1000, "ms")
        result.add("list_per_s", "filtered lists/s", len(lat) / seconds, "req/s")


def run(ctx: Context) -> Result:
    total = 20_000 if ctx.quick else 1_000_000
    distinct = total // SHARING
    lookups = 1_000 if ctx.quick else 10_000
    lists = 400 if ctx.quick else 4_000
    result = Result("query", params={"observations": total, "origins": ORIGINS,
                                     "distinct_values": distinct, "clients": CLIENTS,
                                     "lookups": lookups, "lists": lists})
    fed = new_federation(ctx.tempdir("query"), ["Q"])
    node = fed["Q"]
    add_origins(node, [(f"QO{o:02d}", identity(f"query-origin-{o}").public_key)
                       for o in range(ORIGINS)])
    rate = asyncio.run(build_ledger(node, total, distinct, ctx.log))
    result.add("build_per_s", "ledger build (sign elsewhere + ingest)", rate, "entries/s")
    size = sum(f.stat().st_size for f in node.data_dir.glob("ledger.sqlite3*"))
    result.params["ledger_mb"] = round(size / 2**20, 1)
    with fed:
        fed.start()
        assert node.process is not None
        # Its verify workers start with it (~0.5 s of CPU each): not during the figures.
        wait_idle([node.process.pid])
        asyncio.run(_measure(node, lookups, lists, distinct, total // ORIGINS, result))
        peak, current = rss_peak_mb(node.process.pid)
        children = child_pids(node.process.pid)
        workers = [rss_peak_mb(child)[0] for child in children]
        private = [private_mb(child) for child in children]
    result.add("rss_peak_mb", "node peak RSS", peak, "MiB", op="<=", target=300)
    # The lookup processes map the ledger: their RSS counts the file's pages they
    # touched, which the page cache shares; their own memory is the private part.
    result.add("workers_rss_peak_mb", "its worker processes' peak RSS, summed (mapped "
               "ledger pages included)", sum(workers), "MiB")
    result.add("workers_private_mb", "its worker processes' private memory, summed",
               sum(private), "MiB")
    result.params["worker_processes"] = len(workers)
    result.params["rss_now_mb"] = round(current, 1)
    return result
