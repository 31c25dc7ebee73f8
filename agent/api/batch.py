"""Observation batches validated and encoded on the second core (docs/parts/api.md).

``POST /api/v1/observations`` with ``{"observations": [...]}``: the node's event loop
thread holds the GIL for everything it does, so parsing the JSON, validating every
item, encoding its payload and building its index record (together about half of a
batched submission's cost) are done here, in one worker process, while the loop
goes on signing and committing. What comes back is each item's payload bytes and
index record (:class:`PreparedObservation`), its TLP and its audience names; the node
signs, stores and acknowledges as for any other submission.

Invariants:
- The worker accepts exactly what the in-process path accepts: the same JSON parse
  (NaN and infinities refused), the same models (:func:`validate_batch` is the one
  the in-process path runs) and the same payload encoder. On any doubt (a body that
  does not parse, a bad item, an oversize batch, the worker gone) it answers None
  and the caller runs the in-process path, which raises the API's documented error;
  so no error message depends on where a batch was validated.
- A batch is in the worker only while its request waits for it: one worker, requests
  queued by the executor are bounded by the HTTP server's connections, each body by
  ``MAX_BODY_BYTES``.
- The worker is spawned (the node has threads) on first use, ends when the node
  closes it or when its parent is gone (even after kill -9 of the node). If it cannot
  start or dies, batches are validated in-process from then on.
- The worker is this node's own code in its own child process, holding no key: it
  sees only request bodies the API already authenticated, and what it returns is
  signed as it is (the same trust as the in-process path's objects).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agent.api.models import (
    MAX_BATCH,
    ROUTING_FIELDS,
    BatchRouting,
    ObservationBatch,
    Routing,
)
from agent.jsoncodec import dumps, loads
from agent.storage.types import PreparedObservation
from agent.workers.pipe import usable_cores
from agent.workers.spawned import SpawnedWorker
from protocol.entries import TLP
from protocol.payloads import Observation, encode_payload_with_fields

__all__ = [
    "MIN_WORKER_BODY_BYTES",
    "BatchPreparer",
    "Prepared",
    "PreparedObservation",
    "prepare_body",
    "prepare_observation",
    "split_routing",
    "validate_batch",
]

log = logging.getLogger(__name__)

MIN_WORKER_BODY_BYTES = 16 * 1024
"""Smaller bodies (about 60 observations) are validated in-process: the round trip
to the worker costs more than it saves."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

Routed = tuple[Observation, TLP, tuple[str, ...] | None]


# --- validation (in the worker and in-process alike) ---------------------------------

# The documented models (ObservationSubmit, ObservationBatch) are the contract. The fast
# path below validates the same fields in two flat passes (the payload as Observation,
# tlp/audience as Routing) instead of building a subclass instance and copying it into
# an Observation, which cost twice the validation itself. On any error the documented
# model validates the input again, so error messages are the contract's; a test checks
# that both accept the same fields.
_OBSERVATIONS = TypeAdapter(list[Observation])
_ROUTINGS = TypeAdapter(list[Routing])


def split_routing(item: Any) -> tuple[Any, dict[str, Any]]:
    """An API item as (payload fields, routing fields: tlp and audience)."""
    if not isinstance(item, dict):
        return item, {}
    payload = dict(item)
    routing = {k: payload.pop(k) for k in ROUTING_FIELDS if k in payload}
    return payload, routing


def validate_batch(data: dict[str, Any]) -> list[Routed]:
    """Each item of ``{"observations": [...]}`` as (observation, TLP, audience names).

    Raises:
        ValidationError: the documented model's error (``ObservationBatch``).
        ValueError: ``observations`` is not a non-empty list (after the model agreed).
    """
    items = data["observations"]
    try:
        defaults = BatchRouting.model_validate(
            {k: v for k, v in data.items() if k != "observations"})
        if not isinstance(items, list) or not items:
            raise ValueError("not a non-empty list")
        pairs = [split_routing(item) for item in items]
        observations = _OBSERVATIONS.validate_python([p for p, _ in pairs])
        routes = _ROUTINGS.validate_python([r for _, r in pairs])
    except (ValidationError, ValueError):
        ObservationBatch.model_validate(data)  # raises the documented error
        raise
    out: list[Routed] = []
    for observation, route in zip(observations, routes, strict=True):
        given = route.model_fields_set
        tlp = route.tlp if "tlp" in given or defaults.tlp is None else defaults.tlp
        audience = route.audience
        if "audience" not in given and tlp.encrypted:
            audience = defaults.audience  # a batch's audience applies to encrypted items
        out.append((observation, tlp, audience))
    return out


# --- prepared observations -----------------------------------------------------------


def prepare_observation(observation: Observation) -> PreparedObservation:
    """Encode ``observation`` and build its record (the index's doc and fields)."""
    data, fields = encode_payload_with_fields(observation)
    del fields["kind"]
    first, last = observation.first_seen, observation.last_seen
    return PreparedObservation(
        data, fields, dumps(fields), observation.type.value, observation.value,
        None if first is None else (first - _EPOCH) // _MS,
        None if last is None else (last - _EPOCH) // _MS)


Prepared = list[tuple[PreparedObservation, str, tuple[str, ...] | None]]
"""Each item of a batch: prepared observation, TLP (its value: an enum member costs
more to unpickle), audience names."""


def prepare_body(body: bytes) -> Prepared | None:
    """A whole ``{"observations": [...]}`` request body, parsed, validated and prepared
    (run in the worker). None for anything that is not a valid batch: the caller
    then takes the in-process path, which reports the error."""
    try:
        data = loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("observations"), list):
            return None
        if len(data["observations"]) > MAX_BATCH:
            return None
        routed = validate_batch(data)
        return [(prepare_observation(o), tlp.value, audience) for o, tlp, audience in routed]
    except Exception:
        return None


# --- the worker process --------------------------------------------------------------


def _warm_up() -> None:
    """Run first in the new worker, so its imports and validators are ready."""
    prepare_body(b'{"observations": [{"type": "ipv4-addr", "value": "192.0.2.1"}]}')



class BatchPreparer:
    """Prepares large batches in one worker process; close with :meth:`close`.

    Args:
        enabled: False (or a host with one core): never start the worker, every
            :meth:`prepare` answers None.
        min_bytes: bodies shorter than this are left to the caller.
    """

    def __init__(self, *, enabled: bool | None = None,
                 min_bytes: int = MIN_WORKER_BODY_BYTES) -> None:
        self.worker = SpawnedWorker(
            "observation batch worker", "validating in-process", _warm_up,
            enabled=usable_cores() >= 2 if enabled is None else enabled)
        self._min_bytes = min_bytes
        self.prepared = 0
        """Batches the worker prepared (valid ones)."""

    async def prepare(self, body: bytes) -> Prepared | None:
        """:func:`prepare_body` in the worker; None when the body is small, the worker
        is not (yet) running or is gone, or the body is not a valid batch."""
        if len(body) < self._min_bytes or not self.worker.usable():
            return None
        try:
            result: Prepared | None = await self.worker.call(prepare_body, body)
        except Exception:  # the process is gone, or could not take the body (logged)
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
        """True once the worker takes bodies (and until it is gone or closed)."""
        return self.worker.running

    async def close(self) -> None:
        """Stop the worker, if one was started. Idempotent."""
        await self.worker.close()

