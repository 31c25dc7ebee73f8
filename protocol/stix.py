"""STIX 2.1 mapping of Entraide payloads, both ways (docs/parts/taxii.md §Mapping).

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
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from protocol.entries import TLP
from protocol.errors import PayloadError
from protocol.indicators import MAX_INDICATOR_CHARS, IndicatorType
from protocol.payloads import (
    MAX_STIX_JSON_BYTES,
    MAX_TAG_CHARS,
    MAX_TAGS,
    Alert,
    Observation,
    Payload,
    Retraction,
    Rule,
    Sighting,
    StixObject,
)
from protocol.stix_pattern import indicator_of, parse_pattern, pattern_for, simple_indicator

__all__ = [
    "EXTENSION_ID",
    "IDENTITY_EPOCH",
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
    "revoke",
    "stix_uuid",
    "tlp_marking",
    "tlp_of_markings",
    "version_of",
]

# A fixed namespace for every UUIDv5 Entraide derives; changing it changes every id.
_NAMESPACE = bytes.fromhex("c0f8a3d47e214b9a9f3e5d2b8c6a1e47")

TLP2_MARKINGS: dict[TLP, str] = {
    TLP.CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    TLP.GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    TLP.AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    TLP.AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    TLP.RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
"""TLP 2.0 marking definitions (the OASIS TLP 2.0 extension's objects)."""

TLP1_MARKINGS: dict[str, TLP] = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": TLP.CLEAR,  # TLP:WHITE
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": TLP.GREEN,
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": TLP.AMBER,
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": TLP.RED,
}
"""STIX 2.1's predefined TLP 1.0 markings, accepted on import and mapped to TLP 2.0."""

_TLP_BY_MARKING = {**{v: k for k, v in TLP2_MARKINGS.items()}, **TLP1_MARKINGS}
_TLP_ORDER = (TLP.CLEAR, TLP.GREEN, TLP.AMBER, TLP.AMBER_STRICT, TLP.RED)

IDENTITY_EPOCH = "2020-01-01T00:00:00.000Z"
"""``created``/``modified`` of origin identities: fixed, so every node writes the same."""

RESERVED_TAG_PREFIXES = ("stix-id:", "stix-created:", "stix-modified:")
"""Tags that carry a posted indicator's STIX identity; not shown as labels."""

SCO_TYPES = frozenset({
    "artifact", "autonomous-system", "directory", "domain-name", "email-addr",
    "email-message", "file", "ipv4-addr", "ipv6-addr", "mac-addr", "mutex",
    "network-traffic", "process", "software", "url", "user-account",
    "windows-registry-key", "x509-certificate",
})
_NOT_REVOCABLE = SCO_TYPES | {"marking-definition"}
_MAX_COUNT = 999_999_999  # STIX 2.1 §5.2: sighting count range


def stix_uuid(name: str) -> str:
    """RFC 4122 version 5 UUID of ``name`` under Entraide's namespace."""
    raw = bytearray(hashlib.sha1(_NAMESPACE + name.encode("utf-8")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


EXTENSION_ID = "extension-definition--" + stix_uuid("extension:entraide/v1")
"""The property extension holding what STIX has no property for."""


def entry_stix_id(stix_type: str, entry_id: str) -> str:
    """The deterministic STIX id of the object derived from entry ``entry_id``."""
    return f"{stix_type}--{stix_uuid('entry:' + entry_id.lower())}"


@functools.lru_cache(maxsize=1024)  # a federation has few origins; each object names one
def identity_id(origin: str) -> str:
    """The STIX identity id of an origin (its ``ed25519:...`` key text)."""
    return f"identity--{stix_uuid('origin:' + origin)}"


# --- timestamps ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?Z", re.ASCII)


def parse_timestamp(text: object, what: str = "timestamp") -> int:
    """Microseconds since the epoch of a STIX timestamp (``YYYY-MM-DDTHH:MM:SS[.s+]Z``).

    Digits past the microsecond are ignored for ordering (the text is kept as given).

    Raises:
        PayloadError: not a string in that form, or not a real date.
    """
    match = _TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise PayloadError(f"{what} must be a STIX timestamp like 2026-01-02T03:04:05.000Z")
    year, month, day, hour, minute, second, fraction = match.groups()
    h, m, s = int(hour), int(minute), int(second)
    try:
        if h > 23 or m > 59 or s > 59:
            datetime(int(year), int(month), int(day), h, m, s)  # raises, saying what
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError as exc:
        raise PayloadError(f"{what} is not a valid date and time ({exc})") from None
    micros = int(fraction[1:7].ljust(6, "0")) if fraction else 0
    return ((days * 24 + h) * 60 + m) * 60_000_000 + s * 1_000_000 + micros


def format_us(us: int, *, taxii: bool = False) -> str:
    """Text of a µs timestamp: STIX form (milliseconds, or microseconds when finer) or,
    with ``taxii``, always six digits as TAXII 2.1 §2 requires."""
    days, micros = divmod(us, 86_400_000_000)
    try:
        day = date.fromordinal(days + _EPOCH_ORDINAL)
    except ValueError:
        raise OverflowError("date value out of range") from None  # as datetime says
    if day.year < 1000:  # strftime's own (platform's) rendering of such years
        text = (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S")
    else:
        seconds, micros = divmod(micros, 1_000_000)
        minutes, second = divmod(seconds, 60)
        text = (f"{day.year}-{day.month:02d}-{day.day:02d}T"
                f"{minutes // 60:02d}:{minutes % 60:02d}:{second:02d}")
    if taxii or us % 1000:
        return f"{text}.{us % 1_000_000:06d}Z"
    return f"{text}.{us % 1_000_000 // 1000:03d}Z"


def format_ms(ms: int) -> str:
    """STIX timestamp of a ms time (always three fraction digits)."""
    return format_us(ms * 1000)


def _dt(value: datetime) -> str:
    return format_us((value - _EPOCH) // timedelta(microseconds=1))


def _us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def version_of(obj: Mapping[str, Any]) -> str | None:
    """The TAXII version of an object: ``modified``, else ``created``, else None."""
    version = obj.get("modified", obj.get("created"))
    return version if isinstance(version, str) else None


# --- TLP -----------------------------------------------------------------------------


def tlp_marking(tlp: TLP) -> str:
    """The TLP 2.0 marking-definition id of a TLP."""
    return TLP2_MARKINGS[TLP(tlp)]


def tlp_of_markings(refs: object) -> TLP | None:
    """The most restrictive TLP among marking refs (TLP 2.0 or 1.0 ids), None if none."""
    if not isinstance(refs, list):
        return None
    found = [_TLP_BY_MARKING[r] for r in refs if isinstance(r, str) and r in _TLP_BY_MARKING]
    return max(found, key=_TLP_ORDER.index) if found else None


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
    obj["count"] = min(sighting.count, _MAX_COUNT)
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
    return _finish(obj, ref, _extension(ref, "rule", description=description))


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


# --- validation ----------------------------------------------------------------------

_ID = re.compile(
    r"([a-z0-9][a-z0-9-]{1,248}[a-z0-9])--[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}", re.ASCII)
_PROPERTY_NAME = re.compile(r"[a-z0-9_]{3,250}", re.ASCII)
_MILLIS = re.compile(r"T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3,}Z$", re.ASCII)
# Required properties of the STIX 2.1 types, beyond the common ones.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "attack-pattern": ("name",), "campaign": ("name",), "course-of-action": ("name",),
    "grouping": ("context", "object_refs"), "identity": ("name",), "incident": ("name",),
    "infrastructure": ("name",), "intrusion-set": ("name",), "malware": ("is_family",),
    "malware-analysis": ("product",), "note": ("content", "object_refs"),
    "observed-data": ("first_observed", "last_observed", "number_observed"),
    "opinion": ("opinion", "object_refs"), "report": ("name", "published", "object_refs"),
    "threat-actor": ("name",), "tool": ("name",), "vulnerability": ("name",),
    "ipv4-addr": ("value",), "ipv6-addr": ("value",), "domain-name": ("value",),
    "url": ("value",), "email-addr": ("value",), "mac-addr": ("value",),
    "autonomous-system": ("number",), "mutex": ("name",), "directory": ("path",),
    "software": ("name",), "windows-registry-key": (), "language-content": (
        "object_ref", "contents"),
}
_CVE_NAME = re.compile(r"CVE-[0-9]{4}-[0-9]{4,19}", re.ASCII | re.IGNORECASE)


def _check_ref(value: object, where: str, types: frozenset[str] | None = None) -> None:
    match = _ID.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise PayloadError(f"{where} must be a STIX id (<type>--<uuid>)")
    if types is not None and match.group(1) not in types:
        raise PayloadError(f"{where} must name a {' or '.join(sorted(types))}")


def check_stix_object(obj: object) -> dict[str, Any]:
    """Check a STIX 2.1 object beyond the basics ``StixObject`` checks: required
    timestamps in order, reference properties, and per type what STIX requires
    (indicator pattern and validity, relationship ends, sighted object).

    Returns:
        The object (a dict).

    Raises:
        PayloadError: the first problem found, as one clear sentence.
    """
    if not _plain_stix_basics(obj):
        # The precise reason (or, rarely, a pass the quick check was too cautious for).
        StixObject.from_object(obj if isinstance(obj, Mapping) else {})
    assert isinstance(obj, dict)
    stix_type = obj["type"]
    for key in obj:
        if key not in _GOOD_NAMES:
            if not _PROPERTY_NAME.fullmatch(key) and key != "id":
                raise PayloadError(f"property name {key[:60]!r} is not 3-250 of a-z, 0-9, '_'")
            if len(_GOOD_NAMES) < _MAX_GOOD_NAMES:
                _GOOD_NAMES.add(key)
    if stix_type not in SCO_TYPES:
        created = _millisecond_stamp(obj, "created")
        if stix_type != "marking-definition" and _millisecond_stamp(obj, "modified") < created:
            raise PayloadError("modified is earlier than created")
    for key in _REQUIRED.get(stix_type, ()):
        if key not in obj:
            raise PayloadError(f"a {stix_type} needs '{key}' (STIX 2.1)")
    for key, value in obj.items():
        if key.endswith("_ref"):
            _check_ref(value, key)
        elif key.endswith("_refs"):
            if not isinstance(value, list) or not value:
                raise PayloadError(f"{key} must be a non-empty list of STIX ids")
            for item in value:
                _check_ref(item, key)
    if "object_marking_refs" in obj:
        for item in obj["object_marking_refs"]:
            _check_ref(item, "object_marking_refs", _MARKING)
    confidence = obj.get("confidence")
    if "confidence" in obj and (not isinstance(confidence, int) or isinstance(confidence, bool)
                                or not 0 <= confidence <= 100):
        raise PayloadError("confidence must be an integer from 0 to 100")
    if "revoked" in obj and not isinstance(obj["revoked"], bool):
        raise PayloadError("revoked must be true or false")
    if "labels" in obj and (not isinstance(obj["labels"], list) or not obj["labels"] or not all(
            isinstance(x, str) and x for x in obj["labels"])):
        raise PayloadError("labels must be a non-empty list of non-empty strings")
    refs = obj.get("external_references")
    if "external_references" in obj and (not isinstance(refs, list) or not refs or not all(
            isinstance(r, dict) and isinstance(r.get("source_name"), str) for r in refs)):
        raise PayloadError("external_references must be a list of objects with a source_name")
    _CHECKS.get(stix_type, _no_check)(obj)
    return obj


_MARKING = frozenset({"marking-definition"})
# Property names already found well formed (most objects use the same few dozen).
_GOOD_NAMES: set[str] = {"id"}
_MAX_GOOD_NAMES = 4096
# As protocol/payloads.py checks a carried object's type and id.
_STIX_TYPE_NAME = re.compile(r"[a-z0-9-]{3,250}", re.ASCII)
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}",
    re.ASCII)
_SCALARS = (str, int, bool, type(None))
_MAX_DEPTH = 64
_INFINITY = float("inf")


def _millisecond_stamp(obj: dict[str, Any], key: str) -> int:
    value = parse_timestamp(obj.get(key), key)
    if not _MILLIS.search(obj[key]):
        raise PayloadError(f"{key} must be precise to the millisecond (e.g. "
                           f"2024-01-01T00:00:00.000Z), as STIX 2.1 requires")
    return value


def _plain_stix_basics(obj: object) -> bool:
    """True only when ``StixObject.from_object(obj)`` is sure to accept ``obj``.

    That is: a dict of exactly the JSON types (str keys, finite floats, nested at most
    64 levels), under ``MAX_STIX_JSON_BYTES`` as UTF-8 JSON, with a STIX type (not a
    bundle), an id of that type and spec_version 2.1 (optional for observables): then
    its canonical JSON parses back to itself, which is all the model checks beyond.
    False means "ask ``StixObject``", never "invalid": this check may be cautious.
    """
    if type(obj) is not dict or not _plain(obj, 0):
        return False
    stix_type, stix_id = obj.get("type"), obj.get("id")
    if (type(stix_type) is not str or not _STIX_TYPE_NAME.fullmatch(stix_type)
            or stix_type == "bundle" or type(stix_id) is not str
            or not stix_id.startswith(stix_type + "--")
            or not _UUID.fullmatch(stix_id, len(stix_type) + 2)):
        return False
    if "spec_version" in obj:
        if obj["spec_version"] != "2.1":
            return False
    elif stix_type not in SCO_TYPES:
        return False
    try:
        size = len(json.dumps(obj, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError: a lone surrogate
        return False
    return size <= MAX_STIX_JSON_BYTES


def _plain(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """True when a container holds only JSON types (str keys) and finite floats, with
    nothing deeper than ``_MAX_DEPTH`` levels below the root (depth 0)."""
    if depth >= _MAX_DEPTH:
        return False
    if type(value) is dict:
        if not all(type(k) is str for k in value):
            return False
        items: Any = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is float:
            if item != item or item in (_INFINITY, -_INFINITY):
                return False
        elif kind is dict or kind is list:
            if not _plain(item, depth + 1):
                return False
        else:
            return False
    return True


def _no_check(obj: dict[str, Any]) -> None:
    return None


def _check_indicator(obj: dict[str, Any]) -> None:
    for key in ("pattern", "pattern_type"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise PayloadError(f"an indicator needs '{key}' (a non-empty string)")
    valid_from = parse_timestamp(obj.get("valid_from"), "valid_from")
    if "valid_until" in obj and parse_timestamp(obj["valid_until"], "valid_until") <= valid_from:
        raise PayloadError("valid_until must be later than valid_from")
    if obj["pattern_type"] == "stix" and simple_indicator(obj["pattern"]) is None:
        parse_pattern(obj["pattern"])


def _check_relationship(obj: dict[str, Any]) -> None:
    if not isinstance(obj.get("relationship_type"), str) or not obj["relationship_type"]:
        raise PayloadError("a relationship needs 'relationship_type'")
    for key in ("source_ref", "target_ref"):
        if key not in obj:
            raise PayloadError(f"a relationship needs '{key}'")


def _check_sighting(obj: dict[str, Any]) -> None:
    if "sighting_of_ref" not in obj:
        raise PayloadError("a sighting needs 'sighting_of_ref'")
    count = obj.get("count")
    if "count" in obj and (not isinstance(count, int) or isinstance(count, bool)
                           or not 0 <= count <= _MAX_COUNT):
        raise PayloadError(f"a sighting's count must be an integer from 0 to {_MAX_COUNT}")


_CHECKS = {"indicator": _check_indicator, "relationship": _check_relationship,
           "sighting": _check_sighting}


# --- import --------------------------------------------------------------------------


@dataclass(frozen=True)
class StixImport:
    """What a posted STIX object becomes.

    Attributes:
        payload: an ``Observation`` (indicator or vulnerability Entraide models) or a
            ``StixObject`` (everything else, exactly as given).
        tlp: from its TLP marking (2.0 or 1.0 ids), None when it has none.
        stix_id, version: its id and TAXII version (``modified``, else ``created``).
        dropped: properties an ``Observation`` does not keep (reported to the poster).
    """

    payload: Payload
    tlp: TLP | None
    stix_id: str
    version: str | None
    dropped: tuple[str, ...] = ()


_INDICATOR_KEPT = frozenset({
    "type", "spec_version", "id", "created", "modified", "created_by_ref", "pattern",
    "pattern_type", "pattern_version", "valid_from", "valid_until", "confidence", "labels",
    "description", "lang", "external_references", "object_marking_refs", "extensions",
    "name", "revoked",
})
_VULNERABILITY_KEPT = _INDICATOR_KEPT - {"pattern", "pattern_type", "pattern_version",
                                          "valid_from", "valid_until"}


def import_object(obj: object) -> StixImport:
    """Map a posted STIX object to a payload (see the module docstring).

    Raises:
        PayloadError: the object is not valid STIX 2.1 (the message says why).
    """
    checked = check_stix_object(obj)
    tlp = tlp_of_markings(checked.get("object_marking_refs"))
    version = version_of(checked)
    observation: tuple[Observation, tuple[str, ...]] | None = None
    if not checked.get("revoked"):
        if checked["type"] == "indicator":
            observation = _indicator_observation(checked)
        elif checked["type"] == "vulnerability":
            observation = _vulnerability_observation(checked)
    if observation is not None:
        return StixImport(observation[0], tlp, checked["id"], version, observation[1])
    return StixImport(StixObject.from_object(checked), tlp, checked["id"], version)


def _indicator_observation(obj: dict[str, Any]) -> tuple[Observation, tuple[str, ...]] | None:
    if obj["pattern_type"] != "stix":
        return None
    found = simple_indicator(obj["pattern"]) or indicator_of(parse_pattern(obj["pattern"]))
    if found is None:
        return None
    kind, raw_value = found
    return _observation(obj, kind, raw_value, _INDICATOR_KEPT)


def _vulnerability_observation(obj: dict[str, Any]
                               ) -> tuple[Observation, tuple[str, ...]] | None:
    cve = None
    for ref in obj.get("external_references", []):
        if ref.get("source_name") == "cve" and isinstance(ref.get("external_id"), str):
            cve = ref["external_id"]
            break
    if cve is None and isinstance(obj.get("name"), str) and _CVE_NAME.fullmatch(obj["name"]):
        cve = obj["name"]
    if cve is None:
        return None
    return _observation(obj, IndicatorType.CVE, cve, _VULNERABILITY_KEPT)


def _observation(obj: dict[str, Any], kind: IndicatorType, raw_value: str,
                 kept: frozenset[str]) -> tuple[Observation, tuple[str, ...]] | None:
    """The observation of an indicator/vulnerability, or None when its value or fields
    do not fit the model (it is then carried as a STIX object instead, losing nothing).

    The model normalises ``raw_value`` itself (normalising is idempotent, so that is the
    observation of the normalised value); its canonical form must also fit the model.
    """
    extensions = obj.get("extensions")
    ours = extensions.get(EXTENSION_ID) if isinstance(extensions, dict) else None
    ours = ours if isinstance(ours, dict) else {}
    dropped = [k for k in obj if k not in kept]
    if isinstance(extensions, dict) and set(extensions) - {EXTENSION_ID}:
        dropped.append("extensions")
    name_at = len(dropped)  # "name" is reported here once the value is known
    markings = obj.get("object_marking_refs", [])
    if any(m not in _TLP_BY_MARKING for m in markings):
        dropped.append("object_marking_refs")
    references = []
    for ref in obj.get("external_references", []):
        if ref.get("source_name") in ("entraide", "cve"):
            continue
        if isinstance(ref.get("url"), str):
            references.append(ref["url"])
        else:
            dropped.append("external_references")
    reserved = [f"stix-id:{obj['id']}", f"stix-modified:{obj['modified']}"]
    if obj["created"] != obj["modified"]:
        reserved.append(f"stix-created:{obj['created']}")
    labels = [x for x in obj.get("labels", []) if not x.startswith(RESERVED_TAG_PREFIXES)]
    if any(len(tag) > MAX_TAG_CHARS for tag in reserved) or len(labels) + 3 > MAX_TAGS:
        return None
    fields: dict[str, Any] = {
        "type": kind.value, "value": raw_value, "tags": [*labels, *reserved],
        "references": references,
    }
    if "confidence" in obj:
        fields["confidence"] = obj["confidence"]
    # An object Entraide wrote says exactly what the observation held; trust it.
    valid_until = ours.get("valid_until") if ours else obj.get("valid_until")
    if valid_until is not None:
        fields["valid_until"] = valid_until
    first_seen = ours.get("first_seen") if ours else obj.get("valid_from")
    if first_seen is not None:
        fields["first_seen"] = first_seen
    for key in ("last_seen", "severity"):
        if key in ours:
            fields[key] = ours[key]
    if isinstance(ours.get("description"), dict):
        fields["description"] = ours["description"]
    elif isinstance(obj.get("description"), str):
        lang = "fr" if str(obj.get("lang", "")).lower().startswith("fr") else "en"
        fields["description"] = {lang: obj["description"]}
    try:
        observation = Observation.model_validate(fields)
    except ValidationError:
        return None  # carried as a STIX object instead, losing nothing
    if len(observation.value) > MAX_INDICATOR_CHARS:
        return None  # as above: the canonical form is longer than the model holds
    if obj.get("name") not in (None, observation.value, raw_value):
        dropped.insert(name_at, "name")
    return observation, tuple(dict.fromkeys(dropped))
