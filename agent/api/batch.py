"""Observation batches validated and encoded: the one validation the in-process path
and the batch worker share, and the batch worker's job (:func:`main`).

``POST /api/v1/observations`` with ``{"observations": [...]}`` (agent/api/models.py): every
item is validated against the documented models, its payload encoded and its index
record built (:class:`~agent.storage.types.PreparedObservation`), with its TLP and
audience names. For a large body the node does this in the batch worker process
(agent/workers/batch.py is the node side, agent/workers/supervisor.py starts it), so
its event loop goes on signing and committing meanwhile.

Invariants:
- The worker accepts exactly what the in-process path accepts: the same JSON parse
  (NaN and infinities refused), the same models (:func:`validate_batch` is the one
  the in-process path runs) and the same payload encoder. On any doubt (a body that
  does not parse, a bad item, an oversize batch) it answers None and the caller runs
  the in-process path, which raises the API's documented error; so no error message
  depends on where a batch was validated.
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
from agent.workers.gcsettings import settle_heap
from agent.workers.pipe import serve
from protocol.entries import TLP
from protocol.indicators import PERSONAL_DATA_TYPES
from protocol.payloads import Observation, encode_payload_with_fields

__all__ = [
    "Prepared",
    "PreparedObservation",
    "default_tlp",
    "main",
    "prepare_body",
    "prepare_observation",
    "split_routing",
    "validate_batch",
]

log = logging.getLogger(__name__)

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
        if "tlp" in given:
            tlp = route.tlp
        else:
            tlp = default_tlp(observation) if defaults.tlp is None else defaults.tlp
        audience = route.audience
        if "audience" not in given and tlp.encrypted:
            audience = defaults.audience  # a batch's audience applies to encrypted items
        out.append((observation, tlp, audience))
    return out


def default_tlp(observation: Observation) -> TLP:
    """The TLP of an observation submitted without one: AMBER for a personal-data
    indicator type (protocol.indicators.PERSONAL_DATA_TYPES; docs/privacy.md), GREEN
    otherwise. A TLP given explicitly, lower or not, is taken as given."""
    return TLP.AMBER if observation.type.value in PERSONAL_DATA_TYPES else TLP.GREEN


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
        if data.get("partial") or data.get("refang"):
            return None  # answered item by item, or refanged: the in-process path
        routed = validate_batch(data)
        return [(prepare_observation(o), tlp.value, audience) for o, tlp, audience in routed]
    except Exception:
        return None


# --- the worker process --------------------------------------------------------------


def main() -> None:
    """The batch worker process (started by agent/workers/supervisor.py; the node side
    is agent/workers/batch.py): answers each body with its prepared items, or None."""
    _warm_up()
    settle_heap()  # imports done: later collections skip them (agent/workers/gcsettings.py)
    serve(_handle)


def _handle(body: Any) -> list[list[Any]] | None:
    """One request (a body's bytes) answered on the wire of agent/workers/batch.py."""
    prepared = prepare_body(body) if isinstance(body, bytes) else None
    if prepared is None:
        return None
    return [[*p, tlp, None if audience is None else list(audience)]
            for p, tlp, audience in prepared]


def _warm_up() -> None:
    """Run first in the new worker, so its imports and validators are ready."""
    prepare_body(b'{"observations": [{"type": "ipv4-addr", "value": "192.0.2.1"}]}')
