"""Local API handlers for observations, sightings and indicators
(docs/operations.md, "The local HTTP API").

Invariants:
- A submission is validated whole before anything is written: one bad item of a
  batch fails the request with 422 and writes nothing; an accepted batch is
  committed in one transaction (with other concurrent submissions: group commit) and
  acknowledged only once durable.
- A node lists and returns only what it can read: an AMBER/RED entry whose audience
  does not include this node answers 404, exactly like an unknown id.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from agent.api.batch import default_tlp, split_routing, validate_batch
from agent.api.models import (
    MAX_BATCH,
    ObservationQuery,
    ObservationSubmit,
    RetractRequest,
    Routing,
    SightingSubmit,
    time_ms,
)
from agent.errors import UnknownAudienceError
from agent.node.node import Node, Submission
from agent.web.common import (
    NODE,
    ApiError,
    json_response,
    parse_json,
    parse_query,
    read_body,
    read_json,
)
from protocol.entries import VerifiedEntry
from protocol.payloads import Observation

__all__ = [
    "get_indicator",
    "get_observation",
    "list_observations",
    "post_observations",
    "post_sighting",
    "retract_observation",
]


async def post_observations(request: web.Request) -> web.Response:
    """POST /api/v1/observations: one observation, or ``{"observations": [...]}``."""
    node = request.app[NODE]
    body = await read_body(request)
    prepared = await node.prepare_batch(body)  # large valid batches: the second core
    if prepared is not None:
        return _created_batch(await node.submit(prepared))
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object: one observation, "
                                       "or {\"observations\": [...]}")
    if "observations" in data:
        items = data["observations"]
        if isinstance(items, list) and len(items) > MAX_BATCH:
            raise ApiError(413, "batch_too_large",
                           f"a batch holds at most {MAX_BATCH} observations, not {len(items)}")
        submissions = _batch(data)
        return _created_batch(await node.submit(submissions))
    submission = _one(data)
    (entry,) = await node.submit([submission])
    created = created_observation(node, entry, submission)
    return json_response(created, status=201,
                         headers={"Location": f"/api/v1/observations/{entry.id}"})


def _created_batch(entries: list[VerifiedEntry]) -> web.Response:
    return json_response({"ids": [e.id for e in entries], "seqs": [e.seq for e in entries],
                          "count": len(entries)}, status=201)


def _one(data: dict[str, Any]) -> Submission:
    payload, routing = split_routing(data)
    try:
        observation = Observation.model_validate(payload)
        route = Routing.model_validate(routing)
    except ValidationError:
        ObservationSubmit.model_validate(data)  # raises the documented error
        raise
    tlp = route.tlp if "tlp" in route.model_fields_set else default_tlp(observation)
    return Submission(observation, tlp, route.audience)


def _batch(data: dict[str, Any]) -> list[Submission]:
    return [Submission(observation, tlp, audience)
            for observation, tlp, audience in validate_batch(data)]


def created_observation(node: Node, entry: VerifiedEntry,
                        submission: Submission) -> dict[str, Any]:
    """The observation as ``GET /api/v1/observations/{id}`` will show it."""
    fields = submission.payload.model_dump(mode="json")
    del fields["kind"]
    body: dict[str, Any] = {"id": entry.id, **fields, "origin": entry.origin.text,
                            "origin_name": node.name, "seq": entry.seq, "ts": entry.ts,
                            "tlp": entry.tlp.value, "retracted": False,
                            "audience": node.audience_names(node.audience_of(entry)),
                            "verified": True}
    return body


async def list_observations(request: web.Request) -> web.Response:
    """GET /api/v1/observations: filtered, newest first, paged by an opaque cursor."""
    node = request.app[NODE]
    query = parse_query(request, ObservationQuery)
    page = await node.list_observations(**filters_of(node, query), limit=query.limit,
                                        cursor=query.cursor)
    return json_response({"observations": page.items, "next": page.next})


def filters_of(node: Node, query: Any) -> dict[str, Any]:
    """The ledger filters of an ObservationQuery or StreamQuery.

    Raises:
        ApiError: ``origin`` is neither a peer, this node nor a key (422).
    """
    origin = None
    if query.origin is not None:
        try:
            origin = node.key_of(query.origin)
        except UnknownAudienceError as exc:
            raise ApiError(422, "unknown_origin", str(exc)) from exc
    return {
        "type": None if query.type is None else query.type.value,
        "value": query.value,
        "origin": origin,
        "tlp": None if query.tlp is None else query.tlp.value,
        "since": time_ms(query.since),
        "until": time_ms(query.until),
        "include_retracted": query.include_retracted,
    }


async def get_observation(request: web.Request) -> web.Response:
    """GET /api/v1/observations/{id}: one readable observation, with verification."""
    node = request.app[NODE]
    return json_response(await node.get_observation(request.match_info["id"]))


async def retract_observation(request: web.Request) -> web.Response:
    """POST /api/v1/observations/{id}/retract: withdraw one of this node's own."""
    node = request.app[NODE]
    data = await read_json(request, allow_empty=True)
    body = RetractRequest.model_validate({} if data is None else data)
    target = request.match_info["id"]
    entry = await node.retract(target, body.reason)
    return json_response({"id": entry.id, "seq": entry.seq, "ts": entry.ts,
                          "of": target.lower(), "retracted": True}, status=201)


async def post_sighting(request: web.Request) -> web.Response:
    """POST /api/v1/sightings: this node saw the indicator of an existing entry."""
    node = request.app[NODE]
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    item = SightingSubmit.model_validate(data)
    given = item.model_fields_set
    entry = await node.add_sighting(
        item.of, count=item.count, seen_at=item.seen_at, note=item.note,
        tlp=item.tlp,  # None: the target's TLP
        audience=item.audience if "audience" in given else None)
    return json_response({"id": entry.id, "seq": entry.seq, "ts": entry.ts, "of": item.of,
                          "tlp": entry.tlp.value,
                          "audience": node.audience_names(node.audience_of(entry))}, status=201)


async def get_indicator(request: web.Request) -> web.Response:
    """GET /api/v1/indicators/{type}/{value}: everything known about one indicator."""
    node = request.app[NODE]
    if request.query:
        raise ApiError(422, "invalid", "this route takes no query parameters")
    body = await node.indicator_json(request.match_info["type"], request.match_info["value"])
    return web.Response(body=body, content_type="application/json", charset="utf-8")
