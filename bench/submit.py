"""submit: observations through the HTTP API of a real ``entraide run`` process.

The node is its own process; the client (aiohttp, this process) runs on the other
core. Part one posts batches of 500 (``{"observations": [...]}``) from
``BATCH_CLIENTS`` concurrent clients (and again from 2, the figure of earlier runs:
with two requests in the node, one is signed while the other commits and the node sits
idle about half the time, so 2 clients measure the request cycle, not what the node
can absorb); part two posts single observations from 16
concurrent clients. Each observation is GREEN (signed, stored, indexed, acknowledged
after a durable commit). Latency is per HTTP request as the client sees it. The node
validates large batches in its batch worker process (agent/api/batch.py), started by the
first one: the warm-up waits until it is up, and the worker's CPU is reported apart
from the node process's.
Denominator: raw Ed25519 signatures per second on one core, measured just before.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from agent.cli.localfed import tree_cpu_seconds, wait_idle
from bench.common import Context, Result, cpu_seconds, percentile, sign_rate
from bench.fed import Client, FedNode, ipv4, metric, metrics, new_federation

BATCH = 500
BATCH_CLIENTS = 4
FEW_BATCH_CLIENTS = 2
SINGLE_CLIENTS = 16
WORKER_START_S = 30.0  # a guard: past it, the run goes on with in-process validation


def _children_cpu(pid: int) -> float:
    """CPU seconds used so far by the node's worker processes (the batch worker; the
    verify workers idle during a submit run)."""
    total, own = tree_cpu_seconds(pid)
    return total - own


def _observation(i: int) -> dict[str, Any]:
    return {"type": "ipv4-addr", "value": ipv4(i), "tlp": "GREEN", "confidence": 80,
            "severity": "high", "tags": ["bench", "submit"],
            "description": {"en": "benchmark observation", "fr": "observation de banc d'essai"}}


async def _run_clients(clients: int, jobs: list[Any], send: Any) -> tuple[float, list[float]]:
    """Run ``send(job)`` for every job from ``clients`` workers; (seconds, latencies)."""
    queue = iter(jobs)
    latencies: list[float] = []

    async def worker() -> None:
        for job in queue:
            t0 = time.perf_counter()
            await send(job)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - start, latencies


async def _measure(node: FedNode, batched_total: int, single_total: int,
                   result: Result) -> None:
    counter = itertools.count(1)
    async with Client(node, concurrency=SINGLE_CLIENTS + 4) as client:
        async def post_batch(size: int) -> None:
            body = {"observations": [_observation(next(counter)) for _ in range(size)]}
            reply = await client.request("POST", "/api/v1/observations", body, expect=201)
            assert len(reply["ids"]) == size

        async def post_one(_: int) -> None:
            reply = await client.request("POST", "/api/v1/observations",
                                         _observation(next(counter)), expect=201)
            assert len(reply["id"]) == 64

        # Warm up both paths (connections, caches, first-call imports, the batch worker).
        await _run_clients(BATCH_CLIENTS, [BATCH] * 2, post_batch)
        deadline = time.perf_counter() + WORKER_START_S
        while (not metric(await metrics(client), "entraide_batch_worker_up")
               and time.perf_counter() < deadline):
            await _run_clients(1, [BATCH], post_batch)
        await _run_clients(SINGLE_CLIENTS, [1] * 64, post_one)
        worker_up = metric(await metrics(client), "entraide_batch_worker_up")

        batches = [BATCH] * (batched_total // BATCH)
        assert node.process is not None
        cpu0 = cpu_seconds(node.process.pid)
        worker0 = _children_cpu(node.process.pid)
        seconds, lat = await _run_clients(BATCH_CLIENTS, batches, post_batch)
        n = sum(batches)
        cpu1 = cpu_seconds(node.process.pid)
        worker1 = _children_cpu(node.process.pid)
        result.add("batched_per_s", f"batched ({BATCH}/request, {BATCH_CLIENTS} clients)",
                   n / seconds, "obs/s", op=">=", target=10_000)
        result.add("batched_p50_ms", "batched: request latency p50",
                   percentile(lat, 0.5) * 1000, "ms")
        result.add("batched_p99_ms", "batched: request latency p99",
                   percentile(lat, 0.99) * 1000, "ms")
        result.add("batched_cpu_us", "batched: node CPU per observation",
                   (cpu1 - cpu0) / n * 1e6, "us")
        result.add("batched_worker_cpu_us", "batched: batch worker CPU per observation",
                   (worker1 - worker0) / n * 1e6, "us")
        result.params["batch_worker"] = "up" if worker_up else "not up (in-process)"
        batched_rate = n / seconds

        seconds, lat = await _run_clients(FEW_BATCH_CLIENTS, batches, post_batch)
        result.add("batched_few_per_s",
                   f"batched ({BATCH}/request, {FEW_BATCH_CLIENTS} clients)", n / seconds, "obs/s")
        result.add("batched_few_p50_ms", f"batched, {FEW_BATCH_CLIENTS} clients: latency p50",
                   percentile(lat, 0.5) * 1000, "ms")

        cpu0 = cpu_seconds(node.process.pid)
        seconds, lat = await _run_clients(SINGLE_CLIENTS, [1] * single_total, post_one)
        cpu1 = cpu_seconds(node.process.pid)
        result.add("single_per_s", f"single ({SINGLE_CLIENTS} concurrent clients)",
                   single_total / seconds, "obs/s")
        result.add("single_p50_ms", "single: latency p50", percentile(lat, 0.5) * 1000, "ms")
        result.add("single_p99_ms", "single: latency p99", percentile(lat, 0.99) * 1000, "ms")
        result.add("single_cpu_us", "single: node CPU per observation",
                   (cpu1 - cpu0) / single_total * 1e6, "us")
        status = await client.request("GET", "/api/v1/status")
        expected = next(counter) - 1
        if status["ledger"]["entries"] != expected:
            raise RuntimeError(f"ledger holds {status['ledger']['entries']}, sent {expected}")
    result.params["batched_rate"] = batched_rate


def run(ctx: Context) -> Result:
    batched_total = 2_000 if ctx.quick else 20_000
    single_total = 400 if ctx.quick else 20_000
    result = Result("submit", params={
        "batched_total": batched_total, "batch": BATCH, "batch_clients": BATCH_CLIENTS,
        "few_batch_clients": FEW_BATCH_CLIENTS,
        "single_total": single_total, "single_clients": SINGLE_CLIENTS, "tlp": "GREEN",
        "node": "entraide run process; client in the bench process (the other core)"})
    signs = sign_rate(0.3 if ctx.quick else 1.0)
    result.add("sign_per_s", "baseline: raw Ed25519 sign, 1 core", signs, "ops/s")
    fed = new_federation(ctx.tempdir("submit"), ["SUB"])
    node = fed["SUB"]
    ctx.log("submit: node set up, starting")
    with fed:
        fed.start()
        assert node.process is not None
        wait_idle([node.process.pid])  # its verify workers start with it
        asyncio.run(_measure(node, batched_total, single_total, result))
    batched = result.params.pop("batched_rate")
    result.add("batched_vs_sign", "batched / raw sign rate", batched / signs, "ratio",
               op=">=", target=0.15)
    return result
