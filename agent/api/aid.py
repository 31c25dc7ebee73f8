"""Local API routes of mutual aid and the expertise directory
(docs/operations.md, "Mutual aid"; the contract is docs/design's "Mutual aid").

:data:`AID_ROUTES` is added to the API's one route table (agent/api/app.py), which
registers the handlers and publishes them in ``/api/v1/openapi.json``; the request
and answer models are beside them here.

Invariants:
- Every rule of a thread is the state machine's (protocol/aid.py): an illegal
  follow-up answers the status and code it names (403 ``not_requester``, 409
  ``request_closed`` ...) and writes nothing.
- A request this node cannot read answers 404, exactly like an unknown id.
- Error messages are given in English and French.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agent.api.batch import split_routing
from agent.api.models import Audience, EntryIdText, TlpLabel
from agent.config.tokens import Scope
from agent.i18n import N_
from agent.jsoncodec import dumps
from agent.node.aid import NodeAid
from agent.web.common import NODE, ApiError, json_response, parse_query, read_json
from agent.web.openapi import Operation
from protocol.aid import (
    Affected,
    AidContact,
    AidRequest,
    AidTransitionError,
    Capabilities,
    NeedItem,
    NeedKind,
    RequestStatus,
)
from protocol.entries import TLP
from protocol.payload_models import LocalizedText
from protocol.payloads import Severity, UtcDatetime, parse_payload_json

__all__ = ["AID_ROUTES", "forward_aid_events"]

_MAX_PAGE = 500


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


# --- bodies and queries -------------------------------------------------------------------


class AidRequestSubmit(_In):
    """A request for assistance (docs/operations.md, "Mutual aid")."""

    title: Annotated[str, StringConstraints(max_length=200)]
    severity: Severity
    description: LocalizedText
    needs: Annotated[list[NeedItem], Field(min_length=1, max_length=16)]
    affected: Affected | None = None
    mitigations: LocalizedText | None = None
    contact: AidContact
    related: Annotated[list[EntryIdText], Field(max_length=64)] = []
    respond_by: UtcDatetime | None = None
    tlp: TlpLabel = Field(TLP.AMBER, description="AMBER (default), AMBER+STRICT or RED")
    audience: Audience | None = Field(None, description="peer names; RED needs one")


class OfferSubmit(_In):
    kinds: Annotated[list[NeedKind], Field(min_length=1, max_length=16)]
    detail: LocalizedText | None = None
    people: Annotated[int, Field(ge=1, le=10_000)] | None = None
    available_from: UtcDatetime | None = None
    available_until: UtcDatetime | None = None
    on_site: bool = False
    contact: AidContact | None = None


class AcceptBody(_In):
    note: LocalizedText | None = None


class WithdrawBody(_In):
    reason: LocalizedText | None = None


class UpdateBody(_In):
    status: Literal["open", "in-progress"] | None = None
    note: LocalizedText


class CloseBody(_In):
    summary: LocalizedText


class CapabilitiesPut(_In):
    skills: Annotated[list[NeedKind], Field(max_length=len(NeedKind))] = []
    detail: LocalizedText | None = None
    languages: Annotated[list[Annotated[str, StringConstraints(max_length=12)]],
                         Field(max_length=8)] = []
    hours: Annotated[str, StringConstraints(max_length=200)] | None = None
    available: bool = True
    contact: AidContact | None = None
    tlp: TlpLabel = Field(TLP.GREEN, description="GREEN (default: every member) or AMBER")
    audience: Audience | None = None


class AidListQuery(_In):
    status: RequestStatus | None = None
    mine: bool = False
    need: NeedKind | None = None
    limit: Annotated[int, Field(ge=1, le=_MAX_PAGE)] = 100
    cursor: Annotated[str, Field(max_length=32)] | None = None


class CapabilitiesQuery(_In):
    need: NeedKind | None = None
    language: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}$")] | None = None
    available: bool | None = None


class SuggestQuery(_In):
    need: NeedKind
    language: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}$")] | None = None


# --- answers ------------------------------------------------------------------------------


class AidRequestOut(_Out):
    """A request with its thread folded: ``status``, ``overdue``, ``offers``, ``updates``,
    ``invalid`` (entries that broke a rule: stored, no effect), ``origin_name``."""

    id: str
    status: RequestStatus
    overdue: bool
    origin_name: str | None


class AidRequestList(_Out):
    requests: list[dict[str, Any]]
    next: str | None


class OfferCreated(_Out):
    id: str
    request: str
    status: Literal["open"]


class CapabilityList(_Out):
    capabilities: list[dict[str, Any]]


class CapabilityOut(_Out):
    id: str
    origin_name: str
    updated: str


class SuggestOut(_Out):
    need: NeedKind
    audience: list[str]
    capabilities: list[dict[str, Any]]


# --- handlers -----------------------------------------------------------------------------


def _cursor_out(item_no: int | None) -> str | None:
    return None if item_no is None else base64.urlsafe_b64encode(
        b"a" + item_no.to_bytes(8, "big")).decode().rstrip("=")


def _cursor_in(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 9 or raw[:1] != b"a":
        # English here; the error middleware answers in the reader's language.
        raise ApiError(400, "bad_cursor", N_("not a cursor of this list"))
    return int.from_bytes(raw[1:], "big")


async def _judged(call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``call``'s answer; an illegal transition becomes its status and code."""
    try:
        return await call
    except AidTransitionError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from exc


async def _body(request: web.Request, model: type[_In], *, optional: bool = False
                ) -> dict[str, Any]:
    data = await read_json(request, allow_empty=optional)
    if data is None:
        data = {}
    return model.model_validate(data).model_dump(mode="json", exclude_none=True)


async def post_request(request: web.Request) -> web.Response:
    """POST /api/v1/aid/requests: raise a request for assistance."""
    node = request.app[NODE]
    data = await _body(request, AidRequestSubmit)
    fields, routing = split_routing(data)
    payload = parse_payload_json({**fields, "kind": "aid-request"})
    assert isinstance(payload, AidRequest)
    audience = routing.get("audience")
    created = await node.aid.raise_request(payload, TLP(routing["tlp"]), audience)
    return json_response(created, status=201,
                         headers={"Location": f"/api/v1/aid/requests/{created['id']}"})


async def list_requests(request: web.Request) -> web.Response:
    """GET /api/v1/aid/requests."""
    query = parse_query(request, AidListQuery)
    items, nxt = await request.app[NODE].aid.list_requests(
        status=None if query.status is None else query.status.value, mine=query.mine,
        need=None if query.need is None else query.need.value, limit=query.limit,
        cursor=_cursor_in(query.cursor))
    return json_response({"requests": items, "next": _cursor_out(nxt)})


async def get_request(request: web.Request) -> web.Response:
    """GET /api/v1/aid/requests/{id}."""
    return json_response(await request.app[NODE].aid.get(request.match_info["id"]))


async def post_offer(request: web.Request) -> web.Response:
    """POST /api/v1/aid/requests/{id}/offers."""
    data = await _body(request, OfferSubmit)
    created = await _judged(request.app[NODE].aid.offer(request.match_info["id"], data))
    return json_response(created, status=201)


def _follow_up(model: type[_In], call: Callable[[Any, str, dict[str, Any], web.Request],
                                                 Awaitable[dict[str, Any]]],
               optional: bool = False) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        data = await _body(request, model, optional=optional)
        aid = request.app[NODE].aid
        return json_response(await _judged(call(aid, request.match_info["id"], data, request)))
    return handler


accept_offer = _follow_up(
    AcceptBody, lambda aid, rid, d, r: aid.accept(rid, r.match_info["offer"], d.get("note")),
    optional=True)
withdraw_offer = _follow_up(
    WithdrawBody,
    lambda aid, rid, d, r: aid.withdraw(rid, r.match_info["offer"], d.get("reason")),
    optional=True)
post_update = _follow_up(
    UpdateBody, lambda aid, rid, d, r: aid.update(rid, d["note"], d.get("status")))
close_request = _follow_up(CloseBody, lambda aid, rid, d, r: aid.close(rid, d["summary"]))


async def put_capabilities(request: web.Request) -> web.Response:
    """PUT /api/v1/capabilities: publish this node's capability profile."""
    data = await _body(request, CapabilitiesPut)
    fields, routing = split_routing(data)
    payload = parse_payload_json({**fields, "kind": "capabilities"})
    assert isinstance(payload, Capabilities)
    tlp = TLP(routing["tlp"])
    if tlp not in (TLP.GREEN, TLP.AMBER, TLP.CLEAR):
        raise ApiError(422, "invalid", N_("a capability profile is CLEAR, GREEN or AMBER"))
    created = await request.app[NODE].aid.publish_capabilities(payload, tlp,
                                                               routing.get("audience"))
    return json_response(created)


async def get_capabilities(request: web.Request) -> web.Response:
    """GET /api/v1/capabilities?need=&language=&available=."""
    query = parse_query(request, CapabilitiesQuery)
    found = await request.app[NODE].aid.capabilities(
        need=None if query.need is None else query.need.value, language=query.language,
        available=query.available)
    return json_response({"capabilities": found})


async def suggest(request: web.Request) -> web.Response:
    """GET /api/v1/aid/suggest?need=KIND&language=fr."""
    query = parse_query(request, SuggestQuery)
    return json_response(await request.app[NODE].aid.suggest(query.need, query.language))


_W = (400, 413, 422, 503)
_REQ = "/api/v1/aid/requests"
AID_ROUTES: tuple[Operation, ...] = (
    Operation("POST", _REQ, post_request, "raiseAidRequest",
              "Ask chosen peers for help during an incident", Scope.WRITE, "aid", status=201,
              body=(AidRequestSubmit,), response=(AidRequestOut,), errors=_W,
              description="Default TLP AMBER (every member, or the audience named); RED "
                          "needs an audience. Offers and updates are sealed to the same "
                          "audience."),
    Operation("GET", _REQ, list_requests, "listAidRequests",
              "Requests for assistance this node can read, newest first", Scope.READ, "aid",
              query=AidListQuery, response=(AidRequestList,), errors=(400, 422)),
    Operation("GET", "/api/v1/aid/suggest", suggest, "suggestAidAudience",
              "Who can help with a need (and a language), available now: an audience",
              Scope.READ, "aid", query=SuggestQuery, response=(SuggestOut,), errors=(422,)),
    Operation("GET", _REQ + "/{id}", get_request, "getAidRequest",
              "One request with its status, offers and updates", Scope.READ, "aid",
              response=(AidRequestOut,), errors=(404,)),
    Operation("POST", _REQ + "/{id}/offers", post_offer, "offerAid",
              "Offer help (readable by the requester and the request's audience only)",
              Scope.WRITE, "aid", status=201, body=(OfferSubmit,), response=(OfferCreated,),
              errors=(*_W, 404, 409)),
    Operation("POST", _REQ + "/{id}/offers/{offer}/accept", accept_offer, "acceptAidOffer",
              "Accept an offer (the requester only)", Scope.WRITE, "aid", body=(AcceptBody,),
              body_required=False, response=(AidRequestOut,), errors=(*_W, 403, 404, 409)),
    Operation("POST", _REQ + "/{id}/offers/{offer}/withdraw", withdraw_offer,
              "withdrawAidOffer", "Withdraw an offer (its author only)", Scope.WRITE, "aid",
              body=(WithdrawBody,), body_required=False, response=(AidRequestOut,),
              errors=(*_W, 403, 404, 409)),
    Operation("POST", _REQ + "/{id}/updates", post_update, "updateAidRequest",
              "A note (requester or accepted helper); the status (requester only)",
              Scope.WRITE, "aid", body=(UpdateBody,), response=(AidRequestOut,),
              errors=(*_W, 403, 404, 409)),
    Operation("POST", _REQ + "/{id}/close", close_request, "closeAidRequest",
              "Close with a summary (the requester only)", Scope.WRITE, "aid",
              body=(CloseBody,), response=(AidRequestOut,), errors=(*_W, 403, 404, 409)),
    Operation("PUT", "/api/v1/capabilities", put_capabilities, "putCapabilities",
              "Publish this node's capability profile (the newest wins)", Scope.ADMIN, "aid",
              body=(CapabilitiesPut,), response=(CapabilityOut,), errors=_W),
    Operation("GET", "/api/v1/capabilities", get_capabilities, "listCapabilities",
              "The expertise directory: each member's newest profile, filtered",
              Scope.READ, "aid", query=CapabilitiesQuery, response=(CapabilityList,),
              errors=(422,)),
)


async def forward_aid_events(aid: NodeAid, write: Callable[[str], Awaitable[None]]) -> None:
    """Send every new aid entry as ``event: aid`` (``data.kind``: request, offer,
    withdraw, accept, update, close) until cancelled: the stream's side task
    (agent/api/stream.py). Aid events are live only (no ``id:``, not replayed)."""
    queue = aid.subscribe()
    try:
        while True:
            event = await queue.get()
            await write(f"event: aid\ndata: {dumps(event)}\n\n")
    finally:
        aid.unsubscribe(queue)
