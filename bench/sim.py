"""A deterministic network simulator for the gossip engine (virtual clock, no I/O).

Each simulated node is a :class:`~protocol.gossip.GossipEngine` plus a thin "agent"
that does what the real agent does with the engine's events: verify entries with the
real :func:`~protocol.entries.verify_entry`, store them in a ledger that enforces
:func:`~protocol.entries.check_successor` and builds fork proofs with
:func:`~protocol.entries.detect_fork`, read entries back for peers' WANTs.

The network delivers whole messages between connected nodes after a delay
(``delay ± jitter``), in order per link unless a message is picked for reordering,
and can lose, duplicate and reorder messages, split the nodes into partitions and
crash nodes (a crashed node keeps its ledger and comes back with a new engine).

Loss: in a deployment a session is a reliable ordered stream, so a lost message
means a dropped connection. ``LinkModel.loss`` drops single messages silently (a
harsher model: nothing tells the engine, only its timeouts, announcements and
anti-entropy repair it); ``LinkModel.session_drop`` instead tears the session down
(both ends see ``remove_peer``) and re-establishes it ``reconnect_delay`` later.

Everything random comes from :class:`~protocol.prng.Prng`: a run replays exactly.

Verification: each node verifies every entry it receives, but a simulated federation
receives the same bytes once per node, so the simulation keeps a per-run cache
(:class:`VerifyCache`, keyed on the entry's bytes): each distinct entry is verified once
for real with :func:`~protocol.entries.verify_entry` (``Simulation.verify.real`` counts
those checks), failures are never cached (tampered bytes are other bytes, checked anew).

Its one home: tests/protocol imports it, and so do the benchmarks (``bench scale``,
``bench propagation``: :func:`run_propagation`); it is test tooling, so not in protocol/,
and bench/ is not installed with the product.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from protocol.entries import (
    TLP,
    ForkProof,
    VerifiedEntry,
    check_successor,
    detect_fork,
    sign_entry,
    verify_entry,
)
from protocol.errors import ChainError, EntraideError, RemoteProtocolError
from protocol.gossip import (
    EntriesReceived,
    EntriesRequested,
    ForkDetected,
    GossipEngine,
    GossipParams,
    PeerMisbehaved,
    PeerStats,
    PeerSynced,
)
from protocol.keys import Identity, PublicKey
from protocol.prng import Prng

__all__ = [
    "Ledger",
    "LinkModel",
    "PropagationResult",
    "SimNode",
    "Simulation",
    "VerifyCache",
    "make_chain",
    "run_propagation",
]

class VerifyCache:
    """``verify_entry`` with a cache of successes, keyed on the entry's bytes: a simulated
    federation verifies the same bytes once per node, and only the first costs a
    signature check. ``real`` counts the real checks, ``hits`` the answers from the
    cache; a failure is not cached (and raises as ``verify_entry`` does)."""

    __slots__ = ("_entries", "hits", "limit", "real")

    def __init__(self, limit: int = 1_000_000) -> None:
        self._entries: dict[bytes, VerifiedEntry] = {}
        self.limit = limit
        self.real = 0
        self.hits = 0

    def __call__(self, raw: bytes) -> VerifiedEntry:
        entry = self._entries.get(raw)
        if entry is not None:
            self.hits += 1
            return entry
        self.real += 1
        entry = verify_entry(raw)
        if len(self._entries) < self.limit:
            self._entries[raw] = entry
        return entry


verify_cached = VerifyCache()
"""One cache for the tests that verify outside a :class:`Simulation`."""


def make_identity(label: str) -> Identity:
    """A fixed identity for a label (tests only)."""
    import hashlib

    return Identity(hashlib.blake2b(label.encode(), digest_size=32).digest())


def make_chain(identity: Identity, count: int, *, start: int = 1, prev: bytes | None = None,
               body_bytes: int = 64, ts: int = 1_700_000_000_000,
               tag: bytes = b"") -> list[VerifiedEntry]:
    """``count`` signed entries continuing ``identity``'s log after ``start - 1``."""
    out = []
    prng = Prng(identity.public_key.raw + start.to_bytes(8, "big") + tag)
    for seq in range(start, start + count):
        body = prng.randbytes(body_bytes)
        entry = sign_entry(identity, seq=seq, prev=prev, now_ms=ts + seq, tlp=TLP.CLEAR,
                           audience=None, body=body)
        out.append(entry)
        prev = entry.hash
    return out


class Ledger:
    """What the agent's SQLite ledger does, in memory: contiguous verified chains."""

    def __init__(self) -> None:
        self.logs: dict[PublicKey, list[VerifiedEntry]] = {}
        self.forks: dict[PublicKey, ForkProof] = {}
        self.cleared: set[tuple[PublicKey, int]] = set()
        """Conflicts an admin cleared: seen again, they quarantine nothing."""

    def heads(self) -> dict[PublicKey, tuple[int, bytes]]:
        return {k: (len(v), v[-1].hash) for k, v in self.logs.items() if v}

    def add(self, entry: VerifiedEntry) -> str | ForkProof:
        """Store ``entry``: "stored", "dup", "gap", "refused" or a new fork proof."""
        if entry.origin in self.forks:
            return "refused"
        log = self.logs.setdefault(entry.origin, [])
        if entry.seq <= len(log):
            held = log[entry.seq - 1]
            if held.hash == entry.hash:
                return "dup"
            if (entry.origin, entry.seq) in self.cleared:
                return "refused"
            proof = detect_fork(held, entry)
            assert proof is not None
            self.forks[entry.origin] = proof
            return proof
        try:
            check_successor((len(log), log[-1].hash) if log else None, entry)
        except ChainError:
            return "gap"
        log.append(entry)
        return "stored"

    def add_proof(self, proof: ForkProof) -> bool:
        """A fork proof from gossip: quarantine its origin unless that conflict was cleared."""
        if (proof.origin, proof.seq) in self.cleared:
            return False
        self.forks.setdefault(proof.origin, proof)
        return True

    def clear_fork(self, origin: PublicKey) -> bool:
        """An admin lifts the quarantine; the conflict is remembered as cleared."""
        proof = self.forks.pop(origin, None)
        if proof is None:
            return False
        self.cleared.add((origin, proof.seq))
        return True

    def read(self, origin: PublicKey, first: int, last: int, max_bytes: int) -> list[bytes]:
        log = self.logs.get(origin, [])
        out: list[bytes] = []
        size = 0
        for entry in log[first - 1:last]:
            if out and size + len(entry.raw) > max_bytes:
                break
            out.append(entry.raw)
            size += len(entry.raw)
        return out

    def content(self) -> dict[PublicKey, tuple[bytes, ...]]:
        """Hashes of every non-forked origin's log: equal ledgers have equal content."""
        return {k: tuple(e.hash for e in v) for k, v in self.logs.items()
                if v and k not in self.forks}


@dataclass
class LinkModel:
    """How the simulated network treats each message."""

    delay: float = 0.025
    jitter: float = 0.1
    """Delay varies uniformly by ± this fraction."""
    loss: float = 0.0
    """Probability a message silently disappears."""
    duplicate: float = 0.0
    """Probability a message is delivered twice."""
    reorder: float = 0.0
    """Probability a message leaves FIFO order (delivered up to ``reorder_delay`` late)."""
    reorder_delay: float = 0.1
    session_drop: float = 0.0
    """Probability a message kills its session instead (reconnected later)."""


@dataclass
class SimNode:
    index: int
    identity: Identity
    ledger: Ledger = field(default_factory=Ledger)
    engine: GossipEngine | None = None
    restarts: int = 0
    stored_at: dict[bytes, float] = field(default_factory=dict)
    timer_token: int = 0
    timer_at: float | None = None
    misbehaved: list[str] = field(default_factory=list)
    synced: int = 0
    saved: list[PeerStats] = field(default_factory=list)

    @property
    def key(self) -> PublicKey:
        return self.identity.public_key

    @property
    def up(self) -> bool:
        return self.engine is not None


class Simulation:
    """Nodes on a random overlay, a virtual clock and a lossy network."""

    def __init__(self, n: int, *, seed: bytes = b"sim", params: GossipParams | None = None,
                 link: LinkModel | None = None, degree: tuple[int, int] = (3, 5),
                 identities: Sequence[Identity] | None = None,
                 reconnect_delay: float = 1.0, detect_delay: float = 0.5) -> None:
        self.rng = Prng(seed)
        self.seed = seed
        self.params = params or GossipParams()
        self.link = link or LinkModel()
        self.reconnect_delay = reconnect_delay
        self.detect_delay = detect_delay
        ids = list(identities) if identities is not None else [
            make_identity(f"{seed!r}/node/{i}") for i in range(n)]
        self.nodes = [SimNode(i, ids[i]) for i in range(n)]
        self.by_key = {node.key: node for node in self.nodes}
        self.edges = self._overlay(n, degree)
        self.neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
        for a, b in self.edges:
            self.neighbours[a].add(b)
            self.neighbours[b].add(a)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.sessions: dict[tuple[int, int], int] = {}  # (a, b) a<b -> generation
        self._generation = itertools.count(1)
        self._fifo: dict[tuple[int, int], float] = {}
        self.group: dict[int, int] = {}
        self.published: dict[bytes, float] = {}
        self.delivered = 0
        self.dropped = 0
        self.verify = VerifyCache()
        """This run's verification cache (``verify.real``: signatures really checked)."""

    # --- topology -----------------------------------------------------------------

    def _overlay(self, n: int, degree: tuple[int, int]) -> list[tuple[int, int]]:
        """A connected random graph: a shuffled ring, then random chords up to a per-node
        degree drawn in ``degree``. Linear in ``n``: a node that reached its degree
        leaves the candidate list at once, and each chord draws two candidates by index
        (no shuffle of the whole list per chord: quadratic at 10,000 nodes)."""
        if n < 2:
            return []
        rng = self.rng
        order = list(range(n))
        rng.shuffle(order)
        edges = {(min(order[i], order[(i + 1) % n]), max(order[i], order[(i + 1) % n]))
                 for i in range(n)}
        deg = [0] * n
        for a, b in edges:
            deg[a] += 1
            deg[b] += 1
        target = [degree[0] + rng.below(degree[1] - degree[0] + 1) for _ in range(n)]
        want = [i for i in range(n) if deg[i] < target[i]]
        where = {i: k for k, i in enumerate(want)}

        def drop(i: int) -> None:
            k = where.pop(i)
            last = want.pop()
            if last != i:
                want[k] = last
                where[last] = k

        for _ in range(20 * n):
            if len(want) < 2:
                break
            x = rng.below(len(want))
            y = rng.below(len(want) - 1)
            a, b = want[x], want[y + (y >= x)]
            edge = (min(a, b), max(a, b))
            if edge in edges:
                continue
            edges.add(edge)
            for z in (a, b):
                deg[z] += 1
                if deg[z] >= target[z]:
                    drop(z)
        return sorted(edges)

    # --- clock --------------------------------------------------------------------

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), fn))

    def run_until(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, fn = heapq.heappop(self._queue)
            self.now = when
            fn()
        self.now = max(self.now, until)

    def run_until_converged(self, limit: float, step: float = 1.0,
                            check: Callable[[], bool] | None = None) -> float:
        """Run until ``check`` (default: all ledgers equal) holds; returns the time."""
        check = check or self.converged
        while self.now < limit:
            self.run_until(self.now + step)
            if check():
                return self.now
        return self.now

    # --- sessions -----------------------------------------------------------------

    def start(self) -> None:
        """Boot every node and connect every edge."""
        for node in self.nodes:
            self._boot(node)
        for a, b in self.edges:
            self._connect(a, b)

    def _boot(self, node: SimNode) -> None:
        seed = self.seed + b"/engine/" + bytes([node.index % 256, node.index // 256,
                                                  node.restarts % 256])
        node.engine = GossipEngine(node.key, self.params, seed=seed, heads=node.ledger.heads(),
                                   forks=node.ledger.forks.values(),
                                   cleared=node.ledger.cleared)

    def _reachable(self, a: int, b: int) -> bool:
        return (self.nodes[a].up and self.nodes[b].up
                and self.group.get(a, 0) == self.group.get(b, 0))

    def _connect(self, a: int, b: int) -> None:
        pair = (min(a, b), max(a, b))
        if pair in self.sessions or not self._reachable(a, b):
            return
        self.sessions[pair] = next(self._generation)
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            assert node.engine is not None
            node.engine.add_peer(self.nodes[y].key, self.now)
        self._pump(self.nodes[a])
        self._pump(self.nodes[b])

    def _disconnect(self, a: int, b: int, *, reconnect: bool) -> None:
        pair = (min(a, b), max(a, b))
        if self.sessions.pop(pair, None) is None:
            return
        for x, y in ((a, b), (b, a)):
            node = self.nodes[x]
            if node.engine is not None:
                node.engine.remove_peer(self.nodes[y].key)
                self._pump(node)
        if reconnect:
            self.at(self.now + self.reconnect_delay, lambda: self._connect(a, b))

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Split the network; sessions across groups drop after ``detect_delay``."""
        for gid, members in enumerate(groups):
            for i in members:
                self.group[i] = gid
        for a, b in list(self.sessions):
            if self.group.get(a, 0) != self.group.get(b, 0):
                self.at(self.now + self.detect_delay,
                        lambda a=a, b=b: self._disconnect(a, b, reconnect=False))

    def heal(self) -> None:
        """Remove every partition; sessions come back after ``reconnect_delay``."""
        self.group.clear()
        for a, b in self.edges:
            self.at(self.now + self.reconnect_delay, lambda a=a, b=b: self._connect(a, b))

    def crash(self, i: int) -> None:
        """Node ``i`` stops (its ledger survives); peers notice after ``detect_delay``."""
        node = self.nodes[i]
        if node.engine is not None:
            node.saved.append(node.engine.totals())
        node.engine = None
        for j in self.neighbours[i]:
            pair = (min(i, j), max(i, j))
            if pair in self.sessions:
                self.at(self.now + self.detect_delay,
                        lambda i=i, j=j: self._disconnect(i, j, reconnect=False))

    def restart(self, i: int) -> None:
        """Node ``i`` comes back with its ledger and a fresh engine, and redials."""
        node = self.nodes[i]
        node.restarts += 1
        for j in self.neighbours[i]:
            self.sessions.pop((min(i, j), max(i, j)), None)
        self._boot(node)
        for j in self.neighbours[i]:
            self.at(self.now + self.reconnect_delay, lambda i=i, j=j: self._connect(i, j))

    # --- the agent --------------------------------------------------------------------

    def publish(self, i: int, entry: VerifiedEntry) -> None:
        """Node ``i``'s agent stores ``entry`` and hands it to its engine."""
        node = self.nodes[i]
        result = node.ledger.add(entry)
        if result != "stored" or node.engine is None:
            return
        self.published.setdefault(entry.hash, self.now)
        node.stored_at.setdefault(entry.hash, self.now)
        node.engine.publish(entry, self.now)
        self._pump(node)

    def clear_fork(self, i: int, origin: PublicKey) -> None:
        """Node ``i``'s admin clears ``origin``'s fork: ledger first, then the engine."""
        node = self.nodes[i]
        node.ledger.clear_fork(origin)
        if node.engine is not None:
            node.engine.clear_fork(origin, node.ledger.heads().get(origin), self.now)
            self._pump(node)

    def _pump(self, node: SimNode) -> None:
        engine = node.engine
        if engine is None:
            return
        while (event := engine.next_event()) is not None:
            if isinstance(event, EntriesReceived):
                self._store(node, engine, event)
            elif isinstance(event, EntriesRequested):
                raws = node.ledger.read(event.origin, event.from_seq, event.to_seq,
                                        event.max_bytes)
                engine.send_entries(event.peer, raws, request=event.request)
            elif isinstance(event, ForkDetected):
                node.ledger.add_proof(event.proof)
            elif isinstance(event, PeerMisbehaved):
                node.misbehaved.append(event.reason)
                peer = self.by_key[event.peer]
                self._disconnect(node.index, peer.index, reconnect=True)
            elif isinstance(event, PeerSynced):
                node.synced += 1
        for peer, data in engine.frames_to_send(self.now):
            self._send(node, self.by_key[peer], data)
        self._arm(node)

    def _store(self, node: SimNode, engine: GossipEngine, event: EntriesReceived) -> None:
        stored: list[VerifiedEntry] = []
        invalid: list[bytes] = []
        forks: list[ForkProof] = []
        dups = 0
        for raw in event.raws:
            try:
                entry = self.verify(raw)
            except EntraideError:
                invalid.append(raw)
                continue
            result = node.ledger.add(entry)
            if result == "stored":
                stored.append(entry)
                node.stored_at.setdefault(entry.hash, self.now)
            elif result == "dup":
                dups += 1
            elif isinstance(result, ForkProof):
                forks.append(result)
        engine.entries_stored(event.batch, stored, self.now, duplicates=dups,
                              invalid=invalid, forks=forks)

    def _arm(self, node: SimNode) -> None:
        assert node.engine is not None
        when = node.engine.get_timer()
        if when is None or (node.timer_at is not None and node.timer_at <= when
                            and node.timer_at >= self.now):
            return
        node.timer_token += 1
        node.timer_at = when
        token, engine = node.timer_token, node.engine

        def fire() -> None:
            if node.engine is not engine or node.timer_token != token:
                return
            node.timer_at = None
            engine.handle_timer(self.now)
            self._pump(node)

        self.at(when, fire)

    # --- the wire ---------------------------------------------------------------------

    def _send(self, src: SimNode, dst: SimNode, data: bytes) -> None:
        pair = (min(src.index, dst.index), max(src.index, dst.index))
        generation = self.sessions.get(pair)
        if generation is None:
            return
        link = self.link
        rng = self.rng
        # A probability of 0 draws nothing: the common lossless run pays one draw (the
        # delay) per message, not four.
        if link.loss or link.session_drop:
            roll = rng.random()
            if roll < link.loss:
                self.dropped += 1
                return
            if roll < link.loss + link.session_drop:
                self.dropped += 1
                a, b = src.index, dst.index
                self.at(self.now + self.detect_delay,
                        lambda: self._disconnect(a, b, reconnect=True))
                return
        copies = 2 if link.duplicate and rng.random() < link.duplicate else 1
        direction = (src.index, dst.index)
        for _ in range(copies):
            when = self.now + link.delay * rng.uniform(1 - link.jitter, 1 + link.jitter)
            if link.reorder and rng.random() < link.reorder:
                when += rng.uniform(0, link.reorder_delay)
            else:
                when = max(when, self._fifo.get(direction, 0.0))
                self._fifo[direction] = when
            self.at(when, lambda g=generation: self._deliver(src, dst, data, g))

    def _deliver(self, src: SimNode, dst: SimNode, data: bytes, generation: int) -> None:
        pair = (min(src.index, dst.index), max(src.index, dst.index))
        if self.sessions.get(pair) != generation or dst.engine is None:
            return
        self.delivered += 1
        try:
            dst.engine.receive(src.key, data, self.now)
        except RemoteProtocolError as exc:
            dst.misbehaved.append(str(exc))
            self._disconnect(dst.index, src.index, reconnect=True)
            return
        self._pump(dst)

    # --- observations -----------------------------------------------------------------

    def converged(self) -> bool:
        """Every live node holds the same entries, and knows the same forked origins."""
        up = [n for n in self.nodes if n.up]
        if not up:
            return True
        first = up[0].ledger.content()
        forks = set(up[0].ledger.forks)
        return all(n.ledger.content() == first and set(n.ledger.forks) == forks for n in up)

    def totals(self) -> list[PeerStats]:
        """Counters of every engine that ran (current and crashed ones)."""
        out = []
        for node in self.nodes:
            out.extend(node.saved)
            if node.engine is not None:
                out.append(node.engine.totals())
        return out

    def traffic(self) -> tuple[int, int, int]:
        """(entry copies received, payload bytes received, all bytes received) so far."""
        copies = payload = total = 0
        for stats in self.totals():
            copies += stats.entries_in
            payload += stats.payload_in
            total += sum(stats.bytes_in.values())
        return copies, payload, total


# --- the benchmark scenario ---------------------------------------------------------


@dataclass(frozen=True)
class PropagationResult:
    """Figures of one propagation run (times in seconds)."""

    nodes: int
    entries: int
    publish_to_all_p50: float
    publish_to_all_p99: float
    publish_to_all_max: float
    delivery_p50: float
    delivery_p99: float
    copies_per_node_per_entry: float
    control_payload_ratio: float
    reached_all: bool
    wall_seconds: float

    def summary(self) -> str:
        return (f"{self.nodes} nodes, {self.entries} entries: publish-to-all "
                f"p50 {self.publish_to_all_p50 * 1000:.0f} ms, "
                f"p99 {self.publish_to_all_p99 * 1000:.0f} ms, "
                f"max {self.publish_to_all_max * 1000:.0f} ms; delivery "
                f"p50 {self.delivery_p50 * 1000:.0f} ms, p99 {self.delivery_p99 * 1000:.0f} ms; "
                f"copies/node/entry {self.copies_per_node_per_entry:.3f}; "
                f"control/payload {self.control_payload_ratio:.3f}; "
                f"all reached: {self.reached_all}; wall {self.wall_seconds:.1f} s")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def plan_entries(sim: Simulation, publishers: Sequence[int], count: int, prng: Prng, *,
                 body_bytes: int, tag: bytes) -> list[tuple[int, VerifiedEntry]]:
    """``count`` entries to publish, each the next of a random publisher's chain."""
    heads: dict[int, tuple[int, bytes | None]] = {}
    plan: list[tuple[int, VerifiedEntry]] = []
    for _ in range(count):
        i = publishers[prng.below(len(publishers))]
        seq, prev = heads.get(i, (0, None))
        entry = make_chain(sim.nodes[i].identity, 1, start=seq + 1, prev=prev,
                           body_bytes=body_bytes, tag=tag)[0]
        heads[i] = (seq + 1, entry.hash)
        plan.append((i, entry))
    return plan


def schedule(sim: Simulation, plan: Sequence[tuple[int, VerifiedEntry]], start: float,
             rate: float, prng: Prng) -> float:
    """Publish ``plan`` from ``start`` on, ``rate`` per second with each gap drawn
    between 0.5 and 1.5 of the mean; returns the instant of the last."""
    t = start
    for i, entry in plan:
        t += prng.uniform(0.5, 1.5) / rate
        sim.at(t, lambda i=i, entry=entry: sim.publish(i, entry))
    return t


def warm_up(sim: Simulation, plan: Sequence[tuple[int, VerifiedEntry]], rate: float,
            prng: Prng) -> None:
    """Start the nodes, let the overlay form (2 s), then publish ``plan`` so that the
    broadcast tree settles, and run 3 s past the last."""
    sim.start()
    sim.run_until(2.0)
    sim.run_until(schedule(sim, plan, sim.now, rate, prng) + 3.0)


def run_propagation(nodes: int = 1000, entries: int = 200, *, delay: float = 0.025,
                    jitter: float = 0.1, entry_bytes: int = 1024, rate: float = 20.0,
                    warmup: int = 20, seed: bytes = b"propagation",
                    params: GossipParams | None = None,
                    link: LinkModel | None = None) -> PropagationResult:
    """The propagation benchmark in the sans-I/O engine.

    ``nodes`` on a random overlay of degree 3-5, links of ``delay ± jitter``; first
    ``warmup`` entries (not measured) let the broadcast tree settle, then ``entries``
    entries of about ``entry_bytes`` are published at random nodes, ``rate`` per
    second. Measures publish-to-all latency per entry, per-delivery latency, payload
    copies received per node per entry and control bytes / payload bytes (all bytes
    of gossip messages received, minus the entry bytes inside them).
    """
    started = time.perf_counter()
    link = link or LinkModel(delay=delay, jitter=jitter)
    sim = Simulation(nodes, seed=seed, params=params, link=link)
    prng = Prng(seed + b"/publish")
    body = max(1, entry_bytes - 180)  # headers + signature: about 180 bytes
    plan = plan_entries(sim, range(nodes), warmup + entries, prng, body_bytes=body,
                        tag=b"bench")
    warm_up(sim, plan[:warmup], rate, prng)
    copies0, payload0, total0 = sim.traffic()
    measured = plan[warmup:]
    sim.run_until(schedule(sim, measured, sim.now, rate, prng) + 5.0)
    copies1, payload1, total1 = sim.traffic()
    to_all: list[float] = []
    each: list[float] = []
    reached = True
    for _, entry in measured:
        t0 = sim.published[entry.hash]
        times = [n.stored_at.get(entry.hash) for n in sim.nodes]
        if any(x is None for x in times):
            reached = False
            continue
        lat = [x - t0 for x in times if x is not None]
        each.extend(lat)
        to_all.append(max(lat))
    n_measured = len(measured)
    copies = (copies1 - copies0) / (nodes * n_measured) if n_measured else 0.0
    payload = payload1 - payload0
    control = (total1 - total0) - payload
    return PropagationResult(
        nodes=nodes, entries=n_measured,
        publish_to_all_p50=_percentile(to_all, 0.5),
        publish_to_all_p99=_percentile(to_all, 0.99),
        publish_to_all_max=max(to_all) if to_all else float("nan"),
        delivery_p50=_percentile(each, 0.5), delivery_p99=_percentile(each, 0.99),
        copies_per_node_per_entry=copies,
        control_payload_ratio=control / payload if payload else float("nan"),
        reached_all=reached, wall_seconds=time.perf_counter() - started)


def mean(values: Iterable[float]) -> float:
    return statistics.fmean(list(values))
