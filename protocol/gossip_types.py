"""Parameters, events and counters of the gossip engine (re-exported by protocol.gossip).

Events are what the engine asks of the agent; the agent drains them with
``GossipEngine.next_event()`` after every call and answers through the engine's
methods (docs/protocol.md §8, "Driving the engine").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protocol.entries import MAX_ENTRY_BYTES, ForkProof
from protocol.keys import PublicKey
from protocol.messages import MAX_MESSAGE_BYTES, MAX_VECTOR

__all__ = [
    "EntriesReceived",
    "EntriesRequested",
    "ForkDetected",
    "GossipEvent",
    "GossipParams",
    "PeerMisbehaved",
    "PeerStats",
    "PeerSynced",
]


@dataclass(frozen=True)
class GossipParams:
    """Tunables of the replication engine; the node config maps onto these.

    Times are seconds, sizes bytes, counts entries unless said otherwise.

    Raises (when built):
        ValueError: a value out of range.
    """

    beacon_interval: float = 5.0
    """The broadcast tree's root announces a new round this often."""
    lazy_delay: float = 0.05
    """How long announcements to a peer are batched before one IHAVE goes out."""
    ihave_timeout: float = 0.3
    """How long an announced entry may be missing before it is requested."""
    graft_max_gap: int = 16
    """Gaps up to this size are live repairs: served first, forwarded eagerly."""
    anti_entropy_interval: float = 10.0
    """Mean time between digest exchanges with one random peer (jittered ±50%)."""
    want_batch: int = 256
    """Largest range in one WANT."""
    want_window: int = 1024
    """Entries requested and not yet received, per peer."""
    want_timeout: float = 5.0
    """A WANT that makes no progress for this long is retried (maybe elsewhere)."""
    reorder_limit: int = 1024
    """Entries beyond an origin's head that may be requested, handed or buffered."""
    reorder_bytes: int = 32 << 20
    """Bytes held in the reorder buffer, over all origins."""
    reorder_peer_bytes: int = 8 << 20
    """Of those, bytes one peer's entries may take, over all origins: one member cannot
    fill the buffer with (unverified) entries ahead of another origin's gaps; what it
    sent is dropped when its session ends."""
    serve_batch: int = 256
    """Entries asked of the agent per EntriesRequested."""
    serve_bytes: int = 512 << 10
    """Byte hint per EntriesRequested."""
    serve_queue: int = 64
    """WANT ranges queued per peer; more are dropped (the peer will retry)."""
    eager_queue_bytes: int = 256 << 10
    """Unsent eager pushes per peer; beyond, the peer gets IHAVE instead (backpressure)."""
    reply_queue_bytes: int = 1 << 20
    """Unsent replies per peer before the engine stops asking the agent for more."""
    control_queue: int = 1024
    """Unsent control messages per peer; beyond, new ones are dropped (and counted)."""
    frame_bytes: int = 256 << 10
    """Target size of an ENTRIES message."""
    ping_interval: float = 30.0
    """Seconds between PINGs to each peer (0 disables)."""
    max_origins: int = 4096
    """Origins tracked (including forked ones); new ones beyond are ignored."""
    recent_window: int = 64
    """Hashes of recently stored entries kept per origin, to drop duplicates in place."""

    def __post_init__(self) -> None:
        positive = ("want_batch", "want_window", "reorder_limit", "reorder_bytes",
                    "reorder_peer_bytes",
                    "serve_batch", "serve_bytes", "serve_queue", "eager_queue_bytes",
                    "reply_queue_bytes", "control_queue", "frame_bytes", "max_origins",
                    "recent_window", "anti_entropy_interval", "want_timeout",
                    "beacon_interval")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"GossipParams.{name} must be positive")
        for name in ("graft_max_gap", "lazy_delay", "ihave_timeout", "ping_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"GossipParams.{name} must not be negative")
        if self.max_origins > MAX_VECTOR:
            raise ValueError(f"GossipParams.max_origins is at most {MAX_VECTOR}")
        if self.frame_bytes > MAX_MESSAGE_BYTES - MAX_ENTRY_BYTES - 64:
            raise ValueError("GossipParams.frame_bytes leaves no room for one more entry")


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class EntriesReceived:
    """Verify and store these entries, in order, then call ``entries_stored(batch, ...)``.

    ``raws`` are unverified. They are in chain order per origin, after the ledger's
    head or pending ahead of it; some may be duplicates of stored entries, or
    conflict with them (fork evidence). ``peer`` sent the first of them (a batch may
    mix entries from several peers, released from the reorder buffer). Handle these
    events one at a time, in order.
    """

    peer: PublicKey
    raws: tuple[bytes, ...]
    batch: int


@dataclass(frozen=True)
class EntriesRequested:
    """Read ``origin``'s entries ``from_seq``..``to_seq`` from the ledger, stopping after
    about ``max_bytes`` (at least one), and pass them to
    ``send_entries(peer, raws, request=request)``: a run starting at ``from_seq``."""

    peer: PublicKey
    origin: PublicKey
    from_seq: int
    to_seq: int
    max_bytes: int
    request: int


@dataclass(frozen=True)
class ForkDetected:
    """A peer sent a valid fork proof for an origin not yet known as forked: record it."""

    proof: ForkProof
    peer: PublicKey


@dataclass(frozen=True)
class PeerMisbehaved:
    """The peer broke the protocol in a way found after ``receive`` returned (it sent
    entries that fail verification): end its session."""

    peer: PublicKey
    reason: str


@dataclass(frozen=True)
class PeerSynced:
    """Our version vector and the peer's have the same digest: nothing to exchange."""

    peer: PublicKey


GossipEvent = EntriesReceived | EntriesRequested | ForkDetected | PeerMisbehaved | PeerSynced


# --- counters ------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerStats:
    """A snapshot of one peer's counters (or the totals over all peers ever added).

    ``frames_*``/``bytes_*`` map message kind names (``"HAVE"``, ``"ENTRIES"``, ...)
    to counts. ``entries_in`` counts every entry copy received and ``duplicates`` the
    copies already held; ``payload_*`` are the entry bytes inside ENTRIES messages, so
    ``sum(bytes_in.values()) - payload_in`` is the protocol's control overhead.
    ``dropped`` counts entries and requests refused for lack of room or trust;
    ``backpressured`` the pushes turned into announcements because the peer was slow.
    """

    frames_in: Mapping[str, int]
    frames_out: Mapping[str, int]
    bytes_in: Mapping[str, int]
    bytes_out: Mapping[str, int]
    entries_in: int
    entries_out: int
    payload_in: int
    payload_out: int
    duplicates: int
    dropped: int
    backpressured: int
    want_timeouts: int
    rtt: float | None
