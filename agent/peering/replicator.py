"""The replicator: peer sessions over WebSocket, driving the gossip engine against the ledger.

This is the asyncio adapter of :class:`protocol.gossip.GossipEngine` (aioquic shape,
docs/architecture.md, "Peer transport"): sessions in, engine calls, events out, one
timer. Per connection, one task reads WebSocket frames, opens them with its
:class:`~protocol.session.Session` and feeds the messages to the engine; one writer
task per link pulls the engine's messages for that peer and sends them. Engine events
go to the ledger: received entries are checked by a :class:`~agent.peering.ingest.Verifier`
(the node's :class:`agent.workers.verify.VerifyPool`) and stored in order by the
two-stage pipeline of agent/peering/ingest.py; WANTed ranges are read by small
per-request tasks. One timer, re-armed from ``engine.get_timer()`` after every engine
call, runs the engine's clock. The books (trust list, per-peer status and counters,
metrics) are the :class:`~agent.peering.registry.PeerRegistry`'s.

Invariants:
- Only peers in the current trust list complete a handshake; the list is checked
  again when the handshake completes and whenever it changes: a removed peer's link
  is detached from the engine at once (nothing more it sends is processed) and closed
  with ``REMOVED``.
- At most one link per peer feeds the engine (:class:`agent.peering.links.LinkRegistry`).
- Memory is bounded: entries between the engine and the ledger are capped (entries
  and bytes); over the cap, every reader pauses before reading its next frame, so
  TCP pushes back on the senders. Messages to send stay in the engine's bounded
  per-peer queues until that peer's writer takes them.
- Peer misbehaviour (a frame the session rejects, an undecodable message, an entry
  that fails verification, an oversize frame) ends that link with a reason, a log
  line and a counter; it never propagates out of the replicator.
- :meth:`Replicator.stop` leaves no task behind: links are closed (cleanly, unless
  asked otherwise), and every task the replicator started is cancelled and awaited.
  It closes the verify pool it built, never a verifier it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, overload

from aiohttp import web

from agent.metrics import MetricFamily, Registry
from agent.peering.dialer import Dialer
from agent.peering.ingest import (
    IngestLimits,
    IngestPipeline,
    IngestTimings,
    Report,
    Verifier,
)
from agent.peering.links import LinkRegistry, PeerLink
from agent.peering.params import TransportParams, gossip_params
from agent.peering.registry import (
    CatchUpLog,
    PeerCounters,
    PeerRegistry,
    PeerStatus,
    TrustedPeer,
    TrustSource,
)
from agent.peering.sessions import PeerSessions
from agent.workers.verify import VerifyPool
from protocol.entries import ForkProof, VerifiedEntry, decode_fork_proof, verify_entry
from protocol.errors import EntraideError, LocalProtocolError
from protocol.gossip import (
    EntriesReceived,
    EntriesRequested,
    ForkDetected,
    GossipEngine,
    GossipEvent,
    PeerMisbehaved,
    PeerSynced,
)
from protocol.keys import Identity, PublicKey
from protocol.session import CloseReason

__all__ = [  # the value types are re-exported: their home is params.py and registry.py
    "PeerCounters",
    "PeerStatus",
    "Replicator",
    "TransportParams",
    "TrustSource",
    "TrustedPeer",
    "gossip_params",
]

log = logging.getLogger("agent.peering.transport")


class _LedgerLike(Protocol):
    """The part of :class:`agent.storage.ledger.Ledger` the replicator uses."""

    def version_vector(self) -> dict[PublicKey, tuple[int, bytes]]: ...
    async def forks(self) -> list[Any]: ...
    async def ingest(self, entries: list[VerifiedEntry], *,
                     records: dict[bytes, Any] | None = ...) -> Any: ...
    async def ingest_fork_proof(self, proof: ForkProof) -> bool: ...
    def read_range(self, origin: PublicKey, from_seq: int, to_seq: int, *,
                   max_entries: int = ..., max_bytes: int = ...) -> Any: ...
    def drop_held(self, origin: PublicKey) -> int: ...


class Replicator:
    """Replicates the ledger with the trusted peers.

    Args:
        identity: this node's key pair.
        trust: the trust list, or a callable returning the current one (see
            :data:`TrustSource`); change it later with :meth:`update_trust`.
        ledger: the node's open :class:`agent.storage.ledger.Ledger`.
        params: engine tunables: ``GossipParams``, ``NodeConfig.gossip`` or None.
        transport: transport tunables (defaults if None).
        verifier: checks received entries (its owner starts and closes it). None: the
            replicator builds a :class:`VerifyPool` from ``transport`` at :meth:`start`
            and closes it at :meth:`stop`.
        clock: monotonic seconds (the engine's ``now``).
        wall_clock: seconds since the epoch (for ``last_seen`` in status).
        randbytes: randomness (engine seed, ephemeral keys, backoff jitter).
        metrics: where the ingest's stage times go (``entraide_ingest_seconds``,
            agent/peering/ingest.py); None: not measured.

    Use: ``await start()``, serve :meth:`peer_app` on the peer listener, call
    :meth:`publish` after each local append, ``await stop()`` at the end.
    """

    def __init__(
        self,
        identity: Identity,
        trust: TrustSource,
        ledger: _LedgerLike,
        params: object | None = None,
        *,
        transport: TransportParams | None = None,
        verifier: Verifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
        metrics: Registry | None = None,
    ) -> None:
        self.identity = identity
        self._timings = IngestTimings(metrics) if metrics is not None else None
        self.ledger = ledger
        self.params = gossip_params(params)
        self.transport = transport or TransportParams()
        self._clock = clock
        self._randbytes = randbytes
        self._registry = LinkRegistry()
        self.peers = PeerRegistry(trust, self._registry, clock=clock, wall_clock=wall_clock)
        self.sessions = PeerSessions(
            identity, self.transport, self.peers, self._registry, attach=self._attach,
            detach=self._engine_remove, receive=self._receive,
            room=lambda: self._pipeline.room if self._pipeline is not None else None,
            clock=clock, randbytes=randbytes)
        self._engine: GossipEngine | None = None
        self._dialer: Dialer | None = None
        self._given_verifier = verifier
        self._verifier: Verifier | None = verifier
        self._own_pool: VerifyPool | None = None  # built at start when none was given
        self._running = False
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # Ingest pipeline: engine → check (worker process or thread) → ledger, in order.
        self._pipeline: IngestPipeline | None = None
        self._progress = CatchUpLog(self.transport.progress_interval)
        self._publish_backlog: list[VerifiedEntry] = []

    # --- trust -----------------------------------------------------------------------

    def is_trusted(self, key: PublicKey) -> bool:
        """Whether ``key`` is in the current trust list (the live check)."""
        return self.peers.is_trusted(key)

    def update_trust(self, trust: TrustSource | None = None) -> None:
        """Apply a new trust list now (None: re-read the current source).

        Removed peers are detached from the engine at once and their links closed
        with ``REMOVED``; their origins' entries are no longer replicated (the ledger
        refuses them too); new peers with a URL are dialled.
        """
        removed = self.peers.replace(trust)
        new = self.peers.trusted
        for link in self._registry.all_links():
            if link.peer is not None and link.peer not in new:
                self.sessions.cut(link, CloseReason.REMOVED, "removed from the trust list")
        for key, peer in removed.items():
            log.warning("peer %s removed from the trust list: session ended, its entries "
                        "are refused from now on", peer.name)
            with contextlib.suppress(Exception):
                self.ledger.drop_held(key)
        if self._engine is not None:
            self._engine.set_trusted([*new, *self._retired(), self.identity.public_key],
                                     self._clock())
            self._after_engine()
        if self._dialer is not None:
            self._dialer.update(self.peers.targets())

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Build the engine from the ledger's state and start dialling.

        Raises:
            StorageError: the ledger could not be read.
        """
        if self._running:
            return
        forks: list[ForkProof] = []
        cleared: list[tuple[PublicKey, int]] = []
        for record in await self.ledger.forks():
            if record.cleared_ms is not None:
                cleared.append((record.origin, record.seq))
                continue
            with contextlib.suppress(EntraideError):
                forks.append(decode_fork_proof(record.proof))
        self._engine = GossipEngine(
            self.identity.public_key, self.params, seed=self._randbytes(32),
            heads=self.ledger.version_vector(), forks=forks, cleared=cleared,
            trusted=[*self.peers.trusted, *self._retired(), self.identity.public_key])
        t = self.transport
        if self._given_verifier is None:
            self._own_pool = VerifyPool(t.verify_workers, t.verify_processes,
                                        t.verify_process_min, t.verify_process_eager)
            self._own_pool.start()
            self._verifier = self._own_pool
        assert self._verifier is not None
        self._pipeline = IngestPipeline(
            self.ledger, self._verifier, self._on_report,
            IngestLimits(t.ingest_max_entries, t.ingest_max_bytes, t.verify_ahead,
                         t.store_max_entries), timings=self._timings, clock=self._clock)
        self.sessions.open()
        self._running = True
        for coro, name in ((self._pipeline.check_stage(), "check"),
                           (self._pipeline.store_stage(), "store"),
                           (self._housekeeping(), "housekeeping")):
            self._spawn(coro, name=f"replicator-{name}")
        self._dialer = Dialer(
            self.sessions.connect, self._registry.is_connected, self._registry.wait_disconnected,
            initial=self.transport.backoff_initial, cap=self.transport.backoff_max,
            stable_after=self.transport.stable_after, clock=self._clock,
            randbytes=self._randbytes)
        self._dialer.update(self.peers.targets())
        self._arm_timer()

    async def stop(self, *, clean: bool = True) -> None:
        """Close every session and stop every task; idempotent.

        Args:
            clean: send each peer a final frame (``SHUTDOWN``) and wait up to
                ``close_grace`` for it to leave; False drops the TCP connections at
                once, as a crash would (for tests and forced shutdowns).
        """
        if not self._running or self._stopping:
            return
        self._stopping = True
        await self.sessions.end_links(clean=clean)
        if self._dialer is not None:
            await self._dialer.stop()
        await self.sessions.cancel_connections()
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._pipeline is not None:
            self._pipeline.cancel_checks()
        if self._own_pool is not None:  # a verifier we were given is its owner's to close
            await self._own_pool.close()
            self._own_pool = None
            self._verifier = None
        await self.sessions.close()
        self._stopping = False

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # --- the peer listener -----------------------------------------------------------

    def peer_app(self) -> web.Application:
        """The aiohttp application of the peer listener: ``GET /peer/v1`` only."""
        return self.sessions.peer_app()

    async def handle_peer(self, request: web.Request) -> web.StreamResponse:
        """The ``/peer/v1`` WebSocket handler (usable in another app's route table)."""
        return await self.sessions.handle_peer(request)

    # --- driving the engine ------------------------------------------------------------

    def _attach(self, link: PeerLink, peer: PublicKey, now: float) -> None:
        """An admitted link carries ``peer``'s session: the engine gets the peer, the
        link's writer pulls from the engine's queue for it."""
        assert self._engine is not None
        link.pull = lambda budget: self._pull(peer, budget)
        self._engine.add_peer(peer, now)
        self._after_engine()

    def _engine_remove(self, peer: PublicKey) -> None:
        """``peer``'s active link is gone: keep its counters, drop it from the engine."""
        if self._engine is None or peer not in self._engine.peers:
            return
        self.peers.fold(peer, self._engine)
        self._engine.remove_peer(peer)
        self._after_engine()

    def _receive(self, peer: PublicKey, data: bytes, now: float) -> None:
        """One message from ``peer``'s active link."""
        if self._engine is None:
            return
        self._engine.receive(peer, data, now)
        self._after_engine()


    def _pull(self, peer: PublicKey, budget: int) -> list[bytes]:
        """A writer asks for its next messages."""
        if self._engine is None:
            return []
        out = self._engine.data_to_send(peer, self._clock(), budget)
        self._drain_events()  # serving may have asked us to read more entries
        self._arm_timer()
        return out

    def _after_engine(self) -> None:
        """After any engine input: dispatch events, wake writers, re-arm the timer."""
        if self._engine is None:
            return
        self._drain_events()
        for link in self._registry.active_links():
            link.wake()
        self._arm_timer()

    def _drain_events(self) -> None:
        assert self._engine is not None
        while (event := self._engine.next_event()) is not None:
            self._dispatch(event)

    def _dispatch(self, event: GossipEvent) -> None:
        if isinstance(event, EntriesReceived):
            assert self._pipeline is not None
            self._pipeline.add(event)
        elif isinstance(event, EntriesRequested):
            self._spawn(self._serve(event), name="replicator-serve")
        elif isinstance(event, ForkDetected):
            log.warning("fork proof for origin %s (seq %d) received from %s",
                        event.proof.origin.text, event.proof.seq,
                        self.peers.state(event.peer).name)
            self._spawn(self._store_fork(event.proof), name="replicator-fork")
        elif isinstance(event, PeerMisbehaved):
            link = self._registry.active(event.peer)
            if link is not None:
                self.sessions.misbehaved(link, "bad_entries", event.reason)
        elif isinstance(event, PeerSynced):
            self.peers.state(event.peer).synced = True

    def _arm_timer(self) -> None:
        """Re-arm the one timer from ``engine.get_timer()`` (aioquic adapter shape)."""
        if self._engine is None or not self._running:
            return
        when = self._engine.get_timer()
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            delay = max(0.0, when - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._engine is None or not self._running:
            return
        try:
            self._engine.handle_timer(self._clock())
        except Exception:
            log.exception("gossip timer failed")
        self._after_engine()

    # --- ledger side -------------------------------------------------------------------

    def _on_report(self, report: Report) -> None:
        """The pipeline stored (or not) one engine batch: tell the engine."""
        if self._engine is None:
            return
        try:
            self._engine.entries_stored(report.batch, report.stored, self._clock(),
                                        duplicates=report.duplicates, invalid=report.invalid,
                                        forks=report.forks)
        except LocalProtocolError:
            log.exception("engine refused the ledger's report (batch %d)", report.batch)
        self._progress.stored_total += len(report.stored)
        self._after_engine()

    async def _serve(self, event: EntriesRequested) -> None:
        """Read a WANTed range from the ledger and hand it to the engine."""
        raws: list[bytes] = []
        count = event.to_seq - event.from_seq + 1
        try:
            ranges = self.ledger.read_range(event.origin, event.from_seq, event.to_seq,
                                            max_entries=max(1, min(count, 1024)),
                                            max_bytes=event.max_bytes)
            async with contextlib.aclosing(ranges) as chunks:
                async for chunk in chunks:
                    raws = list(chunk)
                    break
        except EntraideError as exc:
            log.error("reading entries for %s failed: %s", self.peers.state(event.peer).name, exc)
        if self._engine is not None:
            self._engine.send_entries(event.peer, raws, request=event.request)
            self._after_engine()

    async def _store_fork(self, proof: ForkProof) -> None:
        try:
            await self.ledger.ingest_fork_proof(proof)
        except EntraideError as exc:
            log.error("storing a fork proof failed: %s", exc)

    async def clear_fork(self, origin: PublicKey) -> None:
        """An admin cleared ``origin``'s fork in the ledger: the engine replicates it
        again from the ledger's head, and ignores the cleared conflicts if peers that
        have not cleared them gossip them again. A no-op before :meth:`start`.

        Raises:
            StorageError: the ledger could not be read.
        """
        if self._engine is None or not self._running:
            return
        seqs = [r.seq for r in await self.ledger.forks()
                if r.origin == origin and r.cleared_ms is not None]
        if self._engine is None:
            return
        # Read the head after the await: it is the ledger's state as the engine resumes.
        head = self.ledger.version_vector().get(origin)
        self._engine.clear_fork(origin, head, self._clock(), seqs=seqs)
        self._after_engine()

    def publish(self, entries: Iterable[VerifiedEntry]) -> None:
        """Gossip entries this node just appended to its ledger (durably committed).

        Synchronous (the node calls it from its commit callback). Entries are taken in
        seq order; if an earlier append has not been published yet, the entries in
        between are read back from the ledger first (in a task), so the engine always
        sees this node's log in order.
        """
        if self._engine is None or not self._running:
            return
        ordered = sorted(entries, key=lambda e: e.seq)
        if self._publish_backlog:
            self._publish_backlog.extend(ordered)
            return
        taken = self._engine.publish_many(ordered, self._clock())
        if taken < len(ordered):
            self._publish_backlog.extend(ordered[taken:])
            self._spawn(self._publish_gap(), name="replicator-publish")
        self._after_engine()

    async def _publish_gap(self) -> None:
        """Feed the engine the own entries it has not seen, read back from the ledger."""
        assert self._engine is not None
        me = self.identity.public_key
        try:
            while self._publish_backlog:
                head = self._engine.vector().get(me.key_id, (0, b""))[0]
                target = max(e.seq for e in self._publish_backlog)
                async with contextlib.aclosing(
                        self.ledger.read_range(me, head + 1, target)) as chunks:
                    async for chunk in chunks:
                        for raw in chunk:
                            self._engine.publish(verify_entry(raw), self._clock())
                self._publish_backlog = [e for e in self._publish_backlog
                                         if e.seq > self._engine.vector().get(
                                             me.key_id, (0, b""))[0]]
                if self._publish_backlog:
                    # The ledger does not hold them (yet): anti-entropy will carry them.
                    log.warning("own entries %d..%d not found in the ledger to publish",
                                self._publish_backlog[0].seq, target)
                    self._publish_backlog = []
        except (EntraideError, LocalProtocolError) as exc:
            log.error("publishing own entries failed (anti-entropy will carry them): %s", exc)
            self._publish_backlog = []
        self._after_engine()

    async def _housekeeping(self) -> None:
        """Re-read a callable trust source; log catch-up progress."""
        while True:
            await asyncio.sleep(self.transport.trust_poll)
            try:
                changed = self.peers.changed()
            except Exception:
                log.exception("reading the trust list failed")
            else:
                if changed:
                    self.update_trust()
            if self._engine is not None:
                self._progress.tick(self._engine.backlog(), self._clock())

    # --- inspection --------------------------------------------------------------------

    @property
    def engine(self) -> GossipEngine | None:
        return self._engine

    @property
    def verifier(self) -> Verifier | None:
        """What checks received entries: the one given, or the pool built at
        :meth:`start` (None before it, and after :meth:`stop` closed it)."""
        return self._verifier

    @property
    def stored_total(self) -> int:
        """Entries received from peers and stored since the replicator was built."""
        return self._progress.stored_total

    @property
    def handshake_failures(self) -> dict[str, int]:
        """Handshakes that failed, by kind (``refused``, ``protocol``, ``transport``)."""
        return self.peers.handshake_failures

    def backlog(self) -> int:
        """Entries known to exist that the ledger does not hold yet."""
        return self._engine.backlog() if self._engine is not None else 0

    def _retired(self) -> list[PublicKey]:
        """Members' retired keys (a key rotation): their chains are still replicated,
        as far as the ledger trusts them (agent/config/trust.py, ``RetiredKey``)."""
        source = self.peers.source
        items = source() if callable(source) else source
        return [r.key for item in items for r in getattr(item, "retired", ())]

    def heads_heard(self, origin: PublicKey) -> dict[PublicKey, int]:
        """Per connected peer whose whole version vector reached us this session, the
        seq of ``origin`` it holds (``GossipEngine.heads_heard``)."""
        return self._engine.heads_heard(origin) if self._engine is not None else {}

    def connected(self) -> list[PublicKey]:
        """Keys of the peers with a live, attached session."""
        return [link.peer for link in self._registry.active_links() if link.peer is not None]

    def links(self) -> list[PeerLink]:
        """Every link, in handshake or established (for tests and diagnostics)."""
        return self._registry.all_links()

    @overload
    def peer_status(self) -> list[PeerStatus]: ...

    @overload
    def peer_status(self, key: PublicKey) -> PeerStatus: ...

    def peer_status(self, key: PublicKey | None = None) -> list[PeerStatus] | PeerStatus:
        """One status per trusted peer in trust-list order, or the status of ``key``
        (a not-connected status for a key never seen)."""
        if key is None:
            return self.peers.peer_status(self._engine)
        return self.peers.peer_status(self._engine, key)

    @property
    def counters(self) -> dict[str, PeerCounters]:
        """Per-peer counters (by trust-list name) over all sessions so far."""
        return self.peers.counters(self._engine)

    def metric_families(self) -> list[MetricFamily]:
        """Prometheus families for ``GET /metrics``: the registry's per-peer ones, then
        replication's backlog, stored and pending entries."""
        pending = self._pipeline.pending_entries if self._pipeline is not None else 0
        return [*self.peers.metric_families(self._engine), *(
            MetricFamily(name, help, kind, (), {(): float(value)}) for name, help, kind, value in (
                ("entraide_replication_backlog_entries",
                 "Entries known to exist that the ledger does not hold yet (catch-up).",
                 "gauge", self.backlog()),
                ("entraide_replication_stored_entries_total",
                 "Entries received from peers and stored.", "counter", self.stored_total),
                ("entraide_replication_pending_entries",
                 "Entries between the engine and the ledger (verify/store pipeline).",
                 "gauge", pending)))]
