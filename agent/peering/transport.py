"""Peer transport: the WebSocket listener and dialer that replicate the ledger.

The pieces (docs/architecture.md, "Peer transport"):

- :mod:`agent.peering.links`: one link = one WebSocket carrying one session; handshake under
  a deadline, the writer task, the one-session-per-pair registry;
- :mod:`agent.peering.dialer`: exponential backoff with jitter, one dial loop per peer;
- :mod:`agent.peering.sessions`: the listener's handler and one dial, from handshake to close;
- :mod:`agent.peering.registry`: the trust list, per-peer status, counters and metrics;
- :mod:`agent.peering.params`: the transport's tunables and the engine's from the config;
- :mod:`agent.peering.ingest`: received batches checked and stored in order;
- :mod:`agent.peering.replicator`: :class:`Replicator`, the asyncio adapter of the gossip
  engine against the ledger.

This module re-exports the public names and builds the replicator for a
:class:`agent.node.node.Node` (:func:`replication_factory`) and its listener
(:func:`start_peer_listener`), behind the listener limits of
:mod:`agent.peering.limits` (connection caps per source address and in total, a
deadline on the upgrade request's head, aiohttp's keep-alive timeout).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from agent.config.settings import NodeConfig
from agent.config.trust import TrustList
from agent.peering.dialer import PEER_PATH, Backoff, peer_endpoint
from agent.peering.ingest import Verifier
from agent.peering.limits import ConnectionGuard, GuardedSite, ListenerLimits
from agent.peering.params import TransportParams, gossip_params
from agent.peering.registry import PeerCounters, PeerStatus, TrustedPeer
from agent.peering.replicator import Replicator
from agent.storage.ledger import Ledger
from protocol.keys import Identity


class StartedNode(Protocol):
    """What :func:`replication_factory` reads from the started node
    (agent/node/node.py's ``Node``): peering sits below the node and names none of it."""

    @property
    def identity(self) -> Identity: ...

    @property
    def trust(self) -> TrustList: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def config(self) -> NodeConfig: ...

__all__ = [
    "PEER_PATH",
    "Backoff",
    "ConnectionGuard",
    "ListenerLimits",
    "PeerCounters",
    "PeerStatus",
    "Replicator",
    "StartedNode",
    "TransportParams",
    "TrustedPeer",
    "Verifier",
    "gossip_params",
    "peer_endpoint",
    "replication_factory",
    "start_peer_listener",
]


def replication_factory(
    transport: TransportParams | None = None,
    *,
    verifier: Verifier | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> Callable[[StartedNode], Replicator]:
    """A ``Node(replication=...)`` factory: a :class:`Replicator` over the started
    node's identity, ledger, live trust list and ``[gossip]`` config.

    Without ``transport``, the defaults, with the verify worker process started with
    the node (a daemon's first catch-up comes right after it starts). ``verifier``:
    the checker its owner (the process supervisor) starts and closes; None: the
    replicator runs its own verify pool."""
    if transport is None:
        transport = TransportParams(verify_process_eager=True)

    def build(node: StartedNode) -> Replicator:
        return Replicator(node.identity, lambda: node.trust, node.ledger, node.config.gossip,
                          transport=transport, verifier=verifier, randbytes=randbytes)

    return build


async def start_peer_listener(replicator: Replicator, host: str, port: int,
                              *, shutdown_timeout: float = 2.0,
                              guard: ConnectionGuard | None = None
                              ) -> tuple[web.AppRunner, int]:
    """Serve ``replicator.peer_app()`` on ``host:port`` (port 0: any free port), every
    connection through ``guard`` (default: one with the default
    :class:`ListenerLimits`).

    Returns the runner (``await runner.cleanup()`` after ``replicator.stop()``) and the
    port actually bound.

    Raises:
        OSError: the address cannot be bound.
    """
    if guard is None:
        guard = ConnectionGuard("peer", ListenerLimits())
    app = replicator.peer_app()
    app.middlewares.append(guard.middleware)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           access_log=None, keepalive_timeout=guard.limits.keepalive_timeout)
    await runner.setup()
    site = GuardedSite(runner, host, port, guard)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:  # (host, port, ...) of each bound socket
        bound = int(address[1])
        break
    return runner, bound
