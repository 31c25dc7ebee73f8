"""Local API handlers for observations, sightings and indicators
(docs/operations.md, "The local HTTP API").

Invariants:
- A submission is validated whole before anything is written: one bad item of a
  batch fails the request with 422 and writes nothing; an accepted batch is
  committed in one transaction (with other concurrent submissions: group commit) and
  acknowledged only once durable. With ``partial`` (``?partial=true`` or
  ``"partial": true`` in a batch) the valid items are written (one transaction) and
  the answer says, item by item, stored, duplicate or refused with the reason.
- Items of one batch that are identical (same encoded payload, TLP and audience) are
  written once; the answer lists the repeats in ``duplicates`` and gives them the id
  of the first.
- ``refang`` (``?refang=true``, or ``"refang": true`` in a batch) undoes defanging
  (``protocol.indicators.refang``) before validation, and the answer lists each value
  refanged (``refanged``: index, as submitted, as stored); without it a defanged value
  is refused like any invalid one.
- A node lists and returns only what it can read: an AMBER/RED entry whose audience
  does not include this node answers 404, exactly like an unknown id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from agent.api.batch import default_tlp, split_routing, validate_batch
from agent.api.models import (
    MAX_BATCH,
    BatchRouting,
    ObservationBatch,
    ObservationQuery,
    ObservationSubmit,
    RetractRequest,
    Routing,
    SightingSubmit,
    SubmitQuery,
    time_ms,
)
from agent.errors import UnknownAudienceError
from agent.node.node import Node, Submission
from agent.node.submission import PreparedSubmission
from agent.storage.types import PreparedObservation
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
from protocol.errors import EntraideError
from protocol.matching import refang
from protocol.payloads import Observation, encode_payload, format_validation_error

__all__ = [
    "get_indicator",
    "get_observation",
    "list_observations",
    "post_observations",
    "post_sighting",
    "retract_observation",
]


async def post_observations(request: web.Request) -> web.Response:
    """POST /api/v1/observations: one observation, or ``{"observations": [...]}``;
    ``partial`` and ``refang`` in the query (or a batch's body) as in the module
    docstring."""
    node = request.app[NODE]
    options = parse_query(request, SubmitQuery)
    body = await read_body(request)
    if not (options.partial or options.refang):
        # large valid batches without options: the second core (the worker refuses a
        # body that asks for partial or refang, which is then handled here)
        prepared = await node.prepare_batch(body)
        if prepared is not None:
            return await _created_batch(node, prepared, [])
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object: one observation, "
                                       "or {\"observations\": [...]}")
    if "observations" in data:
        items = data["observations"]
        if isinstance(items, list) and len(items) > MAX_BATCH:
            raise ApiError(413, "batch_too_large",
                           f"a batch holds at most {MAX_BATCH} observations, not {len(items)}")
        refanged: list[dict[str, Any]] = []
        if options.refang or data.get("refang") is True:
            data, refanged = _refang_batch(data)
        if options.partial or data.get("partial") is True:
            return json_response(await _partial(node, data, refanged), status=201)
        return await _created_batch(node, _batch(data), refanged)
    refanged_one = None
    if options.refang and isinstance(data.get("value"), str):
        value = refang(data["value"])
        if value != data["value"].strip():
            refanged_one = {"index": 0, "submitted": data["value"], "value": value}
            data = {**data, "value": value}
    submission = _one(data)
    (entry,) = await node.submit([submission])
    created = created_observation(node, entry, submission)
    if refanged_one is not None:
        created["refanged"] = {**refanged_one, "value": created["value"]}
    return json_response(created, status=201,
                         headers={"Location": f"/api/v1/observations/{entry.id}"})


def _refang_batch(data: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The batch with every item's value refanged, and which were."""
    items = data["observations"]
    if not isinstance(items, list):
        return data, []
    out, refanged = [], []
    for index, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("value"), str):
            value = refang(item["value"])
            if value != item["value"].strip():
                refanged.append({"index": index, "submitted": item["value"], "value": value})
                item = {**item, "value": value}
        out.append(item)
    return {**data, "observations": out}, refanged


def _duplicates(keys: list[Any]) -> tuple[list[int], dict[int, int]]:
    """(indexes of the first of each key, {index of a repeat: index of its first})."""
    first: dict[Any, int] = {}
    repeats: dict[int, int] = {}
    for index, key in enumerate(keys):
        if key in first:
            repeats[index] = first[key]
        else:
            first[key] = index
    return list(first.values()), repeats


def _key(submission: Submission | PreparedSubmission) -> Any:
    """Two items are duplicates when their encoded payloads, TLPs and audiences are
    equal (the same indicator with another confidence or description is not)."""
    payload = submission.payload
    data = payload.data if isinstance(payload, PreparedObservation) else \
        encode_payload(payload)
    return data, submission.tlp, submission.audience


async def _created_batch(node: Node, submissions: Sequence[Submission | PreparedSubmission],
                         refanged: list[dict[str, Any]]) -> web.Response:
    """Write a validated batch (each distinct item once) and answer with an id per item."""
    unique, repeats = _duplicates([_key(s) for s in submissions])
    entries = await node.submit([submissions[i] for i in unique])
    by_index = dict(zip(unique, entries, strict=True))
    ordered = [by_index[repeats.get(i, i)] for i in range(len(submissions))]
    body: dict[str, Any] = {"ids": [e.id for e in ordered], "seqs": [e.seq for e in ordered],
                            "count": len(entries), "duplicates": sorted(repeats)}
    if refanged:
        body["refanged"] = _refanged_as_stored(refanged, submissions)
    return json_response(body, status=201)


def _refanged_as_stored(refanged: list[dict[str, Any]],
                        submissions: Sequence[Submission | PreparedSubmission | None]
                        ) -> list[dict[str, Any]]:
    out = []
    for item in refanged:
        submission = submissions[item["index"]]
        if submission is not None and isinstance(submission.payload, Observation):
            item = {**item, "value": submission.payload.value}
        out.append(item)
    return out


async def _partial(node: Node, data: dict[str, Any],
                   refanged: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch item by item: the valid ones written (each distinct one once), the others
    refused with their reason."""
    items = data["observations"]
    if not isinstance(items, list) or not items:
        ObservationBatch.model_validate(data)  # raises the documented error
        raise ApiError(422, "invalid", "observations must be a non-empty list")
    defaults = {k: v for k, v in data.items() if k != "observations"}
    BatchRouting.model_validate(defaults)  # a bad default refuses the request
    submissions: list[Submission | None] = []
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            ((observation, tlp, audience),) = validate_batch({**defaults,
                                                              "observations": [item]})
            node.recipients(tlp, audience)
        except ValidationError as exc:
            reason = _item_error(item, exc)
        except EntraideError as exc:
            reason = str(exc)
        else:
            submissions.append(Submission(observation, tlp, audience))
            results.append({"index": index, "status": "stored"})
            continue
        submissions.append(None)
        results.append({"index": index, "status": "refused", "reason": reason})
    valid = [i for i, s in enumerate(submissions) if s is not None]
    keys = [_key(s) for s in submissions if s is not None]
    unique, repeats = _duplicates(keys)
    chosen = [valid[i] for i in unique]
    entries = await node.submit([s for i in chosen if (s := submissions[i]) is not None])
    by_index = dict(zip(chosen, entries, strict=True))
    for position, first in repeats.items():
        index, of = valid[position], valid[first]
        results[index] = {"index": index, "status": "duplicate", "of": of,
                          "id": by_index[of].id, "seq": by_index[of].seq}
    for index, entry in by_index.items():
        results[index].update(id=entry.id, seq=entry.seq)
    body: dict[str, Any] = {
        "results": results, "stored": len(entries), "duplicates": len(repeats),
        "refused": sum(1 for r in results if r["status"] == "refused"),
        "ids": [e.id for e in entries]}
    if refanged:
        body["refanged"] = _refanged_as_stored(refanged, submissions)
    return body


def _item_error(item: Any, exc: ValidationError) -> str:
    """Why one item of a partial batch is refused, its fields named from the item."""
    try:
        ObservationSubmit.model_validate(item)
    except ValidationError as own:
        exc = own
    return format_validation_error(exc, "observation")


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
