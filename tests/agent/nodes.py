"""Start N replicating nodes in one process: real ledgers (SQLite in a temp dir), real
keys, real aiohttp peer listeners on 127.0.0.1:0, real WebSocket sessions.

Used by the transport tests, the end-to-end tests and the benchmarks::

    async with Federation.start(tmp_path, 3, topology="line") as fed:
        a, b, c = fed.nodes
        await a.write(10)
        await fed.wait_for(lambda: fed.converged(), what="all ledgers equal")

Nothing here sleeps for a fixed time to make something happen: tests wait for a
condition with a deadline (:func:`wait_for`, polling every 20 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.peering.replicator import Replicator, TransportParams, TrustedPeer
from agent.storage.ledger import Ledger
from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.gossip import GossipParams
from protocol.keys import Identity, PublicKey
from protocol.payloads import Observation, encode_payload

__all__ = ["FAST_GOSSIP", "FAST_TRANSPORT", "Federation", "Node", "make_entries", "wait_for"]

FAST_TRANSPORT = TransportParams(backoff_initial=0.05, backoff_max=0.5, stable_after=1.0,
                                 heartbeat=5.0, idle_timeout=30.0, close_grace=1.0,
                                 progress_interval=1.0)
"""Short backoff so restarts reconnect quickly; long enough timeouts for slow CI."""

FAST_GOSSIP = GossipParams(anti_entropy_interval=0.5, want_timeout=2.0, ping_interval=5.0)


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 30.0,
                   what: str = "condition", interval: float = 0.02) -> None:
    """Poll ``condition`` every ``interval`` s until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def _body(i: int, tag: str) -> bytes:
    return encode_payload(Observation(
        type="ipv4-addr", value=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        tags=(tag,)))


def make_entries(identity: Identity, n: int, *, head: tuple[int, bytes] | None = None,
                 tag: str = "test", now_ms: int | None = None) -> list[VerifiedEntry]:
    """Sign ``n`` CLEAR observation entries continuing ``identity``'s chain after ``head``."""
    seq, prev = (0, None) if head is None else head
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = []
    for i in range(n):
        entry = sign_entry(identity, seq=seq + 1, prev=prev, now_ms=now_ms + i, tlp=TLP.CLEAR,
                           audience=None, body=_body(seq + 1, tag))
        out.append(entry)
        seq, prev = entry.seq, entry.hash
    return out


@dataclass(eq=False)
class Node:
    """One in-process node: identity, ledger, replicator and peer listener."""

    name: str
    identity: Identity
    data_dir: Path
    params: GossipParams = FAST_GOSSIP
    transport: TransportParams = FAST_TRANSPORT
    port: int = 0
    trust: list[TrustedPeer] = field(default_factory=list)
    ledger: Ledger | None = None
    replicator: Replicator | None = None
    _runner: web.AppRunner | None = None
    _trust_keys: set[PublicKey] = field(default_factory=set)

    @property
    def key(self) -> PublicKey:
        return self.identity.public_key

    @property
    def url(self) -> str:
        assert self.port, "start the listener first"
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.replicator is not None

    @property
    def repl(self) -> Replicator:
        assert self.replicator is not None, f"{self.name} is not running"
        return self.replicator

    @property
    def db(self) -> Ledger:
        assert self.ledger is not None, f"{self.name} is not running"
        return self.ledger

    def set_trust(self, trust: Iterable[TrustedPeer]) -> None:
        """Replace the trust list (applied live when running)."""
        self.trust = list(trust)
        # Mutated in place: the ledger holds this set's __contains__.
        self._trust_keys.clear()
        self._trust_keys.update(p.key for p in self.trust)
        if self.replicator is not None:
            self.replicator.update_trust()

    async def listen(self) -> None:
        """Bind the peer listener (port 0 the first time, the same port afterwards)."""
        app = web.Application()
        app.router.add_get("/peer/v1", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # The runner outlives replicator restarts: route to whichever one runs now.
        if self.replicator is None:
            raise web.HTTPServiceUnavailable()
        return await self.replicator.handle_peer(request)

    async def start(self) -> None:
        """Open the ledger, start the replicator, bind the listener if needed."""
        self.ledger = await Ledger.open(self.data_dir / "ledger.sqlite3", identity=self.identity,
                                        is_trusted_origin=self._trust_keys.__contains__)
        self.replicator = Replicator(self.identity, lambda: self.trust, self.ledger,
                                     self.params, transport=self.transport)
        await self.replicator.start()
        if self._runner is None:
            await self.listen()

    async def stop(self, *, clean: bool = True) -> None:
        """Stop the replicator (cleanly, or dropping connections like a crash), close the
        listener and the ledger."""
        if self.replicator is not None:
            await self.replicator.stop(clean=clean)
            self.replicator = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.ledger is not None:
            await self.ledger.close()
            self.ledger = None

    async def restart(self) -> None:
        await self.start()

    async def write(self, n: int, *, batch: int = 2000, tag: str = "test") -> list[VerifiedEntry]:
        """Sign ``n`` entries of this node, store them in its ledger in batches and
        hand them to its replicator (what the node's submit path does)."""
        out: list[VerifiedEntry] = []
        while len(out) < n:
            entries = make_entries(self.identity, min(batch, n - len(out)),
                                   head=self.db.head(self.key), tag=tag)
            result = await self.db.ingest(entries)
            assert result.stored == len(entries), result
            self.repl.publish(entries)
            out.extend(entries)
        return out

    def head_seq(self, origin: PublicKey) -> int:
        head = self.db.head(origin)
        return 0 if head is None else head[0]

    def vector(self) -> dict[PublicKey, tuple[int, bytes]]:
        return self.db.version_vector()

    def connected_to(self, other: Node) -> bool:
        return self.running and other.key in self.repl.connected()


class Federation:
    """N nodes that all trust each other as authors; ``edges`` say who dials whom."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        root: Path,
        n: int,
        *,
        topology: str | Sequence[tuple[int, int]] = "full",
        params: GossipParams = FAST_GOSSIP,
        transport: TransportParams = FAST_TRANSPORT,
        seed: bytes = b"entraide-test",
        names: Sequence[str] | None = None,
    ) -> AsyncIterator[Federation]:
        """Start ``n`` nodes under ``root``; stop them all on exit.

        ``topology``: ``"full"`` (everyone dials everyone), ``"line"`` (i dials i±1), or
        explicit index pairs (both ends get the other's URL). Every node trusts every
        other node as an author either way.
        """
        names = list(names or [f"N{i}" for i in range(n)])
        nodes = [Node(names[i], Identity(hashlib.blake2b(seed + bytes([i]),
                                                         digest_size=32).digest()),
                      root / names[i], params=params, transport=transport) for i in range(n)]
        for node in nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            await node.listen()
        if topology == "full":
            edges = {(i, j) for i in range(n) for j in range(n) if i != j}
        elif topology == "line":
            edges = {(i, i + 1) for i in range(n - 1)}
        else:
            edges = set(topology)  # type: ignore[arg-type]
        fed = cls(nodes)
        fed.edges = {frozenset(e) for e in edges}
        for i, node in enumerate(nodes):
            node.set_trust(fed.trust_for(i))
        try:
            for node in nodes:
                await node.start()
            yield fed
        finally:
            for node in nodes:
                await node.stop()

    edges: set[frozenset[int]]

    def trust_for(self, i: int, *, without: Iterable[int] = ()) -> list[TrustedPeer]:
        """Node ``i``'s trust list: every other node, with a URL for its neighbours."""
        skip = set(without)
        return [TrustedPeer(other.name, other.key,
                            other.url if frozenset((i, j)) in self.edges else None)
                for j, other in enumerate(self.nodes) if j != i and j not in skip]

    def converged(self, nodes: Iterable[Node] | None = None) -> bool:
        """All the given running nodes hold the same version vector."""
        vectors = [node.vector() for node in (nodes or self.nodes) if node.running]
        return all(v == vectors[0] for v in vectors[1:])

    async def wait_for(self, condition: Callable[[], Any], *, timeout: float = 30.0,
                       what: str = "condition") -> None:
        await wait_for(condition, timeout=timeout, what=what)

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Every edge between running nodes has a live session at both ends."""
        def ok() -> bool:
            for edge in self.edges:
                i, j = sorted(edge)
                a, b = self.nodes[i], self.nodes[j]
                if a.running and b.running and not (a.connected_to(b) and b.connected_to(a)):
                    return False
            return True
        await wait_for(ok, timeout=timeout, what="every edge connected")
