"""The payload models: the seven kinds an entry's body can be, one frozen model each.

``Observation`` (an indicator seen), ``Sighting`` (an earlier entry's indicator seen
again), ``Retraction`` (one's own entry withdrawn), ``Alert`` (a call for mutual aid),
``Rule`` (a detection rule as text), ``Playbook`` (a CACAO 2.0 playbook as JSON
text) and ``StixObject`` (any STIX 2.1 object, carried
as canonical JSON text), told apart by ``kind`` (docs/protocol.md §6, "Kinds" and
"Carried STIX 2.1 objects"). Their fields are the types of
:mod:`protocol.payload_fields`; encoding and decoding are :mod:`protocol.payloads`.

Invariants: every model is frozen and refuses unknown fields; values are held in
canonical form (indicators normalised, datetimes in UTC, tags stripped and
de-duplicated, entry ids lowercase).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protocol.errors import PayloadError
from protocol.indicators import MAX_INDICATOR_CHARS, IndicatorType, normalise_indicator
from protocol.payload_fields import (
    MAX_COUNT,
    MAX_NEEDS,
    MAX_PLAYBOOK_JSON_BYTES,
    MAX_REFERENCES,
    MAX_RELATED,
    MAX_STIX_DEPTH,
    MAX_STIX_JSON_BYTES,
    MAX_TAGS,
    Contact,
    DescriptionText,
    EntryId,
    Need,
    Note,
    Reference,
    RuleText,
    RuleType,
    Severity,
    Tag,
    Title,
    UtcDatetime,
    dedupe,
    format_validation_error,
    max_utf8_bytes,
)

__all__ = [
    "Alert",
    "Confidence",
    "LocalizedText",
    "Observation",
    "Playbook",
    "References",
    "Retraction",
    "Rule",
    "Sighting",
    "StixObject",
    "Tags",
]

class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class LocalizedText(_Model):
    """Free text in English and/or French; at least one of the two."""

    en: DescriptionText | None = None
    fr: DescriptionText | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Self:
        if self.en is None and self.fr is None:
            raise ValueError("give the text in at least one language: 'en' or 'fr'")
        return self


Tags: TypeAlias = Annotated[tuple[Tag, ...], Field(max_length=MAX_TAGS), AfterValidator(dedupe)]
References: TypeAlias = Annotated[
    tuple[Reference, ...], Field(max_length=MAX_REFERENCES), AfterValidator(dedupe)
]
Confidence: TypeAlias = Annotated[int, Field(strict=True, ge=0, le=100)]


class Observation(_Model):
    """An indicator seen by the author: the common case.

    ``value`` is normalised for its ``type`` (see ``normalise_indicator``);
    ``first_seen`` may not be later than ``last_seen``.
    """

    kind: Literal["observation"] = "observation"
    type: IndicatorType
    value: Annotated[str, Field(strict=True, max_length=MAX_INDICATOR_CHARS)]
    confidence: Confidence | None = None
    severity: Severity | None = None
    first_seen: UtcDatetime | None = None
    last_seen: UtcDatetime | None = None
    valid_until: UtcDatetime | None = None
    tags: Tags = ()
    description: LocalizedText | None = None
    references: References = ()

    @field_validator("value")
    @classmethod
    def _normalise_value(cls, value: str, info: ValidationInfo) -> str:
        indicator_type = info.data.get("type")
        if indicator_type is None:
            return value  # the type is already reported as invalid
        return normalise_indicator(indicator_type, value)

    @model_validator(mode="after")
    def _seen_in_order(self) -> Self:
        if self.first_seen and self.last_seen and self.first_seen > self.last_seen:
            raise ValueError("first_seen is later than last_seen")
        return self


class Sighting(_Model):
    """The author saw the indicator of an earlier entry (any origin's) ``count`` times."""

    kind: Literal["sighting"] = "sighting"
    of: EntryId
    count: Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)] = 1
    seen_at: UtcDatetime | None = None
    note: Note | None = None


class Retraction(_Model):
    """The author withdraws one of its own earlier entries.

    That ``of`` names an entry of the same origin is checked by the ledger, which
    knows the entry; this model checks only the id's form.
    """

    kind: Literal["retraction"] = "retraction"
    of: EntryId
    reason: Note | None = None


class Alert(_Model):
    """A request for mutual aid during an incident."""

    kind: Literal["alert"] = "alert"
    title: Title
    severity: Severity
    description: LocalizedText
    contact: Contact
    related: Annotated[
        tuple[EntryId, ...], Field(max_length=MAX_RELATED), AfterValidator(dedupe)
    ] = ()
    needs: Annotated[tuple[Need, ...], Field(max_length=MAX_NEEDS), AfterValidator(dedupe)] = ()


class Rule(_Model):
    """A detection rule, carried as text in its own language.

    Not compiled here (protocol/ stays pure): the agent checks it with the real engine
    on submit and on receipt (agent/tools). A later rule of the same origin with the
    same ``rule_type`` and ``name``, or naming this one in ``supersedes``, replaces it.
    """

    kind: Literal["rule"] = "rule"
    rule_type: RuleType
    name: Title
    text: RuleText
    description: LocalizedText | None = None
    supersedes: EntryId | None = None


def _playbook_json(text: str) -> str:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys,
                         parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"is nested deeper than {MAX_STIX_DEPTH} levels") from None
    except ValueError as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    _check_depth(obj)
    if not isinstance(obj, dict) or obj.get("type") != "playbook":
        raise ValueError("must be a JSON object whose 'type' is \"playbook\" (CACAO 2.0)")
    if _canonical_json(obj) != text:
        raise ValueError("is not canonical JSON (compact, keys sorted); build it with "
                         "Playbook.from_object")
    return text


class Playbook(_Model):
    """An OASIS CACAO 2.0 playbook, carried as canonical JSON text (like ``StixObject``).

    Only its JSON form and ``type`` are checked here; the agent checks it against the
    CACAO schema on submit and on receipt (agent/tools/cacao.py).
    """

    kind: Literal["playbook"] = "playbook"
    playbook_json: Annotated[
        str,
        StringConstraints(strict=True, max_length=MAX_PLAYBOOK_JSON_BYTES),
        max_utf8_bytes(MAX_PLAYBOOK_JSON_BYTES),
        AfterValidator(_playbook_json),
    ]
    supersedes: EntryId | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], supersedes: str | None = None) -> Playbook:
        """Wrap a playbook given as parsed JSON.

        Raises:
            PayloadError: not JSON-serialisable, too large, or not a playbook object.
        """
        try:
            text = _canonical_json(obj)
        except (TypeError, ValueError, RecursionError) as exc:
            raise PayloadError(f"invalid playbook: not JSON ({exc})") from None
        try:
            return cls(playbook_json=text, supersedes=supersedes)
        except ValidationError as exc:
            raise PayloadError(format_validation_error(exc, "playbook")) from exc

    @property
    def object(self) -> dict[str, Any]:
        """The playbook, freshly parsed."""
        parsed = json.loads(self.playbook_json)
        assert isinstance(parsed, dict)
        return parsed


# --- STIX objects ----------------------------------------------------------------

# STIX 2.1 §3.1: object type names are 3-250 of a-z, 0-9 and '-'.
_STIX_TYPE = re.compile(r"[a-z0-9-]{3,250}", re.ASCII)
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}",
    re.ASCII,
)
# STIX 2.1 §6: for cyber-observable objects, spec_version is optional.
_STIX_SCO_TYPES = frozenset({
    "artifact", "autonomous-system", "directory", "domain-name", "email-addr",
    "email-message", "file", "ipv4-addr", "ipv6-addr", "mac-addr", "mutex",
    "network-traffic", "process", "software", "url", "user-account",
    "windows-registry-key", "x509-certificate",
})


def _canonical_json(obj: object) -> str:
    """Compact JSON with sorted keys: the one text form of a carried STIX object."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_depth(obj: object) -> None:
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_STIX_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_STIX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _check_stix_basics(obj: object) -> None:
    if not isinstance(obj, dict):
        raise ValueError("must be a JSON object")
    stix_type, stix_id = obj.get("type"), obj.get("id")
    if not isinstance(stix_type, str) or not _STIX_TYPE.fullmatch(stix_type):
        raise ValueError("'type' must be a STIX type name (3-250 of a-z, 0-9, '-')")
    if stix_type == "bundle":
        raise ValueError("a bundle is not a STIX object; share its objects one by one")
    prefix = stix_type + "--"
    if (
        not isinstance(stix_id, str)
        or not stix_id.startswith(prefix)
        or not _UUID.fullmatch(stix_id[len(prefix):])
    ):
        raise ValueError(f"'id' must be '{stix_type}--' followed by an RFC 4122 UUID")
    if "spec_version" in obj:
        if obj["spec_version"] != "2.1":
            raise ValueError("'spec_version' must be \"2.1\"")
    elif stix_type not in _STIX_SCO_TYPES:
        raise ValueError("'spec_version' \"2.1\" is required (STIX 2.0 is not supported)")


def _parse_stix_json(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant
        )
    except RecursionError:
        raise ValueError(f"is nested deeper than {MAX_STIX_DEPTH} levels") from None
    except ValueError as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    _check_depth(obj)
    _check_stix_basics(obj)
    assert isinstance(obj, dict)  # checked just above
    return obj


def _stix_json(text: str) -> str:
    obj = _parse_stix_json(text)
    try:
        canonical = _canonical_json(obj)
    except ValueError:
        raise ValueError("has a number out of the range of a double (infinity)") from None
    if canonical != text:
        raise ValueError(
            "is not canonical JSON (compact, keys sorted); build it with StixObject.from_object"
        )
    return text


class StixObject(_Model):
    """Any STIX 2.1 object (report, malware, attack pattern, relationship...), carried as is.

    The object travels as canonical JSON text (compact, keys sorted, non-ASCII kept)
    rather than as a map, because STIX allows floats and our canonical encoding does
    not: carried as text, every valid STIX object survives unchanged. Only the basics
    are checked: a JSON object with a ``type``, an ``id`` of the form
    ``<type>--<uuid>``, and ``spec_version`` "2.1" (optional for cyber-observable
    types, as in STIX). Bundles are refused.
    """

    kind: Literal["stix"] = "stix"
    object_json: Annotated[
        str,
        StringConstraints(strict=True, max_length=MAX_STIX_JSON_BYTES),
        max_utf8_bytes(MAX_STIX_JSON_BYTES),
        AfterValidator(_stix_json),
    ]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> StixObject:
        """Wrap a STIX object given as parsed JSON.

        Raises:
            PayloadError: not JSON-serialisable (NaN, infinity, non-string keys...),
                too large, or not a STIX 2.1 object.
        """
        try:
            text = _canonical_json(obj)
        except (TypeError, ValueError, RecursionError) as exc:
            raise PayloadError(f"invalid stix: object is not JSON ({exc})") from None
        try:
            return cls(object_json=text)
        except ValidationError as exc:
            raise PayloadError(format_validation_error(exc, "stix")) from exc

    @property
    def object(self) -> dict[str, Any]:
        """The STIX object, freshly parsed: mutating it does not change this payload."""
        return _parse_stix_json(self.object_json)

    @property
    def stix_type(self) -> str:
        """The object's STIX ``type``."""
        return str(self.object["type"])

    @property
    def stix_id(self) -> str:
        """The object's STIX ``id``."""
        return str(self.object["id"])
