"""Every helper process a node can run, in one table, and the one object that runs them.

The node's event loop holds the GIL for all it does; work that would stall it, or that
needs the other cores, goes to helper processes. :data:`PROCESSES` lists each kind:
how many run, why, the wire it is spoken to over, and what the node does without it.
:class:`Supervisor` builds them, starts them (on first use, or when it opens for those
the node wants at once), restarts and gives up on them with the one
:data:`~agent.workers.policy.RESTART` policy, pushes trust-list changes to the ones
that answer with names (the readers), owns their metrics, and closes them. It is
opened and closed with the local API app (:meth:`Supervisor.context` in the app's
``cleanup_ctx``; agent/composition.py wires it).

Two wires, no more:
- *pipe* (agent/workers/pipe.py): request/reply over the child's stdin and stdout,
  msgpack frames. The child ends when its stdin closes, so it never outlives the node,
  even after kill -9.
- *fd passing* (agent/workers/read_lane.py): only where a connection must move to
  another process (the read lane's readers serve the client's own socket).

Invariants:
- No helper is needed for a correct answer: each kind has an in-process fall-back,
  taken while it starts, after it failed and once it is given up.
- Nothing here holds a key; every helper is this node's own code.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.metrics import MetricFamily, Registry
from agent.workers.batch import COMMAND as BATCH_COMMAND
from agent.workers.batch import BatchWorker
from agent.workers.pipe import PipeWorker, usable_cores
from agent.workers.policy import RESTART, RestartPolicy
from agent.workers.read_lane import ReadLane, Sniffer
from agent.workers.verify import VerifyPool

__all__ = ["JUDGE_COMMAND", "PROCESSES", "Helper", "Supervisor", "default_readers"]

JUDGE_COMMAND = (BATCH_COMMAND[0], "-c", "from agent.taxii.post import main; main()")
"""The TAXII judge's command line (its job is agent/taxii/post.py's ``main``)."""


@dataclass(frozen=True)
class Helper:
    """One kind of helper process: what it is, how many, why, over what, else what."""

    name: str
    count: str
    why: str
    wire: str
    without: str


PROCESSES: tuple[Helper, ...] = (
    Helper("verify worker", "[transport] verify_processes (2), at most one per core; "
           "none on one core",
           "checks the signatures of large batches of received entries on the other cores "
           "(agent/workers/verify.py)", "pipe", "threads check them"),
    Helper("batch worker", "1 on two cores or more, started by the first large batch",
           "validates and encodes large POST /api/v1/observations bodies "
           "(agent/workers/batch.py, agent/api/batch.py)", "pipe", "validated in-process"),
    Helper("TAXII judge", "1, started by the first large envelope while a core is spare",
           "checks and maps the objects of large TAXII envelopes (agent/taxii/post.py)",
           "pipe", "judged in a thread"),
    Helper("reader", "[api] readers (2 on two cores or more; none on one core or where "
           "sockets cannot be passed), started by the first lookup connection",
           "serves API connections that open with an indicator lookup "
           "(agent/workers/read_lane.py, agent/workers/reader.py)", "fd passing",
           "the node's aiohttp server serves them"),
)
"""Every process a node can run besides its own (``entraide run``)."""


def default_readers() -> int:
    """Read-lane processes by default: 2 on a host with two cores or more (more
    readers than cores measured worse: docs/benchmarks.md, "Lookup"), none on one
    core or where sockets cannot be passed between processes."""
    if not hasattr(socket, "send_fds"):
        return 0
    return 0 if usable_cores() < 2 else 2


class Supervisor:
    """The node's helper processes (:data:`PROCESSES`), built here, run with one policy.

    Args:
        registry: where the helpers' metrics are collected while open.
        verify_processes: verify worker processes wanted (at most one per core, none on
            one core; 0: the pool checks in threads only).
        verify_threads: threads checking small batches and the rest.
        verify_min_batch: received batches smaller than this stay in a thread.
        batch: run the batch worker (default: on two cores or more).
        judge: run the TAXII judge (default: yes; it is only used while a core is
            spare).
        readers: read-lane processes (0: none).
        data_dir: the node's data dir (the readers read its tokens.toml).
        ledger_path: the ledger the readers read.
        names: the node's key text -> name table (``Node.names_by_text``).
        on_served: called with (count, latency bucket counts, latency sum) of the
            lookups the readers answered.
        policy: when to restart a helper, when to give up on it.

    Nothing starts before :meth:`open` (most helpers start with their first use);
    :meth:`close` ends them all. Build, open and close on the node's event loop.
    """

    def __init__(self, registry: Registry, *, verify_processes: int = 0,
                 verify_threads: int = 2, verify_min_batch: int = 64,
                 batch: bool | None = None,
                 judge: bool = True, readers: int = 0, data_dir: Path | None = None,
                 ledger_path: Path | None = None,
                 names: Callable[[], dict[str, str]] = dict,
                 on_served: Callable[[int, list[int], float], None] | None = None,
                 policy: RestartPolicy = RESTART) -> None:
        self._registry = registry
        self.policy = policy
        self.verify = VerifyPool(verify_threads, verify_processes, verify_min_batch,
                                 eager=True, policy=policy)
        """The verify workers (the replicator checks received entries with it); started
        with the supervisor, since a node's first catch-up comes right after it starts."""
        self.batch = BatchWorker(PipeWorker(
            "batch worker", BATCH_COMMAND,
            enabled=usable_cores() >= 2 if batch is None else batch, policy=policy))
        self.judge = PipeWorker("TAXII judge", JUDGE_COMMAND, enabled=judge, policy=policy)
        self.lane: ReadLane | None = None
        if readers > 0:
            if data_dir is None or ledger_path is None:
                raise ValueError("readers need the data dir and the ledger path")
            self.lane = ReadLane(data_dir, ledger_path, readers=readers, names=names,
                                 on_served=self._served, policy=policy)
        self.on_served = on_served
        """Set by the composition root once the API's metrics exist (before :meth:`open`)."""
        self._open = False

    async def open(self) -> None:
        """Collect the helpers' metrics (helpers start on first use, or with
        :meth:`node_started`)."""
        self._open = True
        self._registry.add_collector(self.metric_families)

    def node_started(self) -> None:
        """The node is up: start the helpers it wants at once (the verify workers: a
        node's first catch-up comes right after it starts). No wait."""
        self.verify.start()

    async def close(self) -> None:
        """End every helper: readers (after the request each is answering), pipe workers
        (stdin closed, killed after 2 s), the verify pool. Idempotent."""
        if not self._open:
            return
        self._open = False
        if self.lane is not None:
            await self.lane.close()
        await asyncio.gather(self.batch.worker.close(), self.judge.close(),
                             self.verify.close())
        self._registry.remove_collector(self.metric_families)

    async def context(self, app: Any) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: open with the app, close on its cleanup."""
        await self.open()
        try:
            yield
        finally:
            await self.close()

    def api_protocol(self, server: Callable[[], asyncio.Protocol]
                     ) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of the API listener: ``server`` (aiohttp's) with the
        read lane's sniffer in front when there are readers."""
        lane = self.lane
        if lane is None:
            return server
        lane.server = server
        return lambda: Sniffer(server, lane)

    def trust_changed(self) -> None:
        """The trust list changed: the helpers that name origins get the new names
        (the readers, before any request they read after this)."""
        if self.lane is not None:
            self.lane.names_changed()

    def _served(self, count: int, buckets: list[int], seconds: float) -> None:
        if self.on_served is not None:
            self.on_served(count, buckets, seconds)

    def metric_families(self) -> list[MetricFamily]:
        """Every helper's figures, for /metrics (a registry collector while open)."""
        families = [
            MetricFamily("entraide_verify_workers_up", "Verify worker processes taking "
                         "large batches of received entries (agent/workers/verify.py).",
                         "gauge", (), {(): float(self.verify.processes_up)}),
            MetricFamily("entraide_taxii_judge_up", "1 while large TAXII envelopes can be "
                         "judged in the TAXII judge process (agent/taxii/post.py).",
                         "gauge", (), {(): 1.0 if self.judge.running else 0.0}),
            MetricFamily("entraide_batch_worker_up", "1 while large observation batches "
                         "are validated in the batch worker process "
                         "(agent/workers/batch.py).", "gauge", (),
                         {(): 1.0 if self.batch.running else 0.0}),
            MetricFamily("entraide_batch_worker_batches_total",
                         "Observation batches validated and encoded in the batch worker "
                         "process.", "counter", (), {(): float(self.batch.prepared)}),
        ]
        lane = self.lane
        families += [
            MetricFamily("entraide_read_lane_readers", "Reader processes taking lookup "
                         "connections (agent/workers/read_lane.py).", "gauge", (),
                         {(): float(lane.running if lane else 0)}),
            MetricFamily("entraide_read_lane_connections_total", "Connections passed to a "
                         "reader.", "counter", (), {(): float(lane.offered if lane else 0)}),
            MetricFamily("entraide_read_lane_returned_total", "Connections a reader gave "
                         "back to the node (a request it does not answer).", "counter", (),
                         {(): float(lane.returned if lane else 0)}),
        ]
        return families
