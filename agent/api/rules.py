"""Local API routes for shared tools: detection rules and CACAO playbooks
(docs/operations.md, "Shared tools"; design: "Mutual aid, pooled expertise, shared
tools").

Invariants:
- A rule or playbook is checked by its real engine before anything is written: a
  refused one answers 422 ``invalid_rule`` with the engine's message (line and
  reason) and changes nothing.
- The export holds only valid, readable, unretracted, current rules, and loads in the
  engine as is (``text/plain``).
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agent.api.models import Audience, TlpLabel
from agent.config.tokens import Scope
from agent.errors import InvalidRuleError, UnknownAudienceError
from agent.node import rules as tools
from agent.node.node import Node
from agent.web.common import NODE, ApiError, json_response, parse_query, read_json
from agent.web.openapi import Operation
from protocol.entries import TLP, VerifiedEntry
from protocol.payload_fields import EntryId, RuleText, RuleType, Title
from protocol.payload_models import LocalizedText
from protocol.payloads import Rule

__all__ = ["RULE_ROUTES"]

_MAX_PLAYBOOK_BODY = 192 * 1024


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class RuleSubmit(_In):
    """A detection rule to share: checked by its engine first."""

    rule_type: RuleType
    name: Title
    text: RuleText
    description: LocalizedText | None = None
    supersedes: EntryId | None = None
    tlp: TlpLabel = TLP.GREEN
    audience: Audience | None = None


class RuleQuery(_In):
    """Filters of the rule and playbook lists."""

    type: RuleType | None = None
    origin: str | None = Field(default=None, max_length=200)
    include_retracted: bool = False
    current: bool = False
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=64)


class ExportQuery(_In):
    type: RuleType


class ToolCreated(BaseModel):
    id: str
    seq: int
    ts: int
    tlp: str
    valid: Literal[True] = True


class RuleList(BaseModel):
    rules: list[dict[str, Any]]
    next: str | None


class PlaybookList(BaseModel):
    playbooks: list[dict[str, Any]]
    next: str | None


def _invalid(exc: InvalidRuleError) -> ApiError:
    return ApiError(422, "invalid_rule", str(exc))


def _created(entry: VerifiedEntry, location: str) -> web.Response:
    return json_response({"id": entry.id, "seq": entry.seq, "ts": entry.ts,
                          "tlp": entry.tlp.value, "valid": True}, status=201,
                         headers={"Location": f"{location}/{entry.id}"})


async def post_rule(request: web.Request) -> web.Response:
    """POST /api/v1/rules: share a rule its engine accepts."""
    node = request.app[NODE]
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    body = RuleSubmit.model_validate(data)
    rule = Rule(rule_type=body.rule_type, name=body.name, text=body.text,
                description=body.description, supersedes=body.supersedes)
    try:
        entry = await tools.submit_rule(node, rule, body.tlp, body.audience)
    except InvalidRuleError as exc:
        raise _invalid(exc) from exc
    return _created(entry, "/api/v1/rules")


async def post_playbook(request: web.Request) -> web.Response:
    """POST /api/v1/playbooks: a CACAO 2.0 playbook (the JSON object itself; routing in
    the query: ``?tlp=&audience=a,b&supersedes=``)."""
    node = request.app[NODE]
    data = await read_json(request)
    tlp = request.query.get("tlp", "GREEN").upper()
    if tlp not in TLP._value2member_map_:
        raise ApiError(422, "invalid_tlp", f"unknown TLP {tlp!r}")
    names = request.query.get("audience")
    audience = None if not names else tuple(n.strip() for n in names.split(",")[:64])
    supersedes = request.query.get("supersedes")
    if supersedes is not None and (len(supersedes) != 64 or
                                   any(c not in "0123456789abcdefABCDEF" for c in supersedes)):
        raise ApiError(422, "invalid", "supersedes must be an entry id: 64 hex digits")
    try:
        entry = await tools.submit_playbook(node, data, TLP(tlp), audience,
                                            None if supersedes is None else supersedes.lower())
    except InvalidRuleError as exc:
        raise _invalid(exc) from exc
    return _created(entry, "/api/v1/playbooks")


def _origin(node: Node, name: str | None) -> Any:
    if name is None:
        return None
    try:
        return node.key_of(name)
    except UnknownAudienceError as exc:
        raise ApiError(422, "unknown_origin", str(exc)) from exc


async def _list(request: web.Request, kind: str) -> web.Response:
    node = request.app[NODE]
    query = parse_query(request, RuleQuery)
    if kind == "playbook" and query.type is not None:
        raise ApiError(422, "invalid", "playbooks have no type")
    page = await tools.list_of(
        node, kind, rule_type=None if query.type is None else query.type.value,
        origin=_origin(node, query.origin), include_retracted=query.include_retracted,
        include_superseded=not query.current, limit=query.limit, cursor=query.cursor)
    return json_response({f"{kind}s": page.items, "next": page.next})


async def list_rules(request: web.Request) -> web.Response:
    """GET /api/v1/rules: rules this node can read, newest first."""
    return await _list(request, "rule")


async def list_playbooks(request: web.Request) -> web.Response:
    """GET /api/v1/playbooks: playbooks this node can read, newest first."""
    return await _list(request, "playbook")


async def get_rule(request: web.Request) -> web.Response:
    """GET /api/v1/rules/{id}: one rule, with ``valid`` and ``origin_name``."""
    return json_response(await tools.show(request.app[NODE], "rule", request.match_info["id"]))


async def get_playbook(request: web.Request) -> web.Response:
    """GET /api/v1/playbooks/{id}: one playbook."""
    return json_response(await tools.show(request.app[NODE], "playbook",
                                          request.match_info["id"]))


async def export_rules(request: web.Request) -> web.Response:
    """GET /api/v1/rules/export?type=: one ruleset file the engine loads as is."""
    query = parse_query(request, ExportQuery)
    text, skipped = await tools.export_ruleset(request.app[NODE], query.type.value)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Entraide-Skipped": str(skipped)})


async def _retract(request: web.Request, kind: str) -> web.Response:
    data = await read_json(request, allow_empty=True)
    reason = data.get("reason") if isinstance(data, dict) else None
    if reason is not None and (not isinstance(reason, str) or len(reason) > 4096):
        raise ApiError(422, "invalid", "reason must be text of at most 4096 characters")
    entry = await tools.retract_tool(request.app[NODE], kind, request.match_info["id"], reason)
    return json_response({"id": entry.id, "seq": entry.seq, "ts": entry.ts,
                          "of": request.match_info["id"].lower(), "retracted": True},
                         status=201)


async def retract_rule(request: web.Request) -> web.Response:
    """POST /api/v1/rules/{id}/retract: withdraw one of this node's own rules."""
    return await _retract(request, "rule")


async def retract_playbook(request: web.Request) -> web.Response:
    """POST /api/v1/playbooks/{id}/retract: withdraw one of this node's own playbooks."""
    return await _retract(request, "playbook")


_ID = "{id}"  # 64 hex; anything else is 404 (storage.rules.get_tool)
_W = (400, 413, 422, 503)

RULE_ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/rules", post_rule, "submitRule",
              "Share a YARA, Sigma, Suricata or Snort rule, checked by its engine",
              Scope.WRITE, "tools", status=201, body=(RuleSubmit,), response=(ToolCreated,),
              errors=_W, description="422 `invalid_rule` with the engine's message "
                                     "(line and reason): nothing is written."),
    Operation("GET", "/api/v1/rules/export", export_rules, "exportRules",
              "One ruleset file of every valid, current rule of a type", Scope.READ,
              "tools", query=ExportQuery, media_type="text/plain", errors=(422,)),
    Operation("GET", "/api/v1/rules", list_rules, "listRules",
              "Rules this node can read, newest first", Scope.READ, "tools",
              query=RuleQuery, response=(RuleList,), errors=(400, 422)),
    Operation("GET", f"/api/v1/rules/{_ID}", get_rule, "getRule",
              "One rule, with valid, engine_message and origin_name", Scope.READ, "tools",
              errors=(404,)),
    Operation("POST", f"/api/v1/rules/{_ID}/retract", retract_rule, "retractRule",
              "Retract one of this node's own rules", Scope.WRITE, "tools", status=201,
              body_required=False, errors=(*_W, 403, 404, 409)),
    Operation("POST", "/api/v1/playbooks", post_playbook, "submitPlaybook",
              "Share an OASIS CACAO 2.0 playbook, checked against its schema",
              Scope.WRITE, "tools", status=201, response=(ToolCreated,), errors=_W),
    Operation("GET", "/api/v1/playbooks", list_playbooks, "listPlaybooks",
              "Playbooks this node can read, newest first", Scope.READ, "tools",
              query=RuleQuery, response=(PlaybookList,), errors=(400, 422)),
    Operation("GET", f"/api/v1/playbooks/{_ID}", get_playbook, "getPlaybook",
              "One playbook", Scope.READ, "tools", errors=(404,)),
    Operation("POST", f"/api/v1/playbooks/{_ID}/retract", retract_playbook,
              "retractPlaybook", "Retract one of this node's own playbooks", Scope.WRITE,
              "tools", status=201, body_required=False, errors=(*_W, 403, 404, 409)),
)
