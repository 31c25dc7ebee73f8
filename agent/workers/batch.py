"""The batch worker, node side: large observation batches validated and encoded in a
helper process (its job, the worker side, is :func:`agent.api.batch.main`).

``POST /api/v1/observations`` with a large ``{"observations": [...]}``: the node's
event loop holds the GIL for everything it does, so parsing the JSON, validating every
item, encoding its payload and building its index record (about half of a batched
submission's cost) are done in one pipe worker (agent/workers/pipe.py) while the loop
goes on signing and committing. What comes back is each item's
:class:`~agent.storage.types.PreparedObservation`, its TLP and its audience names; the
node signs, stores and acknowledges as for any other submission.

Wire: request, the body's bytes; reply, None (not a valid batch: the in-process path
reports why) or a list of ``[data, fields, doc, type, value, first_ms, last_ms, tlp,
audience]``, one per item.

Invariants:
- The worker accepts exactly what the in-process path accepts (the same parse, models
  and encoder); on any doubt it answers None and the caller validates in-process,
  which raises the API's documented error. So no error message depends on where a
  batch was validated.
- A reply that is not of that shape kills the worker (pipe.py); the batch is then
  validated in-process. The worker holds no key and sees only bodies the API already
  authenticated; what it returns is signed as it is.
"""

from __future__ import annotations

import sys
from typing import Any

from agent.storage.types import PreparedObservation
from agent.workers.pipe import PipeWorker, WorkerFailed
from protocol.entries import TLP

__all__ = ["COMMAND", "MIN_WORKER_BODY_BYTES", "BatchWorker", "Prepared"]

COMMAND = (sys.executable, "-c", "from agent.api.batch import main; main()")
"""The worker's command line (its code lives with the API's models it validates with)."""

MIN_WORKER_BODY_BYTES = 16 * 1024
"""Smaller bodies (about 60 observations) are validated in-process: the round trip
to the worker costs more than it saves."""

Prepared = list[tuple[PreparedObservation, str, tuple[str, ...] | None]]
"""Each item of a batch: prepared observation, TLP value, audience names."""

_FIELDS = len(PreparedObservation._fields)
_TLPS = TLP._value2member_map_


def _prepared(reply: Any) -> Prepared | None:
    """The worker's reply as prepared items.

    Raises:
        ValueError, TypeError: not a reply the worker sends (it is then killed).
    """
    if reply is None:
        return None
    if not isinstance(reply, list):
        raise TypeError(f"not a list of items: {type(reply).__name__}")
    out: Prepared = []
    for item in reply:
        if (not isinstance(item, list) or len(item) != _FIELDS + 2
                or not isinstance(item[0], bytes) or not isinstance(item[1], dict)
                or item[_FIELDS] not in _TLPS):
            raise ValueError("not a prepared item")
        audience = item[_FIELDS + 1]
        out.append((PreparedObservation(*item[:_FIELDS]), item[_FIELDS],
                    None if audience is None else tuple(audience)))
    return out


class BatchWorker:
    """Prepares large batches in ``worker`` (a pipe worker running :data:`COMMAND`).

    Args:
        worker: the process, owned (started, restarted, closed) by the supervisor.
        min_bytes: bodies shorter than this are left to the caller.
    """

    def __init__(self, worker: PipeWorker, *, min_bytes: int = MIN_WORKER_BODY_BYTES) -> None:
        self.worker = worker
        self._min_bytes = min_bytes
        self.prepared = 0
        """Batches the worker prepared (valid ones)."""

    async def prepare(self, body: bytes) -> Prepared | None:
        """The batch in ``body`` prepared in the worker; None when the body is small,
        the worker is not (yet) running or failed, or the body is not a valid batch
        (the caller then validates it in-process)."""
        if len(body) < self._min_bytes or not self.worker.usable():
            return None
        try:
            result = await self.worker.call(body, _prepared)
        except WorkerFailed:
            return None
        if result is not None:
            self.prepared += 1
        return result

    async def ready(self) -> bool:
        """Start the worker if need be and wait until it takes bodies (tests, warm-up).
        False when it cannot."""
        return await self.worker.ready()

    @property
    def running(self) -> bool:
        """True while the worker takes bodies."""
        return self.worker.running
