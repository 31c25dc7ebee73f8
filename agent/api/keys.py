"""Local API routes for key rotation and compromise (docs/operations.md, "Rotate a
key" and "Recover from a compromised key").

- ``POST /api/v1/key/rotate`` (admin) ``{"new_key", "countersig"}`` -> 201: this node
  signs the hand-over to the key ``entraide key rotate`` put in ``next-key/``
  (agent/node/keys.py); it then signs nothing more until restarted (503).
- ``POST /api/v1/peers/{name}/compromised`` (admin) ``{"since_seq"}`` or ``{"since"}``
  -> 200: that member's current key is compromised from that seq (or from its first
  entry signed at or after that time): its entries from there are quarantined
  (``entraide peers compromised``).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agent.api.models import PeerOut
from agent.config.tokens import Scope
from agent.web.common import NODE, json_response, read_json
from agent.web.openapi import Operation
from protocol.handover import Handover
from protocol.payloads import UtcDatetime

__all__ = ["KEY_ROUTES", "CompromisedRequest", "RotateRequest", "Rotated"]


class RotateRequest(BaseModel):
    """The new key and its countersignature over (old key, new key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    new_key: str
    countersig: str


class Rotated(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    seq: int
    old_key: str
    new_key: str
    new_fingerprint: str


class CompromisedRequest(BaseModel):
    """From which seq, or from which time (its first entry signed then or later), the
    member's current key is compromised: exactly one of them."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    since_seq: int | None = Field(None, ge=1, le=2**53)
    since: UtcDatetime | None = None


async def declare_compromised(request: web.Request) -> web.Response:
    """POST /api/v1/peers/{name}/compromised: quarantine a member's key from a point."""
    node = request.app[NODE]
    body = CompromisedRequest.model_validate(await read_json(request))
    since_ms = None if body.since is None else int(body.since.timestamp() * 1000)
    entry = await node.keys.declare_compromised(request.match_info["name"],
                                                since_seq=body.since_seq, since_ms=since_ms)
    return json_response(node.peer_json(entry))


async def rotate_key(request: web.Request) -> web.Response:
    """POST /api/v1/key/rotate: sign the hand-over to the new key."""
    node = request.app[NODE]
    body = RotateRequest.model_validate(await read_json(request))
    payload = Handover.model_validate({"new_key": body.new_key, "countersig": body.countersig})
    entry = await node.keys.hand_over(payload)
    new = node.keys.new_key
    assert new is not None
    return json_response({"id": entry.id, "seq": entry.seq, "old_key": entry.origin.text,
                          "new_key": new.text, "new_fingerprint": new.fingerprint},
                         status=201)


KEY_ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/key/rotate", rotate_key, "rotateKey",
              "Hand this node's key over to a new one (entraide key rotate)", Scope.ADMIN,
              "node", status=201, body=(RotateRequest,), response=(Rotated,),
              errors=(400, 413, 422, 503),
              description="Signs the hand-over entry (GREEN, the last of the old key's "
                          "chain) naming the key in the data dir's next-key/, with that "
                          "key's countersignature. The node then signs nothing more "
                          "(503) until it is restarted, when it installs the new key."),
    Operation("POST", "/api/v1/peers/{name}/compromised", declare_compromised,
              "declareCompromised",
              "Declare a peer's key compromised (entraide peers compromised)", Scope.ADMIN,
              "peers", body=(CompromisedRequest,), response=(PeerOut,),
              errors=(400, 404, 413, 422),
              description="From 'since_seq', or from the key's first entry signed at or "
                          "after 'since': this node refuses that key's entries from there, "
                          "and shows those it holds as quarantined. Kept in peers.toml; an "
                          "earlier mark stands. The member's new key comes by its card "
                          "(entraide peers update NAME --card CARD)."),
)
