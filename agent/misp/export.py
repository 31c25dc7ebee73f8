"""Observations out as MISP events: one event per source MISP event, attributes as MISP
gave them (docs/misp.md).

An observation imported from MISP carries its attribute's metadata in ``x-misp:`` tags
(agent/misp/parse.py); the export gives it back: the attribute's uuid, type (``hostname``
stays ``hostname``, ``filename|sha256`` is written whole again), category, timestamp and
object, in an event with the source event's uuid, info and date. Observations without
that metadata (shared natively, or by another node) go into one more event.

Invariants:
- Every exported attribute is an indicator: ``to_ids`` is true, because an attribute
  MISP marked ``to_ids: false`` was never imported as one.
- Attribute uuids are stable: MISP's own uuid when the observation came from MISP, else
  one derived from the entry id, so exporting twice gives the same uuids and a
  re-import into MISP updates the attributes.
- ``x-misp:`` tags never appear as MISP tags; tags every observation of an event
  shares are the event's tags, the rest the attribute's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.misp.parse import (
    COMPOSITE_TYPES,
    META_PREFIX,
    TLP_ORDER,
    TO_TYPE,
    fr_marker,
    join_meta,
)
from protocol.entries import TLP
from protocol.indicators import IndicatorType
from protocol.stix import stix_uuid

__all__ = ["export_misp"]

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
    IndicatorType.USER_ACCOUNT: ("target-user", "Targeting data"),
}
_IP_TYPES = (IndicatorType.IPV4_ADDR, IndicatorType.IPV6_ADDR)
_TAG_OF_TLP = {TLP.CLEAR: "tlp:clear", TLP.GREEN: "tlp:green", TLP.AMBER: "tlp:amber",
               TLP.AMBER_STRICT: "tlp:amber+strict", TLP.RED: "tlp:red"}
_THREAT_LEVEL = {"critical": "1", "high": "1", "medium": "2", "low": "3"}
# Rule languages as MISP attribute types (MISP keeps Suricata rules as snort).
_RULE_TYPES = {"yara": ("yara", "Payload installation"),
               "sigma": ("sigma", "Payload installation"),
               "snort": ("snort", "Network activity"),
               "suricata": ("snort", "Network activity")}


def split_tags(tags: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """An observation's tags as (its ``x-misp:`` metadata, its other tags)."""
    return join_meta(tags), [t for t in tags if not t.startswith(META_PREFIX)]


def _misp_type(kind: IndicatorType, meta: Mapping[str, str], value: str) -> tuple[str, str]:
    """The MISP type and value of an observation: MISP's own when it still fits."""
    given = meta.get("type", "")
    if given in COMPOSITE_TYPES:
        part_type, other = COMPOSITE_TYPES[given]
        if _fits(part_type, kind):
            if other == "filename" and meta.get("filename"):
                return given, f"{meta['filename']}|{value}"
            if other == "port" and meta.get("port"):
                return given, f"{value}|{meta['port']}"
            if other == "ip" and meta.get("ip"):
                return given, f"{value}|{meta['ip']}"
        given = part_type
    if given in TO_TYPE and _fits(given, kind):
        return given, value
    return _FROM_TYPE[kind][0], value


def _fits(misp_type: str, kind: IndicatorType) -> bool:
    mapped = TO_TYPE.get(misp_type, IndicatorType.CVE)
    return mapped is kind or (mapped is None and kind in _IP_TYPES)


def _comment(description: Mapping[str, str] | None) -> str:
    """Both languages of a description in one MISP comment (parse.split_comment reads it)."""
    en, fr = (description or {}).get("en"), (description or {}).get("fr")
    if en and fr:
        return f"{en}{fr_marker()}{fr}"
    if fr:
        return fr_marker().lstrip("\n") + fr
    return en or ""


@dataclass
class _Event:
    uuid: str
    info: str
    date: str
    tlps: list[TLP] = field(default_factory=list)
    threat: str = "4"
    attributes: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    timestamp: int = 0


def export_misp(observations: Sequence[Mapping[str, Any]], *, info: str,
                now: datetime, rules: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Observations and detection rules (as the API returns them) as MISP events: one
    ``{"Event": {...}}`` when they all belong to one event, else a REST search answer
    ``{"response": [{"Event": ...}, ...]}`` with one event per source MISP event and
    one (``info``) for the rest.

    A rule is a ``yara``, ``sigma`` or ``snort`` attribute (a Suricata rule a ``snort``
    one, as MISP does, tagged ``entraide:rule-type="suricata"`` so it comes back as
    itself) whose comment is the rule's name; an invalid, retracted or superseded rule
    is left out.
    """
    default = _Event(stix_uuid(f"misp-event:{info}:{now.isoformat()}"), info,
                     now.astimezone(UTC).strftime("%Y-%m-%d"))
    events: dict[str, _Event] = {}
    metas = [split_tags(obs.get("tags") or ()) for obs in observations]
    uuids = {meta["uuid"] for meta, _ in metas if "uuid" in meta}
    for obs, (meta, labels) in zip(observations, metas, strict=True):
        if meta.get("part-of") in uuids:
            continue  # written whole again as its domain|ip attribute
        key = meta.get("event", "")
        event = events.get(key) if key else default
        if event is None:
            event = events[key] = _Event(key, meta.get("info") or info,
                                         meta.get("date") or default.date)
        kind = IndicatorType(obs["type"])
        misp_type, value = _misp_type(kind, meta, obs["value"])
        tlp = TLP(obs["tlp"])
        event.tlps.append(tlp)
        event.threat = min(event.threat, _THREAT_LEVEL.get(obs.get("severity") or "", "4"))
        timestamp = int(meta["ts"]) if meta.get("ts", "").isdigit() else int(obs["ts"]) // 1000
        event.timestamp = max(event.timestamp, timestamp)
        if obs.get("origin_name"):
            labels = [*labels, f'entraide:origin="{obs["origin_name"]}"']
        attribute: dict[str, Any] = {
            "uuid": meta.get("uuid") or stix_uuid("misp-attribute:" + obs["id"]),
            "type": misp_type, "category": meta.get("category") or _FROM_TYPE[kind][1],
            "value": value, "to_ids": True, "comment": _comment(obs.get("description")),
            "timestamp": str(timestamp), "distribution": "5"}
        for key in ("first_seen", "last_seen"):
            if obs.get(key):
                attribute[key] = obs[key]
        labels = [_TAG_OF_TLP[tlp], *labels]
        if meta.get("object"):
            holder = event.objects.setdefault(meta["object"], {
                "uuid": meta["object"], "name": meta.get("object-name") or "file",
                "distribution": "5", "timestamp": str(timestamp), "Attribute": []})
            attribute["object_relation"] = meta.get("relation") or misp_type
            attribute["Tag"] = [{"name": t} for t in labels]
            holder["Attribute"].append(attribute)
        else:
            event.attributes.append((attribute, labels))
    for rule in rules:
        if not rule.get("valid", True) or rule.get("retracted") or rule.get("superseded_by"):
            continue
        tlp = TLP(rule["tlp"])
        default.tlps.append(tlp)
        misp_type, category = _RULE_TYPES[rule["rule_type"]]
        labels = [_TAG_OF_TLP[tlp]]
        if rule["rule_type"] != misp_type:
            labels.append(f'entraide:rule-type="{rule["rule_type"]}"')
        if rule.get("origin_name"):
            labels.append(f'entraide:origin="{rule["origin_name"]}"')
        timestamp = int(rule["ts"]) // 1000
        default.timestamp = max(default.timestamp, timestamp)
        default.attributes.append(({
            "uuid": stix_uuid("misp-attribute:" + rule["id"]), "type": misp_type,
            "category": category, "value": rule["text"], "to_ids": True,
            "comment": rule["name"], "timestamp": str(timestamp), "distribution": "5"},
            labels))
    written = [e for e in events.values()]
    if default.attributes or not written:
        written.insert(0, default)
    out = [{"Event": _event(e, now)} for e in written]
    return out[0] if len(out) == 1 else {"response": out}


def _event(event: _Event, now: datetime) -> dict[str, Any]:
    label_sets = [set(labels) for _, labels in event.attributes]
    common = set.intersection(*label_sets) if label_sets else set()
    common = {t for t in common if not t.startswith(("tlp:", "entraide:"))}
    attributes = []
    for attribute, labels in event.attributes:
        attribute["Tag"] = [{"name": t} for t in labels if t not in common]
        attributes.append(attribute)
    out: dict[str, Any] = {
        "uuid": event.uuid, "info": event.info, "date": event.date,
        "threat_level_id": event.threat, "analysis": "2", "distribution": "0",
        "published": False, "timestamp": str(event.timestamp or int(now.timestamp())),
        "Attribute": attributes,
    }
    if event.objects:
        out["Object"] = list(event.objects.values())
    tags = []
    if event.tlps:
        tags.append(_TAG_OF_TLP[max(event.tlps, key=TLP_ORDER.index)])
    first = event.attributes[0][1] if event.attributes else []
    tags += [t for t in first if t in common]
    if tags:
        out["Tag"] = [{"name": t} for t in tags]
    return out
