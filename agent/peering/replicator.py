"""The replicator: peer sessions over WebSocket, driving the gossip engine against the ledger.

This is the asyncio adapter of :class:`protocol.gossip.GossipEngine` (aioquic shape,
docs/parts/transport.md). Per connection, one task reads WebSocket frames, opens them
with its :class:`~protocol.session.Session` and feeds the messages to the engine; one
writer task per link pulls the engine's messages for that peer and sends them. Engine
events go to the ledger: received entries are checked (by a worker process for large
batches, agent/workers/verify.py) and stored in order by the two-stage pipeline of
agent/peering/ingest.py; WANTed ranges are read by small per-request tasks. One
timer, re-armed from ``engine.get_timer()`` after every engine call, runs the engine's
clock.

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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import aiohttp
from aiohttp import web

from agent.metrics import MetricFamily
from agent.peering.dialer import PEER_PATH, Dialer, DialTarget, peer_endpoint
from agent.peering.ingest import IngestLimits, IngestPipeline, Report
from agent.peering.links import (
    IdleTimeout,
    LinkRegistry,
    PeerLink,
    TransportClosed,
    receive_frame,
    run_handshake,
)
from agent.workers.pipe import usable_cores
from agent.workers.verify import VerifyWorker
from protocol.entries import ForkProof, VerifiedEntry, decode_fork_proof, verify_entry
from protocol.errors import (
    EntraideError,
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocol.gossip import (
    EntriesReceived,
    EntriesRequested,
    ForkDetected,
    GossipEngine,
    GossipEvent,
    GossipParams,
    PeerMisbehaved,
    PeerStats,
    PeerSynced,
)
from protocol.keys import Identity, PublicKey
from protocol.session import (
    MAX_FRAME_BYTES,
    CloseReason,
    MessageReceived,
    Session,
    SessionClosed,
)

__all__ = [
    "PeerCounters",
    "PeerStatus",
    "Replicator",
    "TransportParams",
    "TrustedPeer",
    "gossip_params",
]

log = logging.getLogger("agent.peering.transport")


# --- parameters and value types -----------------------------------------------------


@dataclass(frozen=True)
class TransportParams:
    """Transport tunables (seconds, bytes, counts). Defaults suit a WAN federation."""

    handshake_timeout: float = 5.0
    """Connect plus the three handshake messages must finish within this."""
    heartbeat: float = 15.0
    """WebSocket ping interval; a peer that does not pong within half of it is dropped."""
    idle_timeout: float = 60.0
    """A link on which nothing at all (not even a ping) arrives for this long is closed."""
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 10.0
    """A session that lasted this long resets its dialer's backoff."""
    max_msg_size: int = MAX_FRAME_BYTES
    """Largest WebSocket message accepted (aiohttp ``max_msg_size``)."""
    max_handshaking: int = 64
    """Inbound connections allowed in their handshake at once; more get HTTP 503."""
    close_grace: float = 2.0
    """How long a closing link may take to flush its final frame."""
    ingest_max_entries: int = 8192
    """Entries handed by the engine and not yet stored, before readers pause."""
    ingest_max_bytes: int = 32 << 20
    verify_workers: int = 2
    """Threads verifying small batches, and large ones when no worker process is used."""
    verify_processes: int = 2
    """Worker processes verifying large batches (agent/workers/verify.py), at most one
    per core and none on a one-core host: threads cannot use another core (the GIL).
    0: verify in threads only."""
    verify_process_min: int = 64
    """Smallest batch sent to a worker process (live gossip stays in a thread)."""
    verify_process_eager: bool = False
    """Start the worker processes with the replicator (False: with the first large
    batches, which are verified in a thread while the workers start, ~0.5 s)."""
    verify_ahead: int = 8
    """Batches checked ahead of the one being stored."""
    store_max_entries: int = 2048
    """Most entries per ledger transaction: batches already checked when the previous
    transaction ends are stored together (fewer, larger transactions cost less)."""
    write_budget: int = 256 << 10
    """Bytes a writer takes from the engine per pull."""
    progress_interval: float = 5.0
    """Least time between two catch-up progress lines (INFO)."""
    trust_poll: float = 1.0
    """How often a callable trust source is re-read."""


_CONFIG_TO_PARAMS: tuple[tuple[str, str, float | None], ...] = (
    # (NodeConfig.gossip field, GossipParams field, scale: ms → s, or None to keep ints)
    ("beacon_interval_ms", "beacon_interval", 1e-3),
    ("ihave_timeout_ms", "ihave_timeout", 1e-3),
    ("lazy_delay_ms", "lazy_delay", 1e-3),
    ("anti_entropy_interval_ms", "anti_entropy_interval", 1e-3),
    ("max_batch_entries", "want_batch", None),
    ("max_batch_entries", "serve_batch", None),
    ("max_pending_per_peer", "reorder_limit", None),
    ("max_send_queue", "control_queue", None),
)


def gossip_params(value: object | None) -> GossipParams:
    """Engine parameters from a ``GossipParams``, a ``NodeConfig.gossip`` table, or None.

    Config names map as: ``lazy_delay_ms`` and ``anti_entropy_interval_ms`` → seconds,
    ``max_batch_entries`` → ``want_batch`` and ``serve_batch``, ``max_pending_per_peer``
    → ``reorder_limit``, ``max_send_queue`` → ``control_queue``, ``beacon_interval_ms`` and
    ``ihave_timeout_ms`` → seconds. Others keep the engine defaults.
    """
    if value is None:
        return GossipParams()
    if isinstance(value, GossipParams):
        return value
    known = {f.name for f in dataclasses.fields(GossipParams)}
    kwargs: dict[str, Any] = {}
    for source, target, scale in _CONFIG_TO_PARAMS:
        if target in known and hasattr(value, source):
            raw = getattr(value, source)
            kwargs[target] = raw * scale if scale is not None else raw
    return GossipParams(**kwargs)


@dataclass(frozen=True)
class TrustedPeer:
    """One trust-list member as the transport sees it (``url`` None: never dialled)."""

    name: str
    key: PublicKey
    url: str | None = None


TrustSource = Iterable[Any] | Callable[[], Iterable[Any]]
"""A trust list (``TrustList``, ``[PeerEntry]``, ``[TrustedPeer]``, ``[(name, key, url)]``)
or a callable returning one (read again on every check)."""


@dataclass(frozen=True)
class PeerStatus:
    """What the status endpoint and the metrics show about one trusted peer.

    ``last_seen`` and ``since`` are wall-clock seconds since the epoch (None: never).
    """

    name: str
    key: PublicKey
    url: str | None
    connected: bool
    direction: str | None
    since: float | None
    last_seen: float | None
    rtt: float | None
    eager: bool | None
    synced: bool
    sessions: int
    last_close: str | None

    @property
    def last_seen_ms(self) -> int | None:
        """``last_seen`` in ms since the epoch (the node's PeerStatus shape)."""
        return None if self.last_seen is None else int(self.last_seen * 1000)


@dataclass(frozen=True)
class PeerCounters:
    """Counters of one peer over every session since the replicator started.

    ``frames_*``/``bytes_*`` are gossip messages by kind (plaintext bytes, from the
    engine); ``wire_*`` are WebSocket frames and bytes as sent (ciphertext, handshake
    included). ``errors`` and ``closes`` count by reason.
    """

    name: str
    frames_in: dict[str, int]
    frames_out: dict[str, int]
    bytes_in: dict[str, int]
    bytes_out: dict[str, int]
    wire_frames_in: int
    wire_frames_out: int
    wire_bytes_in: int
    wire_bytes_out: int
    entries_in: int
    entries_out: int
    duplicates: int
    dropped: int
    backpressured: int
    want_timeouts: int
    sessions: int
    errors: dict[str, int]
    closes: dict[str, int]


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


@dataclass
class _PeerState:
    """Everything kept about one peer across its sessions."""

    name: str
    past: dict[str, Any] = field(default_factory=dict)  # folded engine PeerStats
    wire_frames_in: int = 0
    wire_frames_out: int = 0
    wire_bytes_in: int = 0
    wire_bytes_out: int = 0
    sessions: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    last_seen: float | None = None  # monotonic
    synced: bool = False
    last_close: str | None = None


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _fold(past: dict[str, Any], stats: PeerStats) -> None:
    for name in ("frames_in", "frames_out", "bytes_in", "bytes_out"):
        mine = past.setdefault(name, {})
        for kind, n in getattr(stats, name).items():
            _bump(mine, kind, n)
    for name in ("entries_in", "entries_out", "duplicates", "dropped", "backpressured",
                 "want_timeouts"):
        past[name] = past.get(name, 0) + getattr(stats, name)


class _RateLimitedLog:
    """At most one line per key per ``interval`` seconds (bounded memory)."""

    def __init__(self, interval: float, clock: Callable[[], float], cap: int = 256) -> None:
        self._interval, self._clock, self._cap = interval, clock, cap
        self._last: dict[object, float] = {}

    def allow(self, key: object) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) >= self._cap:
            self._last.clear()
        self._last[key] = now
        return True


# --- the replicator -------------------------------------------------------------------


class Replicator:
    """Replicates the ledger with the trusted peers.

    Args:
        identity: this node's key pair.
        trust: the trust list, or a callable returning the current one (see
            :data:`TrustSource`); change it later with :meth:`update_trust`.
        ledger: the node's open :class:`agent.storage.ledger.Ledger`.
        params: engine tunables: ``GossipParams``, ``NodeConfig.gossip`` or None.
        transport: transport tunables (defaults if None).
        clock: monotonic seconds (the engine's ``now``).
        wall_clock: seconds since the epoch (for ``last_seen`` in status).
        randbytes: randomness (engine seed, ephemeral keys, backoff jitter).

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
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.ledger = ledger
        self.params = gossip_params(params)
        self.transport = transport or TransportParams()
        self._clock = clock
        self._wall = wall_clock
        self._randbytes = randbytes
        self._trust_source: TrustSource = trust
        self._trusted: dict[PublicKey, TrustedPeer] = self._read_trust(trust)
        self._registry = LinkRegistry()
        self._states: dict[PublicKey, _PeerState] = {}
        self._engine: GossipEngine | None = None
        self._dialer: Dialer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkers: list[VerifyWorker] = []
        self._running = False
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._handshaking = 0
        self.handshake_failures: dict[str, int] = {}
        # Ingest pipeline: engine → check (worker process or thread) → ledger, in order.
        self._pipeline: IngestPipeline | None = None
        # Catch-up progress.
        self.stored_total = 0
        self._progress_at = 0.0
        self._progress_stored = 0
        self._catching_up = False
        self._catchup_started = 0.0
        self._catchup_stored = 0
        self._refusal_log = _RateLimitedLog(60.0, clock)
        self._publish_backlog: list[VerifiedEntry] = []

    # --- trust -----------------------------------------------------------------------

    @staticmethod
    def _read_trust(source: TrustSource) -> dict[PublicKey, TrustedPeer]:
        items = source() if callable(source) else source
        out: dict[PublicKey, TrustedPeer] = {}
        for item in items:
            if isinstance(item, tuple):
                name, key, url = item
            else:
                name, key, url = item.name, item.key, getattr(item, "url", None)
            if isinstance(key, str):
                key = PublicKey.from_text(key)
            out[key] = TrustedPeer(name, key, url)
        return out

    def is_trusted(self, key: PublicKey) -> bool:
        """Whether ``key`` is in the current trust list (the live check)."""
        return key in self._trusted

    def update_trust(self, trust: TrustSource | None = None) -> None:
        """Apply a new trust list now (None: re-read the current source).

        Removed peers are detached from the engine at once and their links closed
        with ``REMOVED``; their origins' entries are no longer replicated (the ledger
        refuses them too); new peers with a URL are dialled.
        """
        if trust is not None:
            self._trust_source = trust
        new = self._read_trust(self._trust_source)
        old, self._trusted = self._trusted, new
        for link in self._registry.all_links():
            if link.peer is not None and link.peer not in new:
                self._cut(link, CloseReason.REMOVED, "removed from the trust list")
        for key in old.keys() - new.keys():
            log.warning("peer %s removed from the trust list: session ended, its entries "
                        "are refused from now on", old[key].name)
            with contextlib.suppress(Exception):
                self.ledger.drop_held(key)
        for key, peer in new.items():
            if key in self._states:
                self._states[key].name = peer.name
        if self._engine is not None:
            self._engine.set_trusted([*new, self.identity.public_key], self._clock())
            self._after_engine()
        if self._dialer is not None:
            self._dialer.update(self._targets())

    def _targets(self) -> list[DialTarget]:
        return [DialTarget(p.name, p.key, p.url) for p in self._trusted.values()
                if p.url is not None]

    def _state(self, key: PublicKey) -> _PeerState:
        state = self._states.get(key)
        if state is None:
            peer = self._trusted.get(key)
            state = self._states[key] = _PeerState(peer.name if peer else key.fingerprint)
        return state

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
            trusted=[*self._trusted, self.identity.public_key])
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.transport.verify_workers, thread_name_prefix="entraide-verify")
        cores = usable_cores()
        processes = min(self.transport.verify_processes, cores) if cores >= 2 else 0
        self._checkers = [VerifyWorker(self._executor, min_batch=self.transport.verify_process_min,
                                       enabled=processes > 0)
                          for _ in range(max(1, processes))]
        if self.transport.verify_process_eager:
            for checker in self._checkers:
                checker.start()
        t = self.transport
        self._pipeline = IngestPipeline(
            self.ledger, self._checkers, self._on_report,
            IngestLimits(t.ingest_max_entries, t.ingest_max_bytes, t.verify_ahead,
                         t.store_max_entries))
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, connect=self.transport.handshake_timeout))
        self._running = True
        for coro, name in ((self._pipeline.check_stage(), "check"),
                           (self._pipeline.store_stage(), "store"),
                           (self._housekeeping(), "housekeeping")):
            self._spawn(coro, name=f"replicator-{name}")
        self._dialer = Dialer(
            self._connect, self._registry.is_connected, self._registry.wait_disconnected,
            initial=self.transport.backoff_initial, cap=self.transport.backoff_max,
            stable_after=self.transport.stable_after, clock=self._clock,
            randbytes=self._randbytes)
        self._dialer.update(self._targets())
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
        for link in self._registry.all_links():
            if clean and link.peer is not None:
                self._cut(link, CloseReason.SHUTDOWN, "node shutting down")
            else:
                self._detach(link)
                link.abort(CloseReason.SHUTDOWN)
        conns = [t for t in self._conn_tasks if not t.done()]
        if conns:
            await asyncio.wait(conns, timeout=self.transport.close_grace * 2)
        if self._dialer is not None:
            await self._dialer.stop()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.wait(list(self._conn_tasks))
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
        for checker in self._checkers:
            await checker.close()
        if self._http is not None:
            await self._http.close()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
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
        app = web.Application(client_max_size=4096)
        app.router.add_get(PEER_PATH, self.handle_peer)
        return app

    async def handle_peer(self, request: web.Request) -> web.StreamResponse:
        """The ``/peer/v1`` WebSocket handler (usable in another app's route table)."""
        if not self._running or self._stopping:
            raise web.HTTPServiceUnavailable(text="not running\n")
        if self._handshaking >= self.transport.max_handshaking:
            raise web.HTTPServiceUnavailable(text="too many handshakes\n")
        ws = web.WebSocketResponse(
            heartbeat=self.transport.heartbeat, max_msg_size=self.transport.max_msg_size,
            compress=False, autoping=True, timeout=self.transport.close_grace)
        await ws.prepare(request)
        session = Session(self.identity, initiator=False, is_trusted=self.is_trusted,
                          ephemeral_seed=self._randbytes(32))
        link = PeerLink(ws, session, outbound=False, name=f"inbound {request.remote}",
                        pull_budget=self.transport.write_budget)
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            await self._run_link(link, remote=request.remote)
        finally:
            self._conn_tasks.discard(task)
        return ws

    async def _connect(self, target: DialTarget) -> bool:
        """Dial ``target`` once and run the session to its end (the dialer's ConnectFn)."""
        if not self._running or self._stopping or self._http is None:
            return False
        url = peer_endpoint(target.url)
        try:
            async with asyncio.timeout(self.transport.handshake_timeout):
                ws = await self._http.ws_connect(
                    url, heartbeat=self.transport.heartbeat,
                    max_msg_size=self.transport.max_msg_size, autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.transport.close_grace))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("dial %s (%s) failed: %r", target.name, url, exc)
            _bump(self._state(target.key).errors, "connect")
            return False
        expected = target.key
        session = Session(self.identity, initiator=True,
                          is_trusted=lambda k: k == expected and self.is_trusted(k),
                          ephemeral_seed=self._randbytes(32))
        link = PeerLink(ws, session, outbound=True, name=target.name,
                        pull_budget=self.transport.write_budget)
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            return await self._run_link(link, remote=url)
        finally:
            self._conn_tasks.discard(task)

    # --- one link, from handshake to close ---------------------------------------------

    async def _run_link(self, link: PeerLink, *, remote: str | None) -> bool:
        """Handshake, admit, read until the end. True when the handshake completed."""
        link.started_at = self._clock()
        self._registry.add(link)
        try:
            self._handshaking += 1
            try:
                peer = await run_handshake(link.ws, link.session,
                                           self.transport.handshake_timeout)
            except HandshakeError as exc:
                _bump(self.handshake_failures, "refused")
                if self._refusal_log.allow((remote, str(exc))):
                    log.warning("peer connection %s refused at handshake: %s",
                                remote or link.name, exc)
                return False
            except RemoteProtocolError as exc:
                _bump(self.handshake_failures, "protocol")
                log.warning("peer connection %s broke the handshake: %s",
                            remote or link.name, exc)
                return False
            except TransportClosed as exc:
                _bump(self.handshake_failures, "transport")
                log.debug("peer connection %s closed during the handshake: %s",
                          remote or link.name, exc)
                return False
            finally:
                self._handshaking -= 1
            self._established(link, peer)
            if link.close_reason is None:
                await self._read_loop(link)
            return True
        except asyncio.CancelledError:
            if link.close_reason is None:
                link.abort(CloseReason.SHUTDOWN)
            raise
        except Exception:  # a bug must end this link, never the node
            log.exception("%r: unexpected error", link)
            self._cut(link, CloseReason.INTERNAL_ERROR, "internal error")
            return link.peer is not None
        finally:
            self._detach(link)
            self._registry.discard(link)
            await link.finish(self.transport.close_grace)
            if link.peer is not None:
                self._closed(link)

    def _established(self, link: PeerLink, peer: PublicKey) -> None:
        """The handshake is done: re-check trust, resolve duplicates, attach."""
        link.peer = peer
        now = self._clock()
        link.established_at = link.last_seen = now
        trusted = self._trusted.get(peer)
        link.name = trusted.name if trusted is not None else peer.fingerprint
        state = self._state(peer)
        state.last_seen = now
        link.start_writer()  # with no pull yet: it only sends a final frame if asked
        if trusted is None or not self._running or self._stopping:
            link.request_close(CloseReason.REMOVED if trusted is None else CloseReason.SHUTDOWN,
                               "not trusted" if trusted is None else "node shutting down")
            return
        loser = self._registry.admit(link)
        if loser is link:
            link.request_close(CloseReason.DUPLICATE_SESSION, "another session is kept")
            log.info("peer %s: duplicate session (%s) closed, keeping the other one",
                     link.name, link.direction)
            return
        if loser is not None:
            loser.pull = None  # no longer the registry's link for this peer
            self._engine_remove(peer)
            loser.request_close(CloseReason.DUPLICATE_SESSION, "another session is kept")
            log.info("peer %s: duplicate session (%s) closed, keeping the new one",
                     link.name, loser.direction)
        assert self._engine is not None
        key = peer
        link.pull = lambda budget: self._pull(key, budget)
        state.sessions += 1
        state.synced = False
        self._engine.add_peer(peer, now)
        log.info("peer %s connected (%s)", link.name, "dialled" if link.outbound else "accepted")
        self._after_engine()

    def _detach(self, link: PeerLink) -> None:
        """Stop feeding the engine from ``link``; if it was its peer's active link, the
        peer leaves the engine (its WANTs go elsewhere)."""
        link.pull = None
        if link.peer is not None and self._registry.active(link.peer) is link:
            self._registry.discard(link)
            self._engine_remove(link.peer)

    def _engine_remove(self, peer: PublicKey) -> None:
        if self._engine is None or peer not in self._engine.peers:
            return
        with contextlib.suppress(LocalProtocolError):
            _fold(self._state(peer).past, self._engine.peer_stats(peer))
        self._engine.remove_peer(peer)
        self._after_engine()

    def _cut(self, link: PeerLink, reason: CloseReason, message: str) -> None:
        """End ``link`` now: detach it and close it with ``reason``."""
        self._detach(link)
        link.request_close(reason, message)

    def _closed(self, link: PeerLink) -> None:
        assert link.peer is not None
        state = self._state(link.peer)
        state.wire_frames_in += link.stats.frames_in
        state.wire_frames_out += link.stats.frames_out
        state.wire_bytes_in += link.stats.bytes_in
        state.wire_bytes_out += link.stats.bytes_out
        ours = link.close_reason.name.lower() if link.close_reason is not None else None
        theirs = link.remote_reason.name.lower() if link.remote_reason is not None else None
        what = f"by peer: {theirs}" if theirs else f"{ours or 'connection lost'}"
        if link.close_message and not theirs:
            what += f" ({link.close_message})"
        if link.remote_message and theirs:
            what += f" ({link.remote_message})"
        _bump(state.closes, theirs or ours or "connection_lost")
        if CloseReason.DUPLICATE_SESSION not in (link.close_reason, link.remote_reason):
            state.last_close = what
            log.info("peer %s disconnected (%s) after %.1fs", link.name, what,
                     self._clock() - link.established_at)

    async def _read_loop(self, link: PeerLink) -> None:
        """Feed ``link``'s messages to the engine until the link ends. Errors end the
        link with a reason; nothing but CancelledError propagates."""
        assert link.peer is not None and self._engine is not None
        peer, session, ws = link.peer, link.session, link.ws
        state = self._state(peer)
        idle = self.transport.idle_timeout or None
        try:
            while True:
                room = self._pipeline.room if self._pipeline is not None else None
                if room is not None and not room.is_set():
                    await room.wait()  # the ledger is behind: push back on peers
                frame = await receive_frame(ws, idle)
                now = self._clock()
                link.last_seen = state.last_seen = now
                link.stats.frames_in += 1
                link.stats.bytes_in += len(frame)
                for event in session.receive(frame):
                    if isinstance(event, MessageReceived):
                        if self._registry.active(peer) is not link:
                            continue  # detached (duplicate, removed): drop its traffic
                        self._engine.receive(peer, event.data, now)
                        self._after_engine()
                    elif isinstance(event, SessionClosed):
                        link.remote_reason = event.reason
                        link.remote_message = event.message
                        self._detach(link)
                        link.request_close(CloseReason.NORMAL, "closing too")
                        return
        except FrameTooLargeError as exc:
            self._misbehaved(link, "oversize", str(exc))
        except RemoteProtocolError as exc:
            self._misbehaved(link, "protocol", str(exc))
        except IdleTimeout as exc:
            _bump(state.errors, "idle")
            self._cut(link, CloseReason.IDLE_TIMEOUT, str(exc))
        except TransportClosed:
            session.transport_closed()

    def _misbehaved(self, link: PeerLink, kind: str, reason: str) -> None:
        assert link.peer is not None
        _bump(self._state(link.peer).errors, kind)
        log.warning("peer %s misbehaved (%s): %s; disconnecting", link.name, kind, reason)
        self._cut(link, CloseReason.PROTOCOL_ERROR, reason[:200])

    # --- driving the engine ------------------------------------------------------------

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
                        self._state(event.peer).name)
            self._spawn(self._store_fork(event.proof), name="replicator-fork")
        elif isinstance(event, PeerMisbehaved):
            link = self._registry.active(event.peer)
            if link is not None:
                self._misbehaved(link, "bad_entries", event.reason)
        elif isinstance(event, PeerSynced):
            self._state(event.peer).synced = True

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
        self.stored_total += len(report.stored)
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
            log.error("reading entries for %s failed: %s", self._state(event.peer).name, exc)
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
            if callable(self._trust_source):
                try:
                    current = self._read_trust(self._trust_source)
                except Exception:
                    log.exception("reading the trust list failed")
                else:
                    if current.keys() != self._trusted.keys() or current != self._trusted:
                        self.update_trust()
            self._log_progress()

    def _log_progress(self) -> None:
        if self._engine is None:
            return
        now = self._clock()
        backlog = self._engine.backlog()
        if backlog and not self._catching_up:
            self._catching_up = True
            self._catchup_started = now
            self._catchup_stored = self.stored_total
            self._progress_at, self._progress_stored = now, self.stored_total
            log.info("catch-up: %d entries to fetch", backlog)
            return
        if not self._catching_up:
            return
        if not backlog:
            self._catching_up = False
            took = max(now - self._catchup_started, 1e-9)
            n = self.stored_total - self._catchup_stored
            log.info("catch-up done: %d entries in %.1fs (%.0f entries/s)", n, took, n / took)
            return
        if now - self._progress_at >= self.transport.progress_interval:
            rate = (self.stored_total - self._progress_stored) / (now - self._progress_at)
            log.info("catch-up: %.0f entries/s, %d remaining", rate, backlog)
            self._progress_at, self._progress_stored = now, self.stored_total

    # --- inspection --------------------------------------------------------------------

    @property
    def engine(self) -> GossipEngine | None:
        return self._engine

    def backlog(self) -> int:
        """Entries known to exist that the ledger does not hold yet."""
        return self._engine.backlog() if self._engine is not None else 0

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
        if key is not None:
            peer = self._trusted.get(key)
            state = self._states.get(key)
            name = peer.name if peer else (state.name if state else key.fingerprint)
            return self._status(TrustedPeer(name, key, peer.url if peer else None))
        return [self._status(peer) for peer in self._trusted.values()]

    def _status(self, peer: TrustedPeer) -> PeerStatus:
        now, wall = self._clock(), self._wall()
        key = peer.key
        state = self._states.get(key)
        link = self._registry.active(key)
        eager = rtt = None
        if link is not None and self._engine is not None and key in self._engine.peers:
            eager = self._engine.is_eager(key)
            rtt = self._engine.peer_stats(key).rtt
        last_seen = state.last_seen if state is not None else None
        return PeerStatus(
            name=peer.name, key=key, url=peer.url, connected=link is not None,
            direction=link.direction if link is not None else None,
            since=wall - (now - link.established_at) if link is not None else None,
            last_seen=wall - (now - last_seen) if last_seen is not None else None,
            rtt=rtt, eager=eager, synced=bool(state and state.synced and link),
            sessions=state.sessions if state is not None else 0,
            last_close=state.last_close if state is not None else None)

    @property
    def counters(self) -> dict[str, PeerCounters]:
        """Per-peer counters (by trust-list name) over all sessions so far."""
        out: dict[str, PeerCounters] = {}
        for key, state in self._states.items():
            past: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v)
                                    for k, v in state.past.items()}
            if self._engine is not None and key in self._engine.peers:
                _fold(past, self._engine.peer_stats(key))
            wire = [state.wire_frames_in, state.wire_frames_out, state.wire_bytes_in,
                    state.wire_bytes_out]
            for link in self._registry.all_links():
                if link.peer == key:
                    wire = [wire[0] + link.stats.frames_in, wire[1] + link.stats.frames_out,
                            wire[2] + link.stats.bytes_in, wire[3] + link.stats.bytes_out]
            out[state.name] = PeerCounters(
                name=state.name, frames_in=past.get("frames_in", {}),
                frames_out=past.get("frames_out", {}), bytes_in=past.get("bytes_in", {}),
                bytes_out=past.get("bytes_out", {}), wire_frames_in=wire[0],
                wire_frames_out=wire[1], wire_bytes_in=wire[2], wire_bytes_out=wire[3],
                entries_in=past.get("entries_in", 0), entries_out=past.get("entries_out", 0),
                duplicates=past.get("duplicates", 0),
                dropped=past.get("dropped", 0), backpressured=past.get("backpressured", 0),
                want_timeouts=past.get("want_timeouts", 0), sessions=state.sessions,
                errors=dict(state.errors), closes=dict(state.closes))
        return out

    def metric_families(self) -> list[MetricFamily]:
        """Prometheus families for ``GET /metrics`` (labels bounded by peers × kinds)."""
        fam: dict[str, MetricFamily] = {}

        def add(name: str, help: str, kind: str, labels: tuple[str, ...],
                values: dict[tuple[str, ...], float]) -> None:
            family = fam.get(name)
            if family is None:
                family = fam[name] = MetricFamily(name, help, kind, labels, {})
            family.samples.update(values)

        for name, c in self.counters.items():
            for direction, frames, sizes in (("in", c.frames_in, c.bytes_in),
                                             ("out", c.frames_out, c.bytes_out)):
                add("entraide_peer_messages_total", "Gossip messages by peer, direction, kind.",
                    "counter", ("peer", "direction", "kind"),
                    {(name, direction, k): float(v) for k, v in frames.items()})
                add("entraide_peer_message_bytes_total",
                    "Gossip message bytes (plaintext) by peer, direction, kind.", "counter",
                    ("peer", "direction", "kind"),
                    {(name, direction, k): float(v) for k, v in sizes.items()})
            add("entraide_peer_wire_bytes_total", "WebSocket bytes (encrypted) by peer.",
                "counter", ("peer", "direction"),
                {(name, "in"): float(c.wire_bytes_in), (name, "out"): float(c.wire_bytes_out)})
            add("entraide_peer_entries_total", "Entry copies received from / sent to a peer.",
                "counter", ("peer", "direction"),
                {(name, "in"): float(c.entries_in), (name, "out"): float(c.entries_out)})
            add("entraide_peer_duplicate_entries_total",
                "Entry copies received that were already held.", "counter", ("peer",),
                {(name,): float(c.duplicates)})
            add("entraide_peer_sessions_total", "Sessions established with a peer.",
                "counter", ("peer",), {(name,): float(c.sessions)})
            add("entraide_peer_errors_total", "Peer errors and misbehaviour by reason.",
                "counter", ("peer", "reason"),
                {(name, r): float(v) for r, v in c.errors.items()})
            add("entraide_peer_disconnects_total", "Sessions ended, by close reason.",
                "counter", ("peer", "reason"),
                {(name, r): float(v) for r, v in c.closes.items()})
        rtts = {(s.name,): s.rtt for s in self.peer_status() if s.rtt is not None}
        add("entraide_peer_rtt_seconds", "Last PING round-trip time.", "gauge", ("peer",),
            {k: float(v) for k, v in rtts.items()})
        add("entraide_peer_handshake_failures_total",
            "Inbound or outbound handshakes that failed (refused: untrusted or bad signature).",
            "counter", ("reason",),
            {(r,): float(v) for r, v in self.handshake_failures.items()})
        add("entraide_replication_backlog_entries",
            "Entries known to exist that the ledger does not hold yet (catch-up).", "gauge",
            (), {(): float(self.backlog())})
        add("entraide_replication_stored_entries_total",
            "Entries received from peers and stored.", "counter", (),
            {(): float(self.stored_total)})
        add("entraide_replication_pending_entries",
            "Entries between the engine and the ledger (verify/store pipeline).", "gauge",
            (), {(): float(self._pipeline.pending_entries if self._pipeline else 0)})
        return list(fam.values())
