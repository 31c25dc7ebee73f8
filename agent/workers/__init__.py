"""Helper processes: the node's work that would stall its event loop or needs the other
cores, run in child processes by one :class:`Supervisor` (agent/workers/supervisor.py
lists every kind in :data:`PROCESSES`) with one restart policy and two wires: the pipe
for request/reply workers (verify, batch, TAXII judge) and fd passing for the read
lane's readers, which take over client connections.
"""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.workers.batch import BatchWorker
    from agent.workers.pipe import PipeWorker, WorkerFailed, serve, usable_cores
    from agent.workers.policy import RESTART, RestartPolicy
    from agent.workers.read_lane import ReadLane, Sniffer
    from agent.workers.supervisor import PROCESSES, Helper, Supervisor, default_readers

__all__ = [
    "PROCESSES",
    "RESTART",
    "BatchWorker",
    "Helper",
    "PipeWorker",
    "ReadLane",
    "RestartPolicy",
    "Sniffer",
    "Supervisor",
    "WorkerFailed",
    "default_readers",
    "serve",
    "usable_cores",
]

__getattr__ = lazy_exports(__name__, __file__)
