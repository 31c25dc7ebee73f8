"""The peer registry: who is trusted, and what the replicator knows about each peer.

The replicator (agent/peering/replicator.py) drives the gossip engine; this module
keeps the books it reads and writes on the way: the current trust list, per-peer state
across sessions (sessions, close reasons, errors, the engine's counters folded in when
a session ends), handshake failures, catch-up progress, and what the status endpoint
and ``GET /metrics`` show. Nothing here does I/O or touches the engine's state: the
engine and the links are read, never driven.

Invariants:
- A peer's state outlives its sessions and its trust-list membership (counters are
  monotonic); it is created the first time the peer is met and renamed when the trust
  list renames it.
- Labels are bounded: metric labels are trust-list names (or fingerprints of peers met
  before removal) times fixed kinds and reasons; rate-limited logging keeps at most
  ``cap`` keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, overload

from agent.metrics import MetricFamily
from agent.peering.dialer import DialTarget
from agent.peering.links import LinkRegistry, PeerLink
from protocol.errors import LocalProtocolError
from protocol.gossip import GossipEngine, PeerStats
from protocol.keys import PublicKey
from protocol.session import CloseReason

__all__ = [
    "CatchUpLog",
    "PeerCounters",
    "PeerRegistry",
    "PeerState",
    "PeerStatus",
    "RateLimitedLog",
    "TrustSource",
    "TrustedPeer",
    "lag",
    "merge_heads",
    "read_trust",
]

log = logging.getLogger("agent.peering.transport")


@dataclass(frozen=True)
class TrustedPeer:
    """One trust-list member as the transport sees it (``url`` None: never dialled)."""

    name: str
    key: PublicKey
    url: str | None = None


TrustSource = Iterable[Any] | Callable[[], Iterable[Any]]
"""A trust list (``TrustList``, ``[PeerEntry]``, ``[TrustedPeer]``, ``[(name, key, url)]``)
or a callable returning one (read again on every check)."""


def read_trust(source: TrustSource) -> dict[PublicKey, TrustedPeer]:
    """The members of ``source`` (called first if callable) by key, in list order.

    Raises:
        KeyFormatError: a key given as text does not parse.
    """
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


@dataclass(frozen=True)
class PeerStatus:
    """What the status endpoint and the metrics show about one trusted peer.

    ``last_seen`` and ``since`` are wall-clock seconds since the epoch (None: never).
    ``lag_entries``: entries this node holds that the peer has not shown it holds;
    ``behind_entries``: entries the peer has shown it holds that this node lacks; both
    from the peer's last known heads (:func:`lag`), None until its whole version
    vector has reached this node once.
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
    lag_entries: int | None = None
    behind_entries: int | None = None

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


@dataclass
class PeerState:
    """Everything kept about one peer across its sessions (the replicator writes
    ``last_seen`` and ``synced`` directly: the read loop's hot path)."""

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
    heads: dict[bytes, int] | None = None
    """The peer's heads when its last session ended (None: never heard whole)."""


def bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    """Add ``n`` to ``counts[key]``."""
    counts[key] = counts.get(key, 0) + n


def merge_heads(*known: dict[bytes, int] | None) -> dict[bytes, int] | None:
    """The highest seq per origin over ``known`` (a peer never loses entries it held);
    None when none is known."""
    out: dict[bytes, int] | None = None
    for heads in known:
        if heads is None:
            continue
        if out is None:
            out = dict(heads)
            continue
        for kid, seq in heads.items():
            if seq > out.get(kid, 0):
                out[kid] = seq
    return out


def lag(ours: dict[bytes, int], theirs: dict[bytes, int]) -> tuple[int, int]:
    """``(lag, behind)`` between our heads and a peer's (origin key id → seq): the
    entries we hold beyond the peer's heads, and those the peer holds beyond ours
    (counted only for origins we replicate: the others we would refuse)."""
    behind_them = sum(seq - theirs.get(kid, 0) for kid, seq in ours.items()
                      if seq > theirs.get(kid, 0))
    behind_us = sum(seq - ours.get(kid, 0) for kid, seq in theirs.items()
                    if kid in ours and seq > ours[kid])
    return behind_them, behind_us


def _fold(past: dict[str, Any], stats: PeerStats) -> None:
    for name in ("frames_in", "frames_out", "bytes_in", "bytes_out"):
        mine = past.setdefault(name, {})
        for kind, n in getattr(stats, name).items():
            bump(mine, kind, n)
    for name in ("entries_in", "entries_out", "duplicates", "dropped", "backpressured",
                 "want_timeouts"):
        past[name] = past.get(name, 0) + getattr(stats, name)


class RateLimitedLog:
    """At most one line per key per ``interval`` seconds, and at most ``cap`` lines per
    interval in all (bounded memory).

    Keys are what the caller can vouch for (a source address and a kind), never text
    a client chose: a flood from many addresses fills the table, and then nothing new
    is logged until entries age out (:attr:`suppressed` counts what was not)."""

    def __init__(self, interval: float, clock: Callable[[], float], cap: int = 256) -> None:
        self._interval, self._clock, self._cap = interval, clock, cap
        self._last: dict[object, float] = {}
        self.suppressed = 0

    def allow(self, key: object) -> bool:
        """True (and remembered) if no line for ``key`` went out within the interval
        and the table has room."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self.suppressed += 1
            return False
        if last is None and len(self._last) >= self._cap:
            self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
            if len(self._last) >= self._cap:
                self.suppressed += 1
                return False
        self._last[key] = now
        return True


class CatchUpLog:
    """Catch-up progress lines (INFO): its start, its rate every ``interval`` seconds,
    its end with the overall rate. ``stored_total`` counts entries stored from peers."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.stored_total = 0
        self._catching_up = False
        self._started = 0.0
        self._stored_at_start = 0
        self._progress_at = 0.0
        self._progress_stored = 0

    def tick(self, backlog: int, now: float) -> None:
        """Log what changed since the last tick, given the engine's ``backlog``."""
        if backlog and not self._catching_up:
            self._catching_up = True
            self._started = now
            self._stored_at_start = self.stored_total
            self._progress_at, self._progress_stored = now, self.stored_total
            log.info("catch-up: %d entries to fetch", backlog)
            return
        if not self._catching_up:
            return
        if not backlog:
            self._catching_up = False
            took = max(now - self._started, 1e-9)
            n = self.stored_total - self._stored_at_start
            log.info("catch-up done: %d entries in %.1fs (%.0f entries/s)", n, took, n / took)
            return
        if now - self._progress_at >= self.interval:
            rate = (self.stored_total - self._progress_stored) / (now - self._progress_at)
            log.info("catch-up: %.0f entries/s, %d remaining", rate, backlog)
            self._progress_at, self._progress_stored = now, self.stored_total


class PeerRegistry:
    """The trust list and the per-peer books; see the module docstring.

    Args:
        trust: the trust list or a callable returning it (:data:`TrustSource`).
        links: the replicator's link registry (read for status and wire counters).
        clock: monotonic seconds (the engine's ``now``).
        wall_clock: seconds since the epoch (for ``since`` and ``last_seen``).
    """

    def __init__(self, trust: TrustSource, links: LinkRegistry, *,
                 clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self.source: TrustSource = trust
        self.trusted: dict[PublicKey, TrustedPeer] = read_trust(trust)
        self._links = links
        self._clock, self._wall = clock, wall_clock
        self._states: dict[PublicKey, PeerState] = {}
        self.handshake_failures: dict[str, int] = {}
        self.refusal_log = RateLimitedLog(60.0, clock)

    # --- trust -----------------------------------------------------------------------

    def is_trusted(self, key: PublicKey) -> bool:
        """Whether ``key`` is in the current trust list (the live check)."""
        return key in self.trusted

    def replace(self, trust: TrustSource | None = None) -> dict[PublicKey, TrustedPeer]:
        """Take a new trust list (None: re-read the current source); returns the peers
        it removed. Known peers take their new names.

        Raises:
            KeyFormatError: the list holds a key that does not parse (the new source
                is kept, the held list is not changed).
        """
        if trust is not None:
            self.source = trust
        new = read_trust(self.source)
        old, self.trusted = self.trusted, new
        for key, peer in new.items():
            if key in self._states:
                self._states[key].name = peer.name
        return {key: old[key] for key in old.keys() - new.keys()}

    def changed(self) -> bool:
        """True when a callable source now returns another list than the one held.

        Raises:
            Exception: whatever the source raises (the caller logs it and retries).
        """
        return callable(self.source) and read_trust(self.source) != self.trusted

    def targets(self) -> list[DialTarget]:
        """The peers to dial: the trusted ones with a URL."""
        return [DialTarget(p.name, p.key, p.url) for p in self.trusted.values()
                if p.url is not None]

    # --- per-peer books --------------------------------------------------------------

    def state(self, key: PublicKey) -> PeerState:
        """The books of ``key``, created (named from the trust list) on first use."""
        state = self._states.get(key)
        if state is None:
            peer = self.trusted.get(key)
            state = self._states[key] = PeerState(peer.name if peer else key.fingerprint)
        return state

    def error(self, key: PublicKey, kind: str) -> None:
        """Count an error (misbehaviour, idle, failed dial) against ``key``."""
        bump(self.state(key).errors, kind)

    def handshake_failed(self, kind: str) -> None:
        """Count a handshake that failed (``refused``, ``protocol``, ``transport``, or
        ``busy``: turned away with 503, no slot free for its address or at all)."""
        bump(self.handshake_failures, kind)

    def fold(self, key: PublicKey, engine: GossipEngine) -> None:
        """Keep the engine's counters of ``key`` before the engine forgets the peer."""
        state = self.state(key)
        try:
            stats = engine.peer_stats(key)
            heads = engine.peer_heads(key)
        except LocalProtocolError:
            return
        _fold(state.past, stats)
        state.heads = merge_heads(state.heads, heads)

    def closed(self, link: PeerLink) -> None:
        """Book an established link that ended: wire counters, close reason, a log line
        (not for the loser of a duplicate session, which is routine)."""
        assert link.peer is not None
        state = self.state(link.peer)
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
        bump(state.closes, theirs or ours or "connection_lost")
        if CloseReason.DUPLICATE_SESSION not in (link.close_reason, link.remote_reason):
            state.last_close = what
            log.info("peer %s disconnected (%s) after %.1fs", link.name, what,
                     self._clock() - link.established_at)

    # --- status and metrics ----------------------------------------------------------

    @overload
    def peer_status(self, engine: GossipEngine | None) -> list[PeerStatus]: ...

    @overload
    def peer_status(self, engine: GossipEngine | None, key: PublicKey) -> PeerStatus: ...

    def peer_status(self, engine: GossipEngine | None, key: PublicKey | None = None
                    ) -> list[PeerStatus] | PeerStatus:
        """One status per trusted peer in trust-list order, or the status of ``key``
        (a not-connected status for a key never seen)."""
        ours = self._our_heads(engine)
        if key is not None:
            peer = self.trusted.get(key)
            state = self._states.get(key)
            name = peer.name if peer else (state.name if state else key.fingerprint)
            return self._status(TrustedPeer(name, key, peer.url if peer else None), engine,
                                ours)
        return [self._status(peer, engine, ours) for peer in self.trusted.values()]

    @staticmethod
    def _our_heads(engine: GossipEngine | None) -> dict[bytes, int] | None:
        if engine is None:
            return None
        return {kid: seq for kid, (seq, _hash) in engine.vector().items()}

    def _status(self, peer: TrustedPeer, engine: GossipEngine | None,
                ours: dict[bytes, int] | None) -> PeerStatus:
        now, wall = self._clock(), self._wall()
        key = peer.key
        state = self._states.get(key)
        link = self._links.active(key)
        eager = rtt = None
        heads = state.heads if state is not None else None
        if link is not None and engine is not None and key in engine.peers:
            eager = engine.is_eager(key)
            rtt = engine.peer_stats(key).rtt
            heads = merge_heads(heads, engine.peer_heads(key))
        lags = lag(ours, heads) if ours is not None and heads is not None else (None, None)
        last_seen = state.last_seen if state is not None else None
        return PeerStatus(
            name=peer.name, key=key, url=peer.url, connected=link is not None,
            direction=link.direction if link is not None else None,
            since=wall - (now - link.established_at) if link is not None else None,
            last_seen=wall - (now - last_seen) if last_seen is not None else None,
            rtt=rtt, eager=eager, synced=bool(state and state.synced and link),
            sessions=state.sessions if state is not None else 0,
            last_close=state.last_close if state is not None else None,
            lag_entries=lags[0], behind_entries=lags[1])

    def counters(self, engine: GossipEngine | None) -> dict[str, PeerCounters]:
        """Per-peer counters (by trust-list name) over all sessions so far."""
        out: dict[str, PeerCounters] = {}
        for key, state in self._states.items():
            past: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v)
                                    for k, v in state.past.items()}
            if engine is not None and key in engine.peers:
                _fold(past, engine.peer_stats(key))
            wire = [state.wire_frames_in, state.wire_frames_out, state.wire_bytes_in,
                    state.wire_bytes_out]
            for link in self._links.all_links():
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

    def metric_families(self, engine: GossipEngine | None) -> list[MetricFamily]:
        """Per-peer Prometheus families and handshake failures (labels bounded by
        peers × kinds); the replicator adds the replication-wide ones."""
        fam: dict[str, MetricFamily] = {}

        def add(name: str, help: str, kind: str, labels: tuple[str, ...],
                values: dict[tuple[str, ...], float]) -> None:
            family = fam.get(name)
            if family is None:
                family = fam[name] = MetricFamily(name, help, kind, labels, {})
            family.samples.update(values)

        for name, c in self.counters(engine).items():
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
        statuses = self.peer_status(engine)
        rtts = {(s.name,): s.rtt for s in statuses if s.rtt is not None}
        add("entraide_peer_rtt_seconds", "Last PING round-trip time.", "gauge", ("peer",),
            {k: float(v) for k, v in rtts.items()})
        add("entraide_peer_lag_entries",
            "Entries this node holds that the peer has not shown it holds (its last known "
            "heads).", "gauge", ("peer",),
            {(s.name,): float(s.lag_entries) for s in statuses if s.lag_entries is not None})
        add("entraide_peer_behind_entries",
            "Entries the peer has shown it holds that this node lacks.", "gauge", ("peer",),
            {(s.name,): float(s.behind_entries) for s in statuses
             if s.behind_entries is not None})
        add("entraide_peer_log_lines_suppressed_total",
            "Refused-handshake log lines not written: the same source address and kind "
            "within a minute, or the rate limiter's table full (a flood).", "counter", (),
            {(): float(self.refusal_log.suppressed)})
        add("entraide_peer_handshake_failures_total",
            "Inbound or outbound handshakes that failed (refused: untrusted or bad signature; "
            "busy: no handshake slot for its address or at all, HTTP 503).",
            "counter", ("reason",),
            {(r,): float(v) for r, v in self.handshake_failures.items()})
        return list(fam.values())
