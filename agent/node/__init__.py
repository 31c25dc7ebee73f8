"""The node: one object (:class:`Node`) that owns a data dir's identity, ledger, trust
list, tokens and replication and offers the operations the API, TAXII and MISP call;
beside it the trust-list membership (names, keys, audiences), the JSON views of its
state, the submissions it takes, what it needs from replication, and the group
committer and author that sign and store its own entries."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.node.membership import Membership
    from agent.node.node import ENV_PASSPHRASE, MAX_QUEUED_ENTRIES, Node, ReplicationFactory
    from agent.node.replication import NullReplication, PeerState, PeerStatus, Replication
    from agent.node.submission import PreparedSubmission, Submission

__all__ = [
    "ENV_PASSPHRASE",
    "MAX_QUEUED_ENTRIES",
    "Membership",
    "Node",
    "NullReplication",
    "PeerState",
    "PeerStatus",
    "PreparedSubmission",
    "Replication",
    "ReplicationFactory",
    "Submission",
]

__getattr__ = lazy_exports(__name__, __file__)
