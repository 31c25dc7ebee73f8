"""aid: from a request for assistance to the first offer seen by the requester, 5 real nodes.

Five ``entraide run`` processes set up through the CLI (:class:`LocalFederation`) in the
demo's line, so the thread is relayed by nodes that cannot read it::

    BC ── AB ── ON ── FED ── QC

BC asks QC and FED for forensics (RED, audience QC and FED). Each helper is answered by a
machine: a client of its node's stream (``GET /api/v1/stream``, ``event: aid``) that posts
an offer the moment its node reports the request. So the figure is the federation's own
part of the wait, with no person in it: BC signs and seals the request; it is relayed
(sealed) by AB and ON; FED (3 hops) and QC (4 hops) verify it, decrypt it and report it;
the offer is signed, sealed for BC and relayed back; BC verifies, decrypts, folds the
thread and reports the offer on its own stream.

Figures, over ``rounds`` requests made one at a time (one unmeasured warm-up first):
- request → first offer seen by BC (its stream): p50, p99 (ms);
- request → first helper's node reports it (one way, 3 hops): p50 (ms);
- request → both offers seen by BC: p50 (ms).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from agent.cli.localfed import wait_for, wait_idle
from bench.common import Context, Result, percentile
from bench.fed import Client, new_federation

NAMES = ["FED", "QC", "ON", "AB", "BC"]
LINKS = [("QC", "FED"), ("FED", "ON"), ("ON", "AB"), ("AB", "BC")]
HELPERS = ("QC", "FED")
REQUESTER = "BC"
ROUND_TIMEOUT_S = 30.0

REQUEST: dict[str, Any] = {
    "title": "Ransomware in hospitals (bench)", "severity": "critical",
    "description": {"en": "Electronic health records are down.",
                    "fr": "Les dossiers médicaux électroniques sont en panne."},
    "needs": [{"kind": "forensics"}], "contact": {"name": "BC duty officer"},
    "tlp": "RED", "audience": list(HELPERS),
}


async def _aid_events(client: Client, ready: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
    """The ``event: aid`` data of ``client``'s node stream, parsed, as they come;
    ``ready`` is set once the stream answered."""
    async with client.session.get(client.base + "/api/v1/stream", timeout=None) as resp:
        resp.raise_for_status()
        ready.set()
        event = ""
        async for raw in resp.content:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "aid":
                yield json.loads(line[5:])
            elif not line:
                event = ""


async def _responder(client: Client, seen: dict[str, float], ready: asyncio.Event) -> None:
    """Offer forensics on every request of the requester, the moment it is reported."""
    async for event in _aid_events(client, ready):
        if event["kind"] == "request" and event.get("origin_name") == REQUESTER:
            seen.setdefault(event["request"], time.perf_counter())
            await client.request("POST", f"/api/v1/aid/requests/{event['request']}/offers",
                                 {"kinds": ["forensics"], "people": 1})


async def _watch_offers(client: Client, offers: dict[str, list[float]],
                        ready: asyncio.Event) -> None:
    """Note when each offer on one of the requester's requests reaches its stream."""
    async for event in _aid_events(client, ready):
        if event["kind"] == "offer":
            offers.setdefault(event["request"], []).append(time.perf_counter())


async def _measure(fed: Any, rounds: int, log: Any) -> tuple[list[float], list[float],
                                                             list[float]]:
    requester = Client(fed[REQUESTER])
    helpers = [Client(fed[name]) for name in HELPERS]
    seen: dict[str, float] = {}
    offers: dict[str, list[float]] = {}
    readies = [asyncio.Event() for _ in range(len(helpers) + 1)]
    tasks = [asyncio.create_task(_watch_offers(requester, offers, readies[0]))]
    tasks += [asyncio.create_task(_responder(c, seen, r)) for c, r in zip(helpers, readies[1:],
                                                                           strict=True)]
    first, reached, both = [], [], []
    try:
        for ready in readies:
            await asyncio.wait_for(ready.wait(), ROUND_TIMEOUT_S)
        await asyncio.sleep(0.5)  # every stream has subscribed to its node's aid events
        for k in range(rounds + 1):
            t0 = time.perf_counter()
            rid = (await requester.request("POST", "/api/v1/aid/requests",
                                           {**REQUEST, "title": f"{REQUEST['title']} {k}"}))["id"]
            deadline = t0 + ROUND_TIMEOUT_S
            while len(offers.get(rid, ())) < len(HELPERS):
                broken = [t for t in tasks if t.done()]
                if broken:
                    broken[0].result()  # raises what stopped it
                    raise RuntimeError("an aid stream closed")
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"round {k}: {len(offers.get(rid, ()))} offers in "
                                       f"{ROUND_TIMEOUT_S:.0f} s")
                await asyncio.sleep(0.002)
            if k == 0:
                continue  # warm-up: connections, caches, the first stream events
            times = sorted(offers[rid])
            first.append((times[0] - t0) * 1000)
            both.append((times[-1] - t0) * 1000)
            reached.append((seen[rid] - t0) * 1000)
            log(f"aid: round {k}: first offer after {first[-1]:.0f} ms")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in (requester, *helpers):
            await client.close()
    return first, reached, both


def run(ctx: Context) -> Result:
    rounds = 3 if ctx.quick else 30
    result = Result("aid", params={"nodes": len(NAMES), "links": [f"{a}-{b}" for a, b in LINKS],
                                   "rounds": rounds, "requester": REQUESTER,
                                   "helpers": list(HELPERS)})
    fed = new_federation(ctx.tempdir("aid"), NAMES, LINKS)
    try:
        fed.start()

        def linked() -> bool:
            for a, b in LINKS:
                peers = fed[a].call("GET", "/api/v1/status")["peers"]
                if not any(p["name"] == b and p["connected"] for p in peers):
                    return False
            return True

        wait_for(linked, 60.0, "every link to connect")
        wait_idle(n.process.pid for n in fed.nodes if n.process is not None)
        first, reached, both = asyncio.run(_measure(fed, rounds, ctx.log))
    finally:
        fed.stop()
    result.add("first_offer_p50_ms", "request to first offer seen by requester, p50",
               percentile(first, 0.5), "ms")
    result.add("first_offer_p99_ms", "request to first offer seen by requester, p99",
               percentile(first, 0.99), "ms")
    result.add("request_seen_p50_ms", "request to first helper's node (3 hops), p50",
               percentile(reached, 0.5), "ms")
    result.add("both_offers_p50_ms", "request to both offers seen by requester, p50",
               percentile(both, 0.5), "ms")
    result.notes.append("helpers answer by machine (a stream client), so the figure is the "
                        "federation's part: sealed relay over 3-4 hops and back")
    return result
