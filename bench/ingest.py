"""ingest: a fresh node replicates entries of many origins from a peer over the real
transport (WebSocket, handshake, secretstream, gossip engine, verify pool, ledger).

Setup (not timed): ``ORIGINS`` author identities sign chains of CLEAR observations;
they are stored directly in the ledger of node SRC; both SRC and DST trust every
origin as an author. Both run as ``entraide run`` processes (one core each).
Timed: from the API call that gives DST the card of SRC (DST dials at once) until
DST's ledger holds every entry, polled on DST's status endpoint (``timed_sync``).
Denominator: raw Ed25519 verifications per second on one core, measured just before.
"""

from __future__ import annotations

import asyncio
import time

from agent.cli.localfed import tree_cpu_seconds, wait_idle
from bench.common import Context, Result, verify_rate
from bench.fed import (
    Client,
    FedNode,
    LocalFederation,
    add_origins,
    connect,
    fill_ledger,
    identity,
    metric,
    metrics,
    new_federation,
    open_ledger,
    sign_chain,
)
from protocol.entries import VerifiedEntry
from protocol.keys import PublicKey

_POLL_S = (0.01, 0.25)
"""Shortest and longest wait between two polls of the receiving node's status."""


def make_entries(origins: int, total: int, tag: str
                 ) -> tuple[list[tuple[str, PublicKey]], list[VerifiedEntry]]:
    """``total`` entries, ``total // origins`` per origin, interleaved in chunks."""
    idents = [identity(f"{tag}-origin-{i}") for i in range(origins)]
    per = total // origins
    chains = [sign_chain(ident, per, tag=tag, value=lambda s, i=i: _value(i, s))
              for i, ident in enumerate(idents)]
    entries = [e for chain in chains for e in chain]
    names = [(f"{tag.upper()}{i:02d}", ident.public_key) for i, ident in enumerate(idents)]
    return names, entries


def _value(origin: int, seq: int) -> str:
    n = origin * 1_000_003 + seq
    return f"{11 + n % 200}.{(n >> 8) & 255}.{n & 255}.{1 + (n >> 16) % 250}"


async def settle(*pids: int) -> None:
    """Wait until the nodes (with their worker processes) are idle (``wait_idle``)."""
    await asyncio.to_thread(wait_idle, pids)


async def timed_sync(dst_client: Client, src: FedNode, dst: FedNode, target: int,
                     timeout: float) -> tuple[float, float, float, float]:
    """Connect DST to SRC now; seconds until DST holds ``target`` entries, and the CPU
    seconds DST (with its verify worker), SRC, and DST's own process used meanwhile.

    DST's status is polled sparsely while the end is far and closely as it nears: each
    poll costs the node it measures a status answer (every peer, the forks query), 2-7 %
    of its event loop at a fixed 50 ms. The end is still seen within ~10 ms."""

    async def entries() -> int:
        status = await dst_client.request("GET", "/api/v1/status")
        return int(status["ledger"]["entries"])

    async def held(deadline: float) -> float:
        start = await entries()
        began = time.perf_counter()
        while True:
            count, now = await entries(), time.perf_counter()
            if count >= target:
                return now
            if now > deadline:
                raise TimeoutError(f"{target} entries replicated: {count} after "
                                   f"{timeout:.0f} s")
            rate = (count - start) / (now - began) if count > start else 0.0
            eta = (target - count) / rate if rate > 0 else 1.0
            await asyncio.sleep(min(_POLL_S[1], max(_POLL_S[0], eta / 3)))

    assert src.process is not None and dst.process is not None
    # Both nodes start their verify worker processes with them (~0.5 s of CPU each):
    # let that finish, so the figures are of the transfer, not of the start-up.
    await settle(dst.process.pid, src.process.pid)
    dst0, src0 = tree_cpu_seconds(dst.process.pid), tree_cpu_seconds(src.process.pid)
    t0 = time.perf_counter()
    await connect(dst_client, src)
    t1 = await held(t0 + timeout)
    dst1, src1 = tree_cpu_seconds(dst.process.pid), tree_cpu_seconds(src.process.pid)
    return t1 - t0, dst1[0] - dst0[0], src1[0] - src0[0], dst1[1] - dst0[1]


async def _fill(fed: LocalFederation, name: str, entries: list[VerifiedEntry]) -> None:
    async with open_ledger(fed[name]) as ledger:
        await fill_ledger(ledger, entries)


def run(ctx: Context) -> Result:
    origins = 5 if ctx.quick else 20
    total = 5_000 if ctx.quick else 50_000
    result = Result("ingest", params={
        "origins": origins, "entries": total,
        "nodes": "SRC and DST, each an entraide run process; DST empty, dials SRC"})
    verifies = verify_rate(0.3 if ctx.quick else 1.0)
    result.add("verify_per_s", "baseline: raw Ed25519 verify, 1 core", verifies, "ops/s")
    names, entries = make_entries(origins, total, "ing")
    raw_bytes = sum(len(e.raw) for e in entries)
    result.params["entry_bytes_mean"] = round(raw_bytes / len(entries), 1)
    fed = new_federation(ctx.tempdir("ingest"), ["SRC", "DST"])
    for node in fed.nodes:
        add_origins(node, names)
    asyncio.run(_fill(fed, "SRC", entries))
    ctx.log(f"ingest: {total} entries of {origins} origins in SRC; replicating into DST")
    with fed:
        fed.start()

        async def measure() -> None:
            async with Client(fed["DST"]) as client:
                seconds, dst_cpu, src_cpu, dst_own = await timed_sync(
                    client, fed["SRC"], fed["DST"], total, timeout=60 if ctx.quick else 300)
                parsed = await metrics(client)
            rate = total / seconds
            result.add("entries_per_s", "verified and stored", rate, "entries/s")
            result.add("vs_verify", "ingest / raw verify rate (1 core)", rate / verifies,
                       "ratio", op=">=", target=0.6, note="stretch >= 1.0 with both cores")
            copies = metric(parsed, "entraide_peer_entries_total", direction="in")
            result.add("copies_per_entry", "entry copies received per entry", copies / total,
                       "copies")
            messages = metric(parsed, "entraide_peer_messages_total", direction="in",
                              kind="ENTRIES")
            result.add("entries_per_message", "entries per ENTRIES message",
                       copies / max(1.0, messages), "entries")
            result.add("seconds", "time to hold every entry", seconds, "s")
            result.add("dst_cpu_us", "receiving node CPU per entry", dst_cpu / total * 1e6,
                       "us", note="its verify worker process included")
            result.add("dst_main_cpu_us", "receiving node: its main process", dst_own / total
                       * 1e6, "us")
            result.add("src_cpu_us", "sending node CPU per entry", src_cpu / total * 1e6,
                       "us")

        asyncio.run(measure())
    return result
