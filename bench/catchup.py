"""catchup: a node that was offline while many entries were written comes back.

Nodes A and B (``entraide run`` processes, one core each) trust ``ORIGINS`` author
identities. Both start in sync (the same ``BEFORE`` entries in both ledgers, B dials
A, they agree). B stops. ``AFTER`` new entries of every origin are written into A
(stored directly in A's ledger while it is stopped too; B cannot tell the
difference). A starts; B starts with A known as an author only, then gets A's card
through the API and dials at once: timed from that call until B's ledger holds every
entry (polled as ingest does: ``timed_sync``).
- entries/s until in sync;
- wire bytes / raw entry bytes: WebSocket bytes B received and sent for this session
  (handshake, encryption, framing, control messages) over the bytes of the entries
  it fetched;
- in-sync reconnect: both stopped, then run again as in-process nodes on the same
  data dirs: the bytes the two exchange from the first handshake byte until each has
  seen the other's version-vector digest match (the engines' "synced"), both
  directions, handshake included.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import Context, Result
from bench.fed import (
    Client,
    FedNode,
    LocalFederation,
    add_origins,
    fill_ledger,
    identity,
    metric,
    metrics,
    new_federation,
    open_ledger,
    sign_chain,
    wait_until,
)
from bench.ingest import _value, timed_sync
from protocol.entries import VerifiedEntry
from protocol.keys import Identity, PublicKey


def _chains(idents: list[Identity], per: int, heads: dict[PublicKey, tuple[int, bytes]] | None,
            tag: str) -> list[VerifiedEntry]:
    out = []
    for i, ident in enumerate(idents):
        head = None if heads is None else heads.get(ident.public_key)
        out.extend(sign_chain(ident, per, head=head, tag=tag,
                              value=lambda s, i=i: _value(i + 100, s)))
    return out


async def _fill(node: FedNode, entries: list[VerifiedEntry]) -> None:
    async with open_ledger(node) as ledger:
        await fill_ledger(ledger, entries)


async def _reconnect_bytes(a: FedNode, b: FedNode) -> dict[str, float]:
    """Run A and B in this process on their data dirs; bytes until both are synced."""
    from agent.config.datadir import DataDir
    from agent.config.settings import GossipConfig, load_trust_list
    from agent.peering.replicator import TransportParams, TrustedPeer, gossip_params
    from tests.agent.nodes import Node

    def build(node: FedNode) -> Node:
        dd = DataDir(node.data_dir)
        built = Node(node.name, dd.load_identity(None), node.data_dir,
                     params=gossip_params(GossipConfig()), transport=TransportParams())
        built.trust = [TrustedPeer(p.name, p.key, None) for p in load_trust_list(dd)]
        built.set_trust(built.trust)
        return built

    na, nb = build(a), build(b)
    await na.listen()
    try:
        await na.start()
        await nb.start()
        synced_at: dict[str, float] = {}

        def both_synced() -> bool:
            for me, other in ((na, nb), (nb, na)):
                if me.name not in synced_at and me.repl.peer_status(other.key).synced:
                    synced_at[me.name] = time.perf_counter()
            return len(synced_at) == 2

        t0 = time.perf_counter()
        nb.set_trust([TrustedPeer(p.name, p.key, na.url if p.key == na.key else None)
                      for p in nb.trust])
        await wait_until(both_synced, timeout=30, what="in-sync peers to agree",
                         interval=0.001)
        counters = nb.repl.counters[a.name]
        gossip = {k: v for k, v in counters.bytes_in.items()}
        for k, v in counters.bytes_out.items():
            gossip[k] = gossip.get(k, 0) + v
        return {"wire": counters.wire_bytes_in + counters.wire_bytes_out,
                "gossip": sum(gossip.values()),
                "frames": counters.wire_frames_in + counters.wire_frames_out,
                "seconds": max(synced_at.values()) - t0,
                "kinds": gossip}  # type: ignore[dict-item]
    finally:
        await nb.stop()
        await na.stop()


def run(ctx: Context) -> Result:
    origins = 10 if ctx.quick else 50
    after = 10_000 if ctx.quick else 100_000
    before_per = 10
    result = Result("catchup", params={"origins": origins, "entries_missed": after,
                                       "entries_before": origins * before_per})
    idents = [identity(f"catchup-origin-{i}") for i in range(origins)]
    names = [(f"CU{i:02d}", ident.public_key) for i, ident in enumerate(idents)]
    fed: LocalFederation = new_federation(ctx.tempdir("catchup"), ["A", "B"], [("B", "A")])
    a, b = fed["A"], fed["B"]
    for node in fed.nodes:
        add_origins(node, names)
    first = _chains(idents, before_per, None, "before")
    for node in fed.nodes:
        asyncio.run(_fill(node, first))
    heads = {e.origin: (e.seq, e.hash) for e in first}
    missed = _chains(idents, after // origins, heads, "after")
    raw_bytes = sum(len(e.raw) for e in missed)
    result.params["entry_bytes_mean"] = round(raw_bytes / len(missed), 1)
    total = len(first) + len(missed)

    with fed:
        fed.start()

        async def in_sync() -> None:
            async with Client(b) as client:
                async def agree() -> bool:
                    status = await client.request("GET", "/api/v1/status")
                    peers = {p["name"]: p for p in status["peers"]}
                    return bool(peers["A"]["connected"])
                await wait_until(agree, timeout=30, what="B connected to A")
        asyncio.run(in_sync())
        fed.stop(["A", "B"])
        ctx.log(f"catchup: writing {len(missed)} entries of {origins} origins while B is off")
        asyncio.run(_fill(a, missed))
        # B comes back knowing A as an author only, so the timed part starts with the dial.
        _forget_url(b, a)
        fed.start(["A", "B"])

        async def catch_up() -> None:
            async with Client(b) as client:
                seconds, b_cpu, a_cpu, b_own = await timed_sync(client, a, b, total,
                                                         timeout=60 if ctx.quick else 600)
                parsed = await metrics(client)
            n = len(missed)
            result.add("entries_per_s", "entries/s until in sync", n / seconds, "entries/s",
                       op=">=", target=10_000)
            wire = (metric(parsed, "entraide_peer_wire_bytes_total", peer="A", direction="in")
                    + metric(parsed, "entraide_peer_wire_bytes_total", peer="A",
                             direction="out"))
            result.add("wire_ratio", "wire bytes / raw entry bytes", wire / raw_bytes, "ratio",
                       op="<=", target=1.05)
            copies = metric(parsed, "entraide_peer_entries_total", direction="in")
            result.add("copies_per_entry", "entry copies received per entry", copies / n,
                       "copies")
            messages = metric(parsed, "entraide_peer_messages_total", direction="in",
                              kind="ENTRIES")
            result.add("entries_per_message", "entries per ENTRIES message",
                       copies / max(1.0, messages), "entries")
            result.add("seconds", "time until in sync", seconds, "s")
            result.add("b_cpu_us", "catching-up node CPU per entry", b_cpu / n * 1e6, "us",
                       note="its verify worker process included")
            result.add("b_main_cpu_us", "catching-up node: its main process", b_own / n * 1e6,
                       "us")
            result.add("a_cpu_us", "serving node CPU per entry", a_cpu / n * 1e6, "us")
        asyncio.run(catch_up())
    ctx.log("catchup: in-sync reconnect")
    figures = asyncio.run(_reconnect_bytes(a, b))
    handshake = handshake_bytes()
    result.add("reconnect_bytes", "in-sync reconnect: session bytes after the handshake",
               figures["wire"], "bytes", op="<=", target=512,
               note="encrypted frames both ways; WebSocket/TCP headers not counted")
    result.add("reconnect_gossip_bytes", "in-sync reconnect: gossip message bytes",
               figures["gossip"], "bytes")
    result.add("handshake_bytes", "handshake bytes (both ways, once per session)", handshake,
               "bytes")
    result.add("reconnect_total_bytes", "in-sync reconnect: handshake + session bytes",
               handshake + figures["wire"], "bytes")
    result.add("reconnect_ms", "in-sync reconnect: time to agree", figures["seconds"] * 1000,
               "ms")
    result.params["reconnect_messages"] = figures["kinds"]
    return result


def handshake_bytes() -> int:
    """Bytes of one session handshake, both ways (the replicator's counters start after
    it): two real sessions run against each other in memory."""
    from protocol.session import Session

    a = Session(identity("hs-a"), initiator=True, is_trusted=lambda _k: True,
                ephemeral_seed=b"\x01" * 32)
    b = Session(identity("hs-b"), initiator=False, is_trusted=lambda _k: True,
                ephemeral_seed=b"\x02" * 32)
    total = 0
    queue = [(b, frame) for frame in a.start()]
    while queue:
        dst, frame = queue.pop(0)
        total += len(frame)
        dst.receive(frame)
        other = a if dst is b else b
        queue.extend((other, reply) for reply in dst.frames_to_send())
    return total


def _forget_url(node: FedNode, peer: FedNode) -> None:
    """Make ``node`` know ``peer`` as an author only (no URL) in its peers.toml."""
    from agent.config.datadir import DataDir
    from agent.config.settings import PeerEntry, edit_trust_list

    me = PublicKey.from_text(node.key)

    def change(trust: object) -> object:
        trust = trust.without(peer.name)  # type: ignore[attr-defined]
        return trust.with_peer(PeerEntry.build(name=peer.name, key=peer.key),  # type: ignore[attr-defined]
                               own_key=me, own_name=node.name)

    edit_trust_list(DataDir(Path(node.data_dir)), change, own_key=me, own_name=node.name)
