"""The peer transport's tunables, and the gossip engine's read from the node's config.

:class:`TransportParams` are the agent's (sockets, timeouts, the ingest pipeline's
caps, the verify pool's size); :func:`gossip_params` maps the ``[gossip]`` table of
``entraide.toml`` onto :class:`protocol.gossip.GossipParams`, the engine's. Both are
plain values: nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from protocol.gossip import GossipParams
from protocol.session import MAX_FRAME_BYTES

__all__ = ["TransportParams", "gossip_params"]


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
    max_handshaking_per_address: int = 8
    """Of those, from one source address: a looping anonymous client takes its
    address's slots, not the trusted peers' (``[peer] handshakes_per_address``)."""
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
    ("reorder_peer_bytes", "reorder_peer_bytes", None),
)


def gossip_params(value: object | None) -> GossipParams:
    """Engine parameters from a ``GossipParams``, a ``NodeConfig.gossip`` table, or None.

    Config names map as: ``lazy_delay_ms`` and ``anti_entropy_interval_ms`` → seconds,
    ``max_batch_entries`` → ``want_batch`` and ``serve_batch``, ``max_pending_per_peer``
    → ``reorder_limit``, ``max_send_queue`` → ``control_queue``, ``beacon_interval_ms`` and
    ``ihave_timeout_ms`` → seconds, ``reorder_peer_bytes`` as is. Others keep the engine
    defaults.
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
