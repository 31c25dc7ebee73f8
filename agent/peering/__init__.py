"""Replication with the trusted peers: the gossip engine's asyncio adapter and its parts.

:class:`Replicator` drives :class:`protocol.gossip.GossipEngine` against the ledger:
peer sessions come in through :mod:`~agent.peering.sessions` (WebSocket links of
:mod:`~agent.peering.links`, dialled by :mod:`~agent.peering.dialer`), received entries
are checked by a :class:`Verifier` and stored in order by
:mod:`~agent.peering.ingest`, and the books (trust list, per-peer status, counters,
metrics) are kept by :mod:`~agent.peering.registry`. The package sits above storage and
the workers and below the node: it never imports :mod:`agent.node` at run time.
"""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.peering.dialer import PEER_PATH, Backoff, DialTarget, peer_endpoint
    from agent.peering.ingest import IngestLimits, IngestPipeline, Report, Verifier
    from agent.peering.links import IdleTimeout, PeerLink, TransportClosed
    from agent.peering.params import TransportParams, gossip_params
    from agent.peering.registry import PeerCounters, PeerRegistry, PeerStatus, TrustedPeer
    from agent.peering.replicator import Replicator
    from agent.peering.sessions import PeerSessions
    from agent.peering.transport import replication_factory, start_peer_listener

__all__ = [
    "PEER_PATH",
    "Backoff",
    "DialTarget",
    "IdleTimeout",
    "IngestLimits",
    "IngestPipeline",
    "PeerCounters",
    "PeerLink",
    "PeerRegistry",
    "PeerSessions",
    "PeerStatus",
    "Replicator",
    "Report",
    "TransportClosed",
    "TransportParams",
    "TrustedPeer",
    "Verifier",
    "gossip_params",
    "peer_endpoint",
    "replication_factory",
    "start_peer_listener",
]

__getattr__ = lazy_exports(__name__, __file__)
