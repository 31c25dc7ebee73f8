"""MISP event JSON, in and out (docs/operations.md, "MISP").

``parse_misp`` turns MISP events (the JSON MISP exports, its REST search answers, or
a list of events) into observations with their TLP, and reports every attribute it
does not take, with the reason: unsupported types are listed, never silently dropped.
``export_misp`` writes observations as one MISP event. ``POST /api/v1/import/misp``
(:data:`MISP_ROUTES`) shares an event's indicators as this node's observations.

Mapping (both ways): ip-src/ip-dst ↔ ipv4-addr/ipv6-addr, domain/hostname ↔
domain-name, url, email-src/email-dst/email ↔ email-addr, md5/sha1/sha256/sha512 ↔
file hashes, vulnerability ↔ cve, AS ↔ autonomous-system. Tags ``tlp:*`` (attribute
first, then event) give the TLP; other tags become observation tags; the comment (or
the event's info) the English description; the event's threat level the severity.

Invariants:
- An import is all-or-nothing for the attributes it takes: they are committed in one
  transaction (group commit), or nothing is written.
- An attribute whose indicator this node already shares (same type and value, its own,
  not retracted) or that repeats one earlier in the same import is not shared again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config.tokens import Scope
from agent.node.node import Submission
from agent.storage.ledger import MAX_APPEND_BATCH
from agent.web.common import NODE, ApiError, json_response, parse_query
from agent.web.openapi import Operation
from protocol.entries import TLP
from protocol.errors import PayloadError
from protocol.indicators import IndicatorType
from protocol.payloads import (
    MAX_DESCRIPTION_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    Observation,
    format_validation_error,
)
from protocol.stix import stix_uuid

__all__ = [
    "MAX_MISP_BYTES",
    "MISP_ROUTES",
    "MispImport",
    "export_misp",
    "import_misp",
    "parse_misp",
]

MAX_MISP_BYTES = 16 * 1024 * 1024
"""Largest MISP document accepted by the import route."""

_TO_TYPE: dict[str, IndicatorType | None] = {
    "ip-src": None, "ip-dst": None,  # v4 or v6, told by the value
    "domain": IndicatorType.DOMAIN_NAME, "hostname": IndicatorType.DOMAIN_NAME,
    "url": IndicatorType.URL,
    "email-src": IndicatorType.EMAIL_ADDR, "email-dst": IndicatorType.EMAIL_ADDR,
    "email": IndicatorType.EMAIL_ADDR,
    "md5": IndicatorType.FILE_MD5, "sha1": IndicatorType.FILE_SHA1,
    "sha256": IndicatorType.FILE_SHA256, "sha512": IndicatorType.FILE_SHA512,
    "vulnerability": IndicatorType.CVE, "AS": IndicatorType.AUTONOMOUS_SYSTEM,
}
_FROM_TYPE: dict[IndicatorType, tuple[str, str]] = {
    IndicatorType.IPV4_ADDR: ("ip-dst", "Network activity"),
    IndicatorType.IPV6_ADDR: ("ip-dst", "Network activity"),
    IndicatorType.DOMAIN_NAME: ("domain", "Network activity"),
    IndicatorType.URL: ("url", "Network activity"),
    IndicatorType.EMAIL_ADDR: ("email-src", "Payload delivery"),
    IndicatorType.FILE_MD5: ("md5", "Payload delivery"),
    IndicatorType.FILE_SHA1: ("sha1", "Payload delivery"),
    IndicatorType.FILE_SHA256: ("sha256", "Payload delivery"),
    IndicatorType.FILE_SHA512: ("sha512", "Payload delivery"),
    IndicatorType.CVE: ("vulnerability", "External analysis"),
    IndicatorType.AUTONOMOUS_SYSTEM: ("AS", "Network activity"),
}
_TLP_TAGS = {"tlp:white": TLP.CLEAR, "tlp:clear": TLP.CLEAR, "tlp:green": TLP.GREEN,
             "tlp:amber": TLP.AMBER, "tlp:amber+strict": TLP.AMBER_STRICT, "tlp:red": TLP.RED}
_TAG_OF_TLP = {TLP.CLEAR: "tlp:clear", TLP.GREEN: "tlp:green", TLP.AMBER: "tlp:amber",
               TLP.AMBER_STRICT: "tlp:amber+strict", TLP.RED: "tlp:red"}
_TLP_ORDER = (TLP.CLEAR, TLP.GREEN, TLP.AMBER, TLP.AMBER_STRICT, TLP.RED)
_SEVERITY = {"1": "high", "2": "medium", "3": "low"}
_THREAT_LEVEL = {"critical": "1", "high": "1", "medium": "2", "low": "3"}
_MAX_EVENTS = 1000
# Rule languages as MISP attribute types (MISP keeps Suricata rules as snort).
_RULE_TYPES = {"yara": ("yara", "Payload installation"),
               "sigma": ("sigma", "Payload installation"),
               "snort": ("snort", "Network activity"),
               "suricata": ("snort", "Network activity")}


@dataclass
class MispImport:
    """What a MISP document yields: observations to share, and what was not taken."""

    items: list[tuple[Observation, TLP]] = field(default_factory=list)
    unsupported: list[dict[str, str]] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    repeated: int = 0
    events: int = 0
    attributes: int = 0


def _events(document: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(document, list):
        for item in document:
            yield from _events(item)
    elif isinstance(document, Mapping):
        if "response" in document:
            yield from _events(document["response"])
        elif isinstance(document.get("Event"), Mapping):
            yield document["Event"]
        elif "Attribute" in document or "Object" in document:
            yield document


def _tags(holder: Mapping[str, Any]) -> list[str]:
    tags = holder.get("Tag") or []
    return [t["name"] for t in tags if isinstance(t, Mapping) and isinstance(t.get("name"), str)]


def _attributes(event: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for attribute in event.get("Attribute") or []:
        if isinstance(attribute, Mapping):
            yield attribute
    for obj in event.get("Object") or []:
        if isinstance(obj, Mapping):
            for attribute in obj.get("Attribute") or []:
                if isinstance(attribute, Mapping):
                    yield attribute


def _tlp_of(tags: Sequence[str]) -> TLP | None:
    found = [_TLP_TAGS[t.strip().lower()] for t in tags if t.strip().lower() in _TLP_TAGS]
    return max(found, key=_TLP_ORDER.index) if found else None


def parse_misp(document: Any, *, default_tlp: TLP = TLP.GREEN) -> MispImport:
    """The observations of MISP events (see the module docstring for the mapping).

    Raises:
        PayloadError: the document holds no MISP event, or more than 1,000 events.
    """
    result = MispImport()
    seen: set[tuple[str, str]] = set()
    events = list(_events(document))
    if not events:
        raise PayloadError("no MISP event found: expected {\"Event\": {...}}, a list of "
                           "events, or a REST search answer {\"response\": [...]}")
    if len(events) > _MAX_EVENTS:
        raise PayloadError(f"at most {_MAX_EVENTS} events per import, not {len(events)}")
    for event in events:
        result.events += 1
        event_tags = _tags(event)
        event_tlp = _tlp_of(event_tags) or default_tlp
        info = event.get("info") if isinstance(event.get("info"), str) else None
        severity = _SEVERITY.get(str(event.get("threat_level_id", "")))
        for attribute in _attributes(event):
            if attribute.get("deleted") is True:
                continue
            result.attributes += 1
            item = _attribute(attribute, event_tags, event_tlp, info, severity, result)
            if item is None:
                continue
            key = (item[0].type.value, item[0].value)
            if key in seen:
                result.repeated += 1
                continue
            seen.add(key)
            result.items.append(item)
    return result


def _attribute(attribute: Mapping[str, Any], event_tags: list[str], event_tlp: TLP,
               info: str | None, severity: str | None,
               result: MispImport) -> tuple[Observation, TLP] | None:
    misp_type = str(attribute.get("type", ""))
    value = attribute.get("value")
    report = {"type": misp_type[:64], "value": str(value)[:200]}
    if misp_type not in _TO_TYPE:
        result.unsupported.append({**report, "reason": f"MISP type {misp_type[:64]!r} has no "
                                                       "Entraide indicator type"})
        return None
    if not isinstance(value, str):
        result.invalid.append({**report, "reason": "the value is not a string"})
        return None
    kind = _TO_TYPE[misp_type] or (
        IndicatorType.IPV6_ADDR if ":" in value else IndicatorType.IPV4_ADDR)
    tags = _tags(attribute)
    tlp = _tlp_of(tags) or event_tlp
    labels = [t.strip() for t in [*event_tags, *tags]
              if t.strip().lower() not in _TLP_TAGS and 0 < len(t.strip()) <= MAX_TAG_CHARS]
    fields: dict[str, Any] = {"type": kind.value, "value": value,
                              "tags": list(dict.fromkeys(labels))[:MAX_TAGS]}
    comment = attribute.get("comment")
    text = comment if isinstance(comment, str) and comment.strip() else info
    if text and text.strip():
        fields["description"] = {"en": text[:MAX_DESCRIPTION_CHARS]}
    if severity is not None:
        fields["severity"] = severity
    for key in ("first_seen", "last_seen"):
        if isinstance(attribute.get(key), str) and attribute[key]:
            fields[key] = attribute[key]
    try:
        return Observation.model_validate(fields), tlp
    except ValidationError as exc:
        result.invalid.append({**report, "reason": format_validation_error(exc, "observation")})
    except PayloadError as exc:
        result.invalid.append({**report, "reason": str(exc)})
    return None


def export_misp(observations: Sequence[Mapping[str, Any]], *, info: str,
                now: datetime, rules: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Observations and detection rules (as the API returns them) as one MISP event,
    ``{"Event": {...}}``.

    A rule is a ``yara``, ``sigma`` or ``snort`` attribute (a Suricata rule a ``snort``
    one, as MISP does, tagged ``entraide:rule-type="suricata"`` so it comes back as
    itself) whose comment is the rule's name; an invalid, retracted or superseded rule
    is left out. Attribute uuids derive from entry ids, so exporting twice gives the
    same uuids.
    """
    attributes = []
    tlps: list[TLP] = []
    threat = "4"
    for obs in observations:
        kind = IndicatorType(obs["type"])
        misp_type, category = _FROM_TYPE[kind]
        tlp = TLP(obs["tlp"])
        tlps.append(tlp)
        tags = [{"name": _TAG_OF_TLP[tlp]}, *({"name": t} for t in obs.get("tags") or ())]
        if obs.get("origin_name"):
            tags.append({"name": f'entraide:origin="{obs["origin_name"]}"'})
        description = obs.get("description") or {}
        attribute: dict[str, Any] = {
            "uuid": stix_uuid("misp-attribute:" + obs["id"]), "type": misp_type,
            "category": category, "value": obs["value"], "to_ids": True,
            "comment": description.get("en") or description.get("fr") or "",
            "timestamp": str(int(obs["ts"]) // 1000), "distribution": "5", "Tag": tags,
        }
        for key in ("first_seen", "last_seen"):
            if obs.get(key):
                attribute[key] = obs[key]
        attributes.append(attribute)
        level = _THREAT_LEVEL.get(obs.get("severity") or "", "4")
        threat = min(threat, level)
    for rule in rules:
        if not rule.get("valid", True) or rule.get("retracted") or rule.get("superseded_by"):
            continue
        tlp = TLP(rule["tlp"])
        tlps.append(tlp)
        misp_type, category = _RULE_TYPES[rule["rule_type"]]
        tags = [{"name": _TAG_OF_TLP[tlp]}]
        if rule["rule_type"] != misp_type:
            tags.append({"name": f'entraide:rule-type="{rule["rule_type"]}"'})
        if rule.get("origin_name"):
            tags.append({"name": f'entraide:origin="{rule["origin_name"]}"'})
        attributes.append({
            "uuid": stix_uuid("misp-attribute:" + rule["id"]), "type": misp_type,
            "category": category, "value": rule["text"], "to_ids": True,
            "comment": rule["name"], "timestamp": str(int(rule["ts"]) // 1000),
            "distribution": "5", "Tag": tags})
    event: dict[str, Any] = {
        "uuid": stix_uuid(f"misp-event:{info}:{now.isoformat()}"), "info": info,
        "date": now.astimezone(UTC).strftime("%Y-%m-%d"), "threat_level_id": threat,
        "analysis": "2", "distribution": "0", "published": False,
        "timestamp": str(int(now.timestamp())), "Attribute": attributes,
    }
    if tlps:
        event["Tag"] = [{"name": _TAG_OF_TLP[max(tlps, key=_TLP_ORDER.index)]}]
    return {"Event": event}


# --- the route --------------------------------------------------------------------------


class MispImportQuery(BaseModel):
    """Query of ``POST /api/v1/import/misp``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tlp: TLP = Field(TLP.GREEN, description="TLP of attributes whose event and attribute "
                                            "carry no tlp:* tag")
    audience: Annotated[str | None, Field(max_length=4096)] = Field(
        None, description="comma-separated peer names, for AMBER and RED attributes")


class MispRefusal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    value: str
    reason: str


class MispImported(BaseModel):
    """Answer of ``POST /api/v1/import/misp``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: int
    attributes: int
    imported: int
    ids: list[str]
    already_shared: int
    repeated: int
    unsupported: list[MispRefusal]
    invalid: list[MispRefusal]


async def import_misp(request: web.Request) -> web.Response:
    """POST /api/v1/import/misp: share a MISP event's indicators as observations."""
    node = request.app[NODE]
    query = parse_query(request, MispImportQuery)
    document = await _read_document(request)
    try:
        parsed = parse_misp(document, default_tlp=query.tlp)
    except PayloadError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    audience = tuple(n.strip() for n in (query.audience or "").split(",") if n.strip()) or None
    submissions: list[Submission] = []
    already = 0
    for observation, tlp in parsed.items:
        page = await node.ledger.list_observations(
            type=observation.type.value, value=observation.value, origin=node.public_key,
            limit=1)
        if page.items:
            already += 1
            continue
        if tlp is TLP.RED and audience is None:
            parsed.invalid.append({"type": observation.type.value, "value": observation.value,
                                   "reason": "TLP:RED needs an audience (?audience=NAME,...)"})
            continue
        submissions.append(Submission(observation, tlp, audience if tlp.encrypted else None))
    if len(submissions) > MAX_APPEND_BATCH:
        raise ApiError(413, "batch_too_large",
                       f"at most {MAX_APPEND_BATCH} attributes per import, not "
                       f"{len(submissions)}")
    entries = await node.submit(submissions) if submissions else []
    return json_response({
        "events": parsed.events, "attributes": parsed.attributes, "imported": len(entries),
        "ids": [e.id for e in entries], "already_shared": already, "repeated": parsed.repeated,
        "unsupported": parsed.unsupported, "invalid": parsed.invalid,
    }, status=201)


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
        raise ApiError(400, "bad_json", f"the body is not MISP JSON: {exc}") from exc


MISP_ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/api/v1/import/misp", import_misp, "importMisp",
              "Share the indicators of MISP event JSON as observations", Scope.WRITE,
              "observations", status=201, query=MispImportQuery, response=(MispImported,),
              errors=(400, 413, 422),
              description="The body is MISP event JSON ({\"Event\": ...}, a list of events, "
                          "or a REST search answer). Attributes of unsupported types are "
                          "listed in 'unsupported', never dropped silently."),
)
