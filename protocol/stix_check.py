"""Checking a STIX 2.1 object beyond the basics ``StixObject`` checks (``check_stix_object``).

Required timestamps in order and precise to the millisecond, reference properties,
and per type what STIX 2.1 requires (indicator pattern and validity, relationship
ends, sighted object). Every refusal is a ``PayloadError`` with one clear sentence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from protocol.errors import PayloadError
from protocol.payloads import MAX_STIX_JSON_BYTES, StixObject
from protocol.stix_common import MAX_STIX_COUNT, SCO_TYPES, parse_timestamp
from protocol.stix_pattern import parse_pattern, simple_indicator

__all__ = ["check_stix_object"]

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
        try:
            StixObject.from_object(obj if isinstance(obj, Mapping) else {})
        except PayloadError as exc:
            if any(m in str(exc) for m in _OVER_LIMIT):  # a size limit, said so
                raise PayloadError(f"too large: the object is over {MAX_STIX_JSON_BYTES} "
                                   f"bytes as JSON (one object holds at most "
                                   f"{MAX_STIX_JSON_BYTES // 1024} KiB)") from None
            raise
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
        if key.startswith("x_") and value in ("", []):
            # A custom reference left empty (ATT&CK's x_mitre_data_source_ref is ""):
            # it names nothing, so nothing to check; STIX binds only its own properties.
            continue
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
# The object_json limit as StixObject words it: in bytes (payload_fields.max_utf8_bytes),
# or first in characters (pydantic's max_length) when the text is that long already.
_OVER_LIMIT = (f"is over {MAX_STIX_JSON_BYTES} bytes in UTF-8",
               f"at most {MAX_STIX_JSON_BYTES} characters")
# Property names already found well formed (most objects use the same few dozen).
_GOOD_NAMES: set[str] = {"id"}
_MAX_GOOD_NAMES = 4096
# As protocol/payload_models.py checks a carried object's type and id.
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
                           or not 0 <= count <= MAX_STIX_COUNT):
        raise PayloadError(f"a sighting's count must be an integer from 0 to {MAX_STIX_COUNT}")


_CHECKS = {"indicator": _check_indicator, "relationship": _check_relationship,
           "sighting": _check_sighting}

