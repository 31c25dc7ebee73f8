"""The composition root: the one place that builds a node's parts and wires each to the
ones it talks to. Read :func:`compose` once to see the whole node.

Parts, low to high (docs/architecture.md draws the layers): the config (entraide.toml),
the helper processes (:class:`~agent.workers.supervisor.Supervisor`), the replicator
(peering, given the supervisor's verify workers), the node (identity, ledger, trust
list, group commit), the local API app (REST routes, TAXII, MISP) with the TAXII judge,
and the web console at ``/console/`` on it (agent/console).
``entraide run`` (agent/daemon.py) adds only the listeners, signals, logging and the
shutdown order.

Lifecycle: the app's ``cleanup_ctx`` opens the supervisor, then starts the node; on
cleanup it stops the node (queued submissions committed, replication stopped), then
closes the supervisor, so no helper goes away while the node still calls it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from agent.api.app import create_app
from agent.config.datadir import DataDir
from agent.config.hosts import HostPolicy
from agent.config.settings import NodeConfig, load_node_config
from agent.console.app import mount_console
from agent.metrics import Registry
from agent.node.node import Node
from agent.peering.params import TransportParams
from agent.peering.replicator import Replicator
from agent.taxii.app import JUDGE
from agent.taxii.post import Judge
from agent.web.common import NODE, STATE
from agent.workers.lookup_http import LOOKUP_ROUTE
from agent.workers.supervisor import Supervisor, default_readers

__all__ = ["Parts", "compose"]


@dataclass(frozen=True)
class Parts:
    """A composed node: its config, the node, its helper processes and its API app."""

    config: NodeConfig
    node: Node
    workers: Supervisor
    app: web.Application


def compose(data_dir: DataDir, *, passphrase: bytes | None = None,
            readers: int | None = None) -> Parts:
    """Build and wire every part of the node in ``data_dir``; nothing starts yet (the
    app's ``cleanup_ctx`` starts it all, see the module docstring).

    ``readers``: read-lane processes; default ``[api] readers``, else
    :func:`~agent.workers.supervisor.default_readers`.

    Raises:
        ConfigError: no node there, or a bad entraide.toml.
    """
    data_dir.require_node()
    config = load_node_config(data_dir)
    registry = Registry()
    transport = TransportParams(max_handshaking_per_address=config.peer.handshakes_per_address)
    if readers is None:
        readers = config.api.readers if config.api.readers is not None else default_readers()
    workers = Supervisor(
        registry, verify_processes=transport.verify_processes,
        verify_threads=transport.verify_workers, verify_min_batch=transport.verify_process_min,
        readers=readers, data_dir=data_dir.root, ledger_path=config.ledger_path(data_dir),
        names=lambda: node.names_by_text())

    def replicator(node: Node) -> Replicator:
        return Replicator(node.identity, lambda: node.trust, node.ledger, node.config.gossip,
                          transport=transport, verifier=workers.verify, metrics=registry)

    node = Node(data_dir, passphrase=passphrase, registry=registry, replication=replicator,
                batch_worker=workers.batch)
    node.on_trust_change(workers.trust_changed)
    app = create_app(node, hosts=HostPolicy.of(config.api.allowed_hosts))
    app[JUDGE] = Judge(workers.judge)
    mount_console(app)
    state = app[STATE]
    labels = ("GET", LOOKUP_ROUTE, "200")

    def served(count: int, buckets: list[int], seconds: float) -> None:
        """The readers' lookups, counted as the node's own on the lookup route."""
        state.requests.inc(count, labels)
        state.latency.add_counts(buckets, seconds, labels[:2])

    workers.on_served = served
    app.cleanup_ctx.append(workers.context)
    app.cleanup_ctx.append(functools.partial(_node_lifecycle, workers=workers))
    return Parts(config, node, workers, app)


async def _node_lifecycle(app: web.Application, *, workers: Supervisor
                          ) -> AsyncIterator[None]:
    node = app[NODE]
    await node.start()
    workers.node_started()  # not before: a node that cannot start needs no helper
    try:
        yield
    finally:
        await node.stop()
