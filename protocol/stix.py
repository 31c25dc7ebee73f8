"""STIX 2.1 mapping of Entraide payloads, both ways (docs/operations.md, "TAXII 2.1, STIX 2.1
and MISP").

Export (``payload_to_stix``): an observation becomes an ``indicator`` with a STIX
pattern (a ``cve`` observation a ``vulnerability``), a sighting a ``sighting``, a rule
an ``indicator`` whose ``pattern_type`` is its language, an alert an ``incident``, a
retraction a new version of its target with ``revoked: true`` (``revoke``), an origin
an ``identity`` (``identity_to_stix``); a carried STIX object is itself. The entry's
TLP becomes the TLP 2.0 marking definition in ``object_marking_refs``; what STIX has
no property for (severity, French descriptions, first/last seen, the entry id) rides
in an Entraide property extension, so the mapping back is lossless.

Import (``import_object``): any object is checked (``check_stix_object``) and refused
with a reason when invalid; an indicator whose pattern is one equality on a path
Entraide models (or a vulnerability naming a CVE) becomes an ``Observation`` that keeps
the object's STIX id, ``created`` and ``modified`` in reserved tags (``stix-id:``,
``stix-created:``, ``stix-modified:``); anything else becomes a ``StixObject``, carried
exactly as given.

Invariants:
- STIX ids of derived objects are UUIDv5 of the entry id (identities: of the origin
  key) under one fixed namespace: the same entry has the same STIX id on every node.
- Every object produced passes stix2-validator; ``modified`` of a revoked version is
  strictly later than the version it revokes.
- Nothing here reads a clock or does I/O: times come in with the entry (``EntryRef``).

This module is the export direction and the one place to import the mapping from:
ids, timestamps and TLP live in :mod:`protocol.stix_common`, the checks in
:mod:`protocol.stix_check`, the import direction in :mod:`protocol.stix_import`; every
public name of those is re-exported here.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from protocol.aid import AidRequest
from protocol.entries import TLP
from protocol.errors import PayloadError
from protocol.indicators import IndicatorType
from protocol.payloads import (
    Alert,
    Observation,
    Payload,
    Playbook,
    Retraction,
    Rule,
    Sighting,
    StixObject,
)
from protocol.stix_aid import aid_request_to_stix
from protocol.stix_check import check_stix_object
from protocol.stix_common import (
    EXTENSION_ID,
    IDENTITY_EPOCH,
    MAX_STIX_COUNT,
    RESERVED_TAG_PREFIXES,
    SCO_TYPES,
    TLP1_MARKINGS,
    TLP2_MARKINGS,
    entry_stix_id,
    format_ms,
    format_us,
    identity_id,
    parse_timestamp,
    stix_uuid,
    tlp_marking,
    tlp_of_markings,
    version_of,
)
from protocol.stix_import import StixImport, import_object
from protocol.stix_pattern import pattern_for

__all__ = [
    "EXTENSION_ID",
    "IDENTITY_EPOCH",
    "PLAYBOOK_EXTENSION_ID",
    "RESERVED_TAG_PREFIXES",
    "SCO_TYPES",
    "TLP1_MARKINGS",
    "TLP2_MARKINGS",
    "EntryRef",
    "ObjectText",
    "StixImport",
    "check_stix_object",
    "entry_stix_id",
    "format_ms",
    "format_us",
    "identity_id",
    "identity_to_stix",
    "import_object",
    "object_json",
    "observation_text",
    "parse_timestamp",
    "payload_to_stix",
    "playbook_to_stix",
    "revoke",
    "stix_uuid",
    "tlp_marking",
    "tlp_of_markings",
    "version_of",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NOT_REVOCABLE = SCO_TYPES | {"marking-definition"}


def _dt(value: datetime) -> str:
    return format_us((value - _EPOCH) // timedelta(microseconds=1))


def _us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


# --- export --------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryRef:
    """What the mapping needs of the entry that carries a payload."""

    id: str  # 64 hex
    origin: str  # "ed25519:..." key text
    seq: int
    ts: int  # ms
    tlp: TLP


def _common(stix_type: str, stix_id: str, created: str, modified: str,
            ref: EntryRef) -> dict[str, Any]:
    return {"type": stix_type, "spec_version": "2.1", "id": stix_id, "created": created,
            "modified": modified, "created_by_ref": identity_id(ref.origin)}


def _extension(ref: EntryRef, kind: str, **fields: Any) -> dict[str, Any]:
    body = {"extension_type": "property-extension", "kind": kind, "entry": ref.id,
            "origin": ref.origin, "seq": ref.seq, "tlp": ref.tlp.value}
    body.update({k: v for k, v in fields.items() if v is not None})
    return {EXTENSION_ID: body}


def _finish(obj: dict[str, Any], ref: EntryRef, extension: dict[str, Any]) -> dict[str, Any]:
    obj["object_marking_refs"] = [tlp_marking(ref.tlp)]
    obj["extensions"] = extension
    return obj


def _text(description: Any) -> tuple[str | None, str | None]:
    """(description text, lang) of a LocalizedText: English first."""
    if description is None:
        return None, None
    if description.en is not None:
        return description.en, None
    return description.fr, "fr"


def _reserved(tags: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    kept: dict[str, str] = {}
    labels: list[str] = []
    for tag in tags:
        for prefix in RESERVED_TAG_PREFIXES:
            if tag.startswith(prefix):
                kept[prefix] = tag[len(prefix):]
                break
        else:
            labels.append(tag)
    return kept, labels


def observation_to_stix(obs: Observation, ref: EntryRef) -> dict[str, Any]:
    """An observation as an indicator (a ``cve`` as a vulnerability)."""
    kept, labels = _reserved(obs.tags)
    stix_type = "vulnerability" if obs.type is IndicatorType.CVE else "indicator"
    stix_id = kept.get("stix-id:") or entry_stix_id(stix_type, ref.id)
    modified = kept.get("stix-modified:") or format_ms(ref.ts)
    created = kept.get("stix-created:") or modified
    obj = _common(stix_type, stix_id, created, modified, ref)
    obj["name"] = obs.value
    text, lang = _text(obs.description)
    if text is not None:
        obj["description"] = text
    if lang is not None:
        obj["lang"] = lang
    references: list[dict[str, str]] = [{"source_name": "entraide", "external_id": ref.id}]
    if stix_type == "vulnerability":
        references.insert(0, {"source_name": "cve", "external_id": obs.value})
    else:
        valid_from = _us(obs.first_seen) if obs.first_seen else ref.ts * 1000
        if obs.valid_until is not None:
            valid_from = min(valid_from, _us(obs.valid_until) - 1000)
            obj["valid_until"] = _dt(obs.valid_until)
        obj.update(pattern=pattern_for(obs.type, obs.value), pattern_type="stix",
                   pattern_version="2.1", valid_from=format_us(valid_from))
    if obs.confidence is not None:
        obj["confidence"] = obs.confidence
    if labels:
        obj["labels"] = labels
    references += [{"source_name": "reference", "url": url} for url in obs.references]
    obj["external_references"] = references
    description = None
    if obs.description is not None and obs.description.fr is not None:
        description = obs.description.model_dump(exclude_none=True)
    extension = _extension(
        ref, "observation", indicator_type=obs.type.value, value=obs.value,
        severity=None if obs.severity is None else obs.severity.value,
        first_seen=None if obs.first_seen is None else _dt(obs.first_seen),
        last_seen=None if obs.last_seen is None else _dt(obs.last_seen),
        valid_until=None if obs.valid_until is None else _dt(obs.valid_until),
        description=description)
    return _finish(obj, ref, extension)


@dataclass(frozen=True)
class ObjectText:
    """The JSON text (:func:`object_json`) of an object derived from an entry not yet
    signed, with the gaps its entry id and seq go in: :meth:`fill` completes it."""

    parts: tuple[str, ...]
    slots: tuple[str, ...]  # "id" or "seq", one per gap between parts

    def fill(self, entry_id: str, seq: int) -> str:
        """The text once the entry (64 hex id, seq) is known."""
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out.append(entry_id if slot == "id" else str(seq))
            out.append(part)
        return "".join(out)


def object_json(obj: Mapping[str, Any]) -> str:
    """The text an object is served as: compact JSON, non-ASCII kept."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


_POSTED_SLOTS = ("id", "id", "seq")
_MARKER = re.compile(r"[0-9a-f]{32}", re.ASCII)


def observation_text(obs: Observation, origin: str, tlp: TLP, marker: str
                     ) -> ObjectText | None:
    """``object_json(observation_to_stix(obs, ref))`` for any entry ``ref`` of ``origin``
    and ``tlp``, before the entry exists: so an observation posted as STIX is rendered
    while it is checked, and only its entry id and seq are filled in once signed.

    Args:
        marker: 32 random hex digits, drawn by the caller for this call (or a batch of
            calls): they stand for the entry id in the text.

    Returns:
        None when the object depends on more of its entry: an observation that does not
        carry its STIX id and ``modified`` (reserved tags), an indicator without
        ``first_seen`` (its ``valid_from`` is the entry time), or a text in which the
        marker does not appear exactly where the entry does.
    """
    if not _MARKER.fullmatch(marker):
        raise ValueError("the marker must be 32 lowercase hex digits")
    kept, _ = _reserved(obs.tags)
    if ("stix-id:" not in kept or "stix-modified:" not in kept
            or (obs.type is not IndicatorType.CVE and obs.first_seen is None)):
        return None
    obj = observation_to_stix(obs, EntryRef(marker, origin, 0, 0, tlp))
    obj["extensions"][EXTENSION_ID]["seq"] = marker + "s"
    pieces = re.split(f'("{marker}s"|{marker})', object_json(obj))
    slots = tuple("id" if piece == marker else "seq" for piece in pieces[1::2])
    if slots != _POSTED_SLOTS:
        return None  # the marker is in the content too: render it once signed
    return ObjectText(tuple(pieces[0::2]), slots)


def sighting_to_stix(sighting: Sighting, ref: EntryRef, target_ref: str) -> dict[str, Any]:
    """A sighting of the object ``target_ref`` (the STIX id of the sighted entry's object)."""
    ts = format_ms(ref.ts)
    obj = _common("sighting", entry_stix_id("sighting", ref.id), ts, ts, ref)
    obj["sighting_of_ref"] = target_ref
    obj["count"] = min(sighting.count, MAX_STIX_COUNT)
    obj["where_sighted_refs"] = [identity_id(ref.origin)]
    if sighting.seen_at is not None:
        obj["first_seen"] = obj["last_seen"] = _dt(sighting.seen_at)
    if sighting.note is not None:
        obj["description"] = sighting.note
    obj["external_references"] = [{"source_name": "entraide", "external_id": ref.id}]
    return _finish(obj, ref, _extension(ref, "sighting", target=sighting.of,
                                                count=sighting.count))


def rule_to_stix(rule: Rule, ref: EntryRef) -> dict[str, Any]:
    """A detection rule as an indicator whose ``pattern_type`` is the rule's language."""
    ts = format_ms(ref.ts)
    obj = _common("indicator", entry_stix_id("indicator", ref.id), ts, ts, ref)
    obj["name"] = rule.name
    text, lang = _text(rule.description)
    if text is not None:
        obj["description"] = text
    if lang is not None:
        obj["lang"] = lang
    obj.update(pattern=rule.text, pattern_type=rule.rule_type.value, valid_from=ts)
    obj["external_references"] = [{"source_name": "entraide", "external_id": ref.id}]
    description = None
    if rule.description is not None and rule.description.fr is not None:
        description = rule.description.model_dump(exclude_none=True)
    return _finish(obj, ref, _extension(ref, "rule", rule_type=rule.rule_type.value,
                                        supersedes=rule.supersedes, description=description))


PLAYBOOK_EXTENSION_ID = "extension-definition--1e1c1bd7-c527-4215-8e18-e199e74da57c"
"""The STIX 2.1 extension of ``course-of-action`` that carries a security playbook
(CACAO among others) whole, base64 in ``playbook_bin`` (github.com/cyentific-rni/
stix2.1-coa-playbook-extension, schema ``course-of-action_playbook.json``)."""


def _stix_time(value: Any) -> str | None:
    """A CACAO timestamp as STIX wants it, or None when it is not one."""
    try:
        return format_us(parse_timestamp(value))
    except PayloadError:
        return None


def playbook_to_stix(playbook: Playbook, ref: EntryRef) -> dict[str, Any]:
    """A CACAO 2.0 playbook as a ``course-of-action`` carrying the playbook extension
    (:data:`PLAYBOOK_EXTENSION_ID`): the playbook's canonical JSON, base64, in
    ``playbook_bin`` (so it comes back byte for byte), its id, types and times beside."""
    book = playbook.object
    ts = format_ms(ref.ts)
    obj = _common("course-of-action", entry_stix_id("course-of-action", ref.id), ts, ts, ref)
    name = book.get("name")
    obj["name"] = name if isinstance(name, str) and name else str(book.get("id", "playbook"))
    description = book.get("description")
    if isinstance(description, str) and description:
        obj["description"] = description
    obj["external_references"] = [{"source_name": "entraide", "external_id": ref.id}]
    carried: dict[str, Any] = {
        "extension_type": "property-extension", "type": "playbook",
        "playbook_id": book.get("id"), "created": ts, "modified": ts,
        "playbook_creator": identity_id(ref.origin), "playbook_standard": "cacao",
        "playbook_bin": base64.b64encode(playbook.playbook_json.encode()).decode("ascii"),
    }
    for ours, theirs in (("created", "playbook_creation_time"),
                         ("modified", "playbook_modification_time"),
                         ("valid_from", "playbook_valid_from"),
                         ("valid_until", "playbook_valid_until")):
        when = _stix_time(book.get(ours))
        if when is not None:
            carried[theirs] = when
    types = book.get("playbook_types")
    if isinstance(types, list) and types and all(isinstance(t, str) for t in types):
        carried["playbook_type"] = types
    labels = book.get("labels")
    if isinstance(labels, list) and labels and all(isinstance(t, str) for t in labels):
        carried["labels"] = labels
    if isinstance(description, str) and description:
        carried["description"] = description
    extension = _extension(ref, "playbook", supersedes=playbook.supersedes)
    _finish(obj, ref, extension)
    obj["extensions"] = {PLAYBOOK_EXTENSION_ID: carried, **extension}
    return obj


def alert_to_stix(alert: Alert, ref: EntryRef) -> dict[str, Any]:
    """A call for mutual aid as an incident."""
    ts = format_ms(ref.ts)
    obj = _common("incident", entry_stix_id("incident", ref.id), ts, ts, ref)
    obj["name"] = alert.title
    text, lang = _text(alert.description)
    obj["description"] = text
    if lang is not None:
        obj["lang"] = lang
    obj["labels"] = [f"severity:{alert.severity.value}"]
    obj["external_references"] = [{"source_name": "entraide", "external_id": ref.id}]
    extension = _extension(
        ref, "alert", severity=alert.severity.value, contact=alert.contact,
        needs=list(alert.needs) or None, related=list(alert.related) or None,
        description=alert.description.model_dump(exclude_none=True))
    return _finish(obj, ref, extension)


def payload_to_stix(payload: Payload, ref: EntryRef, *,
                    target_ref: str | None = None) -> dict[str, Any] | None:
    """The STIX object of a payload; None for a retraction (see :func:`revoke`).

    ``target_ref`` is the STIX id a sighting points at; without it, the deterministic
    indicator id of the sighted entry.
    """
    if isinstance(payload, Observation):
        return observation_to_stix(payload, ref)
    if isinstance(payload, Sighting):
        return sighting_to_stix(payload, ref, target_ref or entry_stix_id("indicator", payload.of))
    if isinstance(payload, Rule):
        return rule_to_stix(payload, ref)
    if isinstance(payload, Playbook):
        return playbook_to_stix(payload, ref)
    if isinstance(payload, AidRequest):  # protocol/stix_aid.py
        return aid_request_to_stix(payload, entry_id=ref.id, origin=ref.origin, seq=ref.seq,
                                   ts=ref.ts, tlp=ref.tlp)
    if isinstance(payload, Alert):
        return alert_to_stix(payload, ref)
    if isinstance(payload, StixObject):
        return payload.object
    if isinstance(payload, Retraction):
        return None
    raise TypeError(f"not a payload: {type(payload).__name__}")


def revoke(obj: Mapping[str, Any], at_ms: int) -> dict[str, Any] | None:
    """The revoked version of ``obj``: ``revoked: true`` and a ``modified`` strictly later
    than the current one (the retraction's time, or 1 ms after). None for objects STIX
    does not let revoke (cyber observables, marking definitions)."""
    if obj.get("type") in _NOT_REVOCABLE or not isinstance(obj.get("modified"), str):
        return None
    current = parse_timestamp(obj["modified"])
    new = dict(obj)
    new["modified"] = format_us(max(at_ms * 1000, current + 1000))
    new["revoked"] = True
    return new


def identity_to_stix(origin: str, name: str | None, *,
                     jurisdiction: str | None = None) -> dict[str, Any]:
    """The identity of an origin: one per key, the same id on every node."""
    obj: dict[str, Any] = {
        "type": "identity", "spec_version": "2.1", "id": identity_id(origin),
        "created": IDENTITY_EPOCH, "modified": IDENTITY_EPOCH,
        "name": name or f"Entraide node {origin}",
        "identity_class": "organization", "sectors": ["government"],
        "description": f"Entraide node with key {origin}"
                       + (f" ({jurisdiction})" if jurisdiction else ""),
    }
    body: dict[str, Any] = {"extension_type": "property-extension", "kind": "origin",
                            "origin": origin}
    if jurisdiction:
        body["jurisdiction"] = jurisdiction
    obj["extensions"] = {EXTENSION_ID: body}
    return obj
