"""The views of a node's state: the JSON the API and the CLI show (status, peers, forks,
the names put on observations) and the node's own metric families.

Each view is a plain dict of JSON values built from the node's public state; times are
RFC 3339 strings (``agent.storage.queries.format_ms``), keys their text form. A broken
replicator never breaks a view: its peer state then reads as not connected.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.config.settings import PeerEntry, TrustList
from agent.errors import NodeStoppingError
from agent.metrics import MetricFamily
from agent.node.replication import PeerState, PeerStatus, Replication
from agent.storage.ledger import ForkRecord, LedgerCounts
from agent.storage.queries import format_ms
from protocol.keys import PublicKey, b64url_encode

if TYPE_CHECKING:
    from agent.node.node import Node

__all__ = [
    "decorate",
    "fork_json",
    "ledger_families",
    "peer_json",
    "peer_state",
    "status",
    "trust_families",
]

log = logging.getLogger(__name__)


def peer_state(replication: Replication, key: PublicKey) -> PeerState:
    """``replication.peer_status(key)``, or a not-connected status if it fails (logged)."""
    try:
        return replication.peer_status(key)
    except Exception:
        log.exception("replication peer_status failed")
        return PeerStatus()


def peer_json(node: Node, peer: PeerEntry) -> dict[str, Any]:
    """A trust-list entry with its fingerprint and replication state."""
    state = peer_state(node.replication, peer.key)
    try:
        forked = node.ledger.is_forked(peer.key)
    except NodeStoppingError:  # no ledger yet: nothing can be forked
        forked = False
    return {
        "name": peer.name,
        "jurisdiction": peer.jurisdiction,
        "key": peer.key.text,
        "fingerprint": peer.key.fingerprint,
        "url": peer.url,
        "connected": state.connected,
        "last_seen": None if state.last_seen_ms is None else format_ms(state.last_seen_ms),
        "forked": forked,
        # From its last known heads (docs/protocol.md §8, "Lag"); None: never heard.
        "lag_entries": state.lag_entries,
        "behind_entries": state.behind_entries,
        # Earlier keys (a rotation it announced, or declared compromised), and since
        # which seq its current key is compromised (agent/node/keys.py).
        "retired_keys": [{"key": r.key.text, "fingerprint": r.key.fingerprint,
                          "last_seq": r.last_seq, "reason": r.reason} for r in peer.retired],
        "compromised_since_seq": peer.compromised_since_seq,
        "quarantined": node.keys.held_quarantined(peer),
    }


def fork_json(node: Node, record: ForkRecord) -> dict[str, Any]:
    """A fork record as the API shows it; ``proof`` (base64url) verifies alone."""
    return {
        "origin": record.origin.text,
        "origin_name": node.name_of(record.origin),
        "seq": record.seq,
        "detected": format_ms(record.detected_ms),
        "cleared": None if record.cleared_ms is None else format_ms(record.cleared_ms),
        "proof": b64url_encode(record.proof),
    }


def decorate(node: Node, observation: dict[str, Any]) -> dict[str, Any]:
    """Add ``origin_name`` to an observation dict from the ledger (in place), and
    ``quarantined: true`` when its origin's key is trusted only up to an earlier seq
    (declared compromised; agent/node/keys.py)."""
    origin = observation.get("origin", "")
    observation["origin_name"] = node.name_of_text(origin)
    limit = node.keys.limits_by_text().get(origin)
    seq = observation.get("seq")
    if limit is not None and isinstance(seq, int) and seq > limit:
        observation["quarantined"] = True
    return observation


async def status(node: Node) -> dict[str, Any]:
    """Name, key, fingerprint, peers (connected, last seen), ledger counts, forks.

    Raises:
        NodeStoppingError: the node is not started.
    """
    counts: LedgerCounts = node.ledger.counts()
    forks = await node.ledger.forks()
    return {
        "name": node.name,
        "jurisdiction": node.config.jurisdiction,
        "key": node.public_key.text,
        "fingerprint": node.public_key.fingerprint,
        "peer_url": node.config.peer_url,
        "peers": node.peers(),
        "trust_file": {"valid": node.members.file_error is None,
                       "error": node.members.file_error},
        "ledger": {
            "entries": counts.entries,
            "origins": counts.origins,
            "forked_origins": counts.forked_origins,
            "held_ahead_of_gaps": counts.held_ahead_of_gaps,
        },
        "forks": [{
            "origin": f.origin.text,
            "origin_name": node.name_of(f.origin),
            "seq": f.seq,
            "detected": format_ms(f.detected_ms),
            "cleared": None if f.cleared_ms is None else format_ms(f.cleared_ms),
        } for f in forks],
        # Restored from a backup and not caught up yet: why it signs nothing.
        "restore": None if node.restore is None else node.restore.status(),
        # A key hand-over signed, waiting for a restart (agent/node/keys.py).
        "key_rotation": node.keys.status(),
    }


def ledger_families(counts: LedgerCounts) -> list[MetricFamily]:
    """The ledger's gauges for ``GET /metrics``."""
    return [
        MetricFamily("entraide_ledger_entries", "Entries in the ledger (all origins).",
                     "gauge", (), {(): counts.entries}),
        MetricFamily("entraide_ledger_origins", "Origins with entries in the ledger.",
                     "gauge", (), {(): counts.origins}),
        MetricFamily("entraide_ledger_forked_origins",
                     "Origins quarantined after a fork.", "gauge", (),
                     {(): counts.forked_origins}),
        MetricFamily("entraide_ledger_held_entries",
                     "Entries waiting ahead of a gap.", "gauge", (),
                     {(): counts.held_ahead_of_gaps}),
    ]


def trust_families(trust: TrustList, replication: Replication,
                   file_error: str | None = None) -> list[MetricFamily]:
    """The trust list's size and, per peer, whether a session is up."""
    connected: dict[tuple[str, ...], float] = {}
    for peer in trust:
        connected[(peer.name,)] = 1.0 if peer_state(replication, peer.key).connected else 0.0
    return [
        MetricFamily("entraide_trust_peers", "Peers in the trust list.",
                     "gauge", (), {(): len(trust)}),
        MetricFamily("entraide_trust_file_valid", "0 while peers.toml on disk is invalid "
                     "(the previous trust list stays in force), else 1.", "gauge", (),
                     {(): 0.0 if file_error else 1.0}),
        MetricFamily("entraide_peer_connected", "1 when a session with the peer is up.",
                     "gauge", ("peer",), connected),
    ]
