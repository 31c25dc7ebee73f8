"""What the node needs from replication, and the replication of a node without peers.

The node talks to its replicator (agent/peering/replicator.py's ``Replicator``) only
through :class:`Replication`; the node's package never imports the peering package
(peering sits below the node in the layering: docs/architecture.md). A replicator is
built from the started node by a ``ReplicationFactory`` (agent/node/node.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agent.config.settings import TrustList
from agent.metrics import MetricFamily
from protocol.entries import VerifiedEntry
from protocol.keys import PublicKey

__all__ = ["NullReplication", "PeerState", "PeerStatus", "Replication"]


class PeerState(Protocol):
    """The part of a peer's replication status the node shows (read-only)."""

    @property
    def connected(self) -> bool: ...

    @property
    def last_seen_ms(self) -> int | None: ...

    @property
    def lag_entries(self) -> int | None:
        """Entries this node holds that the peer has not shown it holds (None: its
        whole version vector never reached this node)."""

    @property
    def behind_entries(self) -> int | None:
        """Entries the peer has shown it holds that this node lacks (None: as above)."""


@dataclass(frozen=True)
class PeerStatus:
    """What replication knows about one peer (a :class:`PeerState`)."""

    connected: bool = False
    last_seen_ms: int | None = None
    lag_entries: int | None = None
    behind_entries: int | None = None


@runtime_checkable
class Replication(Protocol):
    """What the node needs from the replicator (agent/peering/replicator.py's ``Replicator``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, entries: Sequence[VerifiedEntry]) -> None:
        """New own entries, durably committed: push them to peers."""

    def update_trust(self, trust: TrustList) -> None:
        """The trust list changed: end sessions of removed peers, dial new ones."""

    def peer_status(self, key: PublicKey) -> PeerState:
        """The replication state of ``key`` (not connected for a key never seen)."""

    async def clear_fork(self, origin: PublicKey) -> None:
        """An admin cleared ``origin``'s fork in the ledger: replicate it again."""

    def heads_heard(self, origin: PublicKey) -> dict[PublicKey, int]:
        """Per connected peer whose whole version vector reached us this session, the
        seq of ``origin`` it holds (0: none). A restored node waits on it."""

    def metric_families(self) -> Iterable[MetricFamily]:
        """Replication metrics (entries in/out, bytes, duplicates, errors, per peer)."""




class NullReplication:
    """No peers: the node works alone (tests, a node with replication disabled)."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def publish(self, entries: Sequence[VerifiedEntry]) -> None:
        return None

    def update_trust(self, trust: TrustList) -> None:
        return None

    def peer_status(self, key: PublicKey) -> PeerStatus:
        return PeerStatus()

    async def clear_fork(self, origin: PublicKey) -> None:
        return None

    def heads_heard(self, origin: PublicKey) -> dict[PublicKey, int]:
        return {}

    def metric_families(self) -> Iterable[MetricFamily]:
        return ()
