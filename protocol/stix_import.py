"""Importing a posted STIX 2.1 object (``import_object``): a payload, or a refusal.

Any object is checked (``check_stix_object``) and refused with a reason when invalid;
an indicator whose pattern is one equality on a path Entraide models (or a
vulnerability naming a CVE) becomes an ``Observation`` that keeps the object's STIX
id, ``created`` and ``modified`` in reserved tags (``stix-id:``, ``stix-created:``,
``stix-modified:``); anything else becomes a ``StixObject``, carried exactly as given.
What an ``Observation`` does not keep is reported (``StixImport.dropped``), never
dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from protocol.entries import TLP
from protocol.indicators import MAX_INDICATOR_CHARS, IndicatorType
from protocol.payloads import MAX_TAG_CHARS, MAX_TAGS, Observation, Payload, StixObject
from protocol.stix_check import check_stix_object
from protocol.stix_common import (
    EXTENSION_ID,
    RESERVED_TAG_PREFIXES,
    TLP_BY_MARKING,
    tlp_of_markings,
    version_of,
)
from protocol.stix_pattern import indicator_of, parse_pattern, simple_indicator

__all__ = ["StixImport", "import_object"]

_CVE_NAME = re.compile(r"CVE-[0-9]{4}-[0-9]{4,19}", re.ASCII | re.IGNORECASE)


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
    if any(m not in TLP_BY_MARKING for m in markings):
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
