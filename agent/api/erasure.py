"""Local API routes for erasure (docs/privacy.md, "Erasure"; design: "Privacy:
retention and erasure").

- ``POST /api/v1/observations/{id}/erase`` ``{"reason"}`` (write scope, own entries
  only) -> 202: the erasure is signed and published, and the body is dropped here
  at once; every other holder drops it when the erasure reaches it and sends a
  receipt. 403 ``not_own_entry``, 404 ``not_found``, 409 ``already_erased``.
- ``GET /api/v1/observations/{id}/erasure`` (read scope) -> ``{"erased_at",
  "receipts": [{"node", "at"}]}``: which nodes have erased it and when, for the
  privacy officer. 404 when unknown or not erased.

``GET /api/v1/observations/{id}`` answers 410 ``erased`` afterwards (agent/node/node.py).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from agent.config.tokens import Scope
from agent.web.common import NODE, json_response, read_json
from agent.web.openapi import Operation
from protocol.payload_fields import Note

__all__ = ["ERASURE_ROUTES", "EraseRequest", "ErasureAccepted", "ErasureStatus"]


class EraseRequest(BaseModel):
    """Why the entry is erased (optional; for the privacy officer, never the value)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    reason: Note | None = None


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErasureAccepted(_Out):
    id: str
    of: str
    seq: int
    erased_at: str


class ErasureReceiptOut(_Out):
    node: str
    key: str
    at: str


class ErasureStatus(_Out):
    id: str
    erasure: str
    erased_at: str
    receipts: list[ErasureReceiptOut]


async def erase_observation(request: web.Request) -> web.Response:
    """POST /api/v1/observations/{id}/erase: erase one of this node's own entries."""
    node = request.app[NODE]
    data = await read_json(request, allow_empty=True)
    body = EraseRequest.model_validate({} if data is None else data)
    result = await node.erasure.erase(request.match_info["id"], body.reason)
    return json_response(result, status=202)


async def get_erasure(request: web.Request) -> web.Response:
    """GET /api/v1/observations/{id}/erasure: the erasure and its receipts."""
    node = request.app[NODE]
    return json_response(await node.erasure.status(request.match_info["id"]))


ERASURE_ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/observations/{id}/erase", erase_observation,
              "eraseObservation", "Erase one of this node's own entries on every node",
              Scope.WRITE, "observations", status=202, body=(EraseRequest,),
              body_required=False, response=(ErasureAccepted,),
              errors=(400, 413, 422, 503, 404, 409),
              description="Signs an erasure entry (the target's TLP and audience) and "
                          "drops the body here at once, without a trace in the node's "
                          "files; every node holding it does the same when the erasure "
                          "arrives and sends back a signed receipt. 403 for another "
                          "origin's entry, 409 when already erased."),
    Operation("GET", "/api/v1/observations/{id}/erasure", get_erasure, "getErasure",
              "When an entry was erased, and which nodes have confirmed", Scope.READ,
              "observations", response=(ErasureStatus,), errors=(404,)),
)
