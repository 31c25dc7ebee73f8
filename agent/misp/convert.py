"""MISP event JSON through the node: ``POST /api/v1/import/misp`` (:data:`MISP_ROUTES`)
shares an event's indicators as this node's observations; :func:`import_misp_event` is
the same import for callers in the node's process (``entraide import FILE``).

The mapping lives beside this module: agent/misp/parse.py (in) and agent/misp/export.py
(out); docs/misp.md has the fidelity table.

Invariants:
- An import is all-or-nothing for the attributes it takes: they are committed in one
  transaction (group commit), or nothing is written.
- An attribute whose indicator this node already shares (same type and value, its own,
  not retracted) or that repeats one earlier in the same import is not shared again.
- A TLP:RED default without an audience is refused before anything is read (422).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agent.config.tokens import Scope
from agent.i18n import N_, localize, negotiate
from agent.misp.export import export_misp
from agent.misp.parse import MispImport, parse_misp
from agent.node.node import Node, Submission
from agent.storage.ledger import MAX_APPEND_BATCH
from agent.web.common import NODE, ApiError, json_response, parse_query
from agent.web.openapi import Operation
from protocol.entries import TLP
from protocol.errors import PayloadError

__all__ = [
    "MAX_MISP_BYTES",
    "MISP_ROUTES",
    "MispImport",
    "export_misp",
    "import_misp",
    "import_misp_event",
    "localized_reasons",
    "parse_misp",
]

MAX_MISP_BYTES = 16 * 1024 * 1024
"""Largest MISP document accepted by the import route."""

RED_NEEDS_AUDIENCE = N_("TLP:RED needs an audience (?audience=NAME,...)")
"""English; the API's error middleware answers it in the reader's language."""


# --- the route --------------------------------------------------------------------------


class MispImportQuery(BaseModel):
    """Query of ``POST /api/v1/import/misp``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tlp: TLP | None = Field(None, description="TLP of attributes whose event and attribute "
                                              "carry no tlp:* tag (default GREEN, AMBER for "
                                              "personal data: email-addr, user-account)")
    audience: Annotated[str | None, Field(max_length=4096)] = Field(
        None, description="comma-separated peer names, for AMBER and RED attributes")


class MispRefusal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    value: str
    reason: str


class MispImported(BaseModel):
    """Answer of ``POST /api/v1/import/misp``: every attribute is counted once, as
    imported, already shared, repeated, or listed in context (``to_ids: false``),
    unsupported or invalid; ``mapped`` lists imported ones that lost a part."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: int
    attributes: int
    imported: int
    ids: list[str]
    already_shared: int
    repeated: int
    context: list[MispRefusal]
    mapped: list[MispRefusal]
    unsupported: list[MispRefusal]
    invalid: list[MispRefusal]


async def import_misp_event(node: Node, document: Any, *, tlp: TLP | None = None,
                            audience: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Share the indicators of MISP event JSON (``{"Event": ...}``, a list of events or
    a REST search answer) as ``node``'s observations; the answer of the import route
    (:class:`MispImported`'s fields).

    Args:
        tlp: the TLP of attributes whose event and attribute carry no ``tlp:*`` tag
            (None: GREEN, AMBER for a personal-data type).
        audience: peer names, for AMBER and RED attributes.

    Raises:
        PayloadError: no MISP event in ``document``, or ``tlp`` is RED and ``audience``
            is empty (nothing is written).
        ApiError: more attributes to share than one import takes (413).
    """
    if tlp is TLP.RED and not audience:
        raise PayloadError(RED_NEEDS_AUDIENCE)
    parsed = parse_misp(document, default_tlp=tlp)
    submissions: list[Submission] = []
    already = 0
    for observation, item_tlp in parsed.items:
        page = await node.ledger.list_observations(
            type=observation.type.value, value=observation.value, origin=node.public_key,
            limit=1)
        if page.items:
            already += 1
            continue
        if item_tlp is TLP.RED and not audience:
            parsed.invalid.append({"type": observation.type.value, "value": observation.value,
                                   "reason": RED_NEEDS_AUDIENCE})
            continue
        submissions.append(Submission(observation, item_tlp,
                                      audience if item_tlp.encrypted else None))
    if len(submissions) > MAX_APPEND_BATCH:
        raise ApiError(413, "batch_too_large",
                       N_("at most {max} attributes per import, not {n}").format(
                           max=MAX_APPEND_BATCH, n=len(submissions)))
    entries = await node.submit(submissions) if submissions else []
    return {
        "events": parsed.events, "attributes": parsed.attributes, "imported": len(entries),
        "ids": [e.id for e in entries], "already_shared": already, "repeated": parsed.repeated,
        "context": parsed.context, "mapped": parsed.mapped,
        "unsupported": parsed.unsupported, "invalid": parsed.invalid,
    }


async def import_misp(request: web.Request) -> web.Response:
    """POST /api/v1/import/misp: share a MISP event's indicators as observations."""
    node = request.app[NODE]
    query = parse_query(request, MispImportQuery)
    audience = tuple(n.strip() for n in (query.audience or "").split(",") if n.strip()) or None
    if query.tlp is TLP.RED and audience is None:
        raise ApiError(422, "audience_required", RED_NEEDS_AUDIENCE)
    document = await _read_document(request)
    try:
        answer = await import_misp_event(node, document, tlp=query.tlp, audience=audience)
    except PayloadError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    lang = negotiate(request.headers.get("Accept-Language"))
    return json_response(localized_reasons(answer, lang), status=201,
                         headers={"Content-Language": lang})


def localized_reasons(answer: dict[str, Any], lang: str) -> dict[str, Any]:
    """``answer`` (an import's, in English) with the ``reason`` of each attribute listed
    in ``context``, ``mapped``, ``unsupported`` and ``invalid`` in ``lang``: translated
    where shown (:func:`agent.i18n.localize`), as the API's error messages are, so the
    CLI (which sends its language as Accept-Language) shows them in its language too."""
    shown = dict(answer)
    for key in _LISTED:
        shown[key] = [{**item, "reason": localize(item["reason"], lang)}
                      for item in answer[key]]
    return shown


_LISTED = ("context", "mapped", "unsupported", "invalid")


async def _read_document(request: web.Request) -> Any:
    declared = request.content_length
    if declared is not None and declared > MAX_MISP_BYTES:
        raise ApiError(413, "body_too_large", f"the body is over {MAX_MISP_BYTES} bytes")
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if len(data) > MAX_MISP_BYTES:
            raise ApiError(413, "body_too_large", f"the body is over {MAX_MISP_BYTES} bytes")
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", N_("the body is not MISP JSON: {reason}").format(
            reason=exc)) from exc


MISP_ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/import/misp", import_misp, "importMisp",
              "Share the indicators of MISP event JSON as observations", Scope.WRITE,
              "observations", status=201, query=MispImportQuery, response=(MispImported,),
              errors=(400, 413, 422),
              description="The body is MISP event JSON ({\"Event\": ...}, a list of events, "
                          "or a REST search answer). Attributes marked to_ids: false are "
                          "context, listed in 'context' and never shared; attributes of "
                          "unsupported types are listed in 'unsupported', never dropped "
                          "silently. A TLP of RED needs an audience (422)."),
)
