"""What an entry's body says: the payload models and their one encoding.

A payload is one of six kinds, told apart by its ``kind`` field: ``observation``,
``sighting``, ``retraction``, ``alert``, ``rule`` and ``stix`` (docs/parts/payloads.md).
TLP and audience are not payload fields: they belong to the entry that carries the
payload (protocol/entries.py), and are refused here as unknown fields.

Invariants:
- Every model is frozen and refuses unknown fields; every string, list and the
  encoded payload as a whole has a bound, and every valid payload encodes within
  ``MAX_PAYLOAD_BYTES``.
- Values are stored in canonical form (indicators normalised, datetimes in UTC,
  tags stripped and de-duplicated, entry ids lowercase), so two payloads that mean the
  same thing compare and encode the same.
- ``decode_payload`` accepts exactly the bytes ``encode_payload`` produces: it
  re-validates everything and refuses any input that does not re-encode to itself.
- Nothing here reads a clock: "valid until" is data, judged by the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypeAlias

import msgpack
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protocol.encoding import Limits, decode, pack_trusted
from protocol.errors import OversizeError, PayloadError
from protocol.indicators import (
    MAX_INDICATOR_CHARS,
    IndicatorType,
    normalise_indicator,
    normalise_url,
)

__all__ = [
    "MAX_CONTACT_CHARS",
    "MAX_COUNT",
    "MAX_DESCRIPTION_CHARS",
    "MAX_NEEDS",
    "MAX_NEED_CHARS",
    "MAX_NOTE_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_REFERENCES",
    "MAX_RELATED",
    "MAX_RULE_TEXT_BYTES",
    "MAX_STIX_JSON_BYTES",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_TITLE_CHARS",
    "PAYLOAD_KINDS",
    "Alert",
    "IndicatorType",
    "LocalizedText",
    "Observation",
    "Payload",
    "Retraction",
    "Rule",
    "RuleType",
    "Severity",
    "Sighting",
    "StixObject",
    "decode_payload",
    "decode_payload_with_fields",
    "encode_payload",
    "encode_payload_with_fields",
    "format_validation_error",
    "normalise_indicator",
    "parse_payload_json",
]

# Bounds. They are chosen so that the largest valid payload of any kind encodes
# within MAX_PAYLOAD_BYTES (a test builds each one), which itself still fits in an
# envelope sealed to the largest audience the entry format allows (tested too).
MAX_PAYLOAD_BYTES = 224 * 1024
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_REFERENCES = 16
MAX_DESCRIPTION_CHARS = 8192  # per language
MAX_NOTE_CHARS = 4096
MAX_TITLE_CHARS = 200
MAX_CONTACT_CHARS = 256
MAX_RELATED = 64
MAX_NEEDS = 16
MAX_NEED_CHARS = 200
MAX_RULE_TEXT_BYTES = 128 * 1024
MAX_STIX_JSON_BYTES = 192 * 1024
MAX_COUNT = (1 << 53) - 1  # the largest integer every JSON client reads exactly
_MAX_STIX_DEPTH = 64

PAYLOAD_KINDS = ("observation", "sighting", "retraction", "alert", "rule", "stix")


class Severity(StrEnum):
    """How bad it is, as judged by the author."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class RuleType(StrEnum):
    """The detection-rule languages a ``Rule`` may carry."""

    YARA = "yara"
    SIGMA = "sigma"
    SURICATA = "suricata"
    SNORT = "snort"


# --- Field types -----------------------------------------------------------------

# Bidirectional overrides and isolates reorder text on screen ("Trojan Source"); they
# have no place in one-line labels shown to analysts.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _check_encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate, which is not valid UTF-8") from None


# What _one_line and _multi_line refuse, as one character class each, so that valid
# text (nearly all of it) is checked by one regex search instead of a unicodedata
# lookup per character. Cc (U+0000-001F, U+007F-009F) and Cs (U+D800-DFFF) are closed
# sets under Unicode's stability policy; Zl and Zp hold U+2028 and U+2029 only.
# tests/protocol/test_payloads.py checks both classes against unicodedata over every
# code point. A search that finds nothing proves the text clean; a hit is reported
# as the first offending character, as the per-character walk did.
_NOT_ONE_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NOT_MULTI_LINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _one_line(text: str) -> str:
    bad = _NOT_ONE_LINE.search(text)
    if bad is not None:
        raise ValueError(f"must be one line of text without control characters "
                         f"(found U+{ord(bad.group()):04X})")
    return text


def _multi_line(text: str) -> str:
    bad = _NOT_MULTI_LINE.search(text)
    if bad is not None:
        raise ValueError(f"contains a control character (U+{ord(bad.group()):04X})")
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    return text


def _max_utf8_bytes(limit: int) -> AfterValidator:
    def check(text: str) -> str:
        _check_encodable(text)
        if len(text.encode("utf-8")) > limit:
            raise ValueError(f"is over {limit} bytes in UTF-8")
        return text

    return AfterValidator(check)


def _one_line_of(max_chars: int) -> StringConstraints:
    return StringConstraints(
        strict=True, strip_whitespace=True, min_length=1, max_length=max_chars
    )


def _text_of(max_chars: int) -> StringConstraints:
    return StringConstraints(strict=True, min_length=1, max_length=max_chars)


Tag: TypeAlias = Annotated[str, _one_line_of(MAX_TAG_CHARS), AfterValidator(_one_line)]
Title: TypeAlias = Annotated[str, _one_line_of(MAX_TITLE_CHARS), AfterValidator(_one_line)]
Contact: TypeAlias = Annotated[str, _one_line_of(MAX_CONTACT_CHARS), AfterValidator(_one_line)]
Need: TypeAlias = Annotated[str, _one_line_of(MAX_NEED_CHARS), AfterValidator(_one_line)]
Note: TypeAlias = Annotated[str, _text_of(MAX_NOTE_CHARS), AfterValidator(_multi_line)]
DescriptionText: TypeAlias = Annotated[
    str, _text_of(MAX_DESCRIPTION_CHARS), AfterValidator(_multi_line)
]
RuleText: TypeAlias = Annotated[
    str,
    _text_of(MAX_RULE_TEXT_BYTES),
    AfterValidator(_multi_line),
    _max_utf8_bytes(MAX_RULE_TEXT_BYTES),
]

_ENTRY_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _entry_id(text: str) -> str:
    lowered = text.lower()
    if not _ENTRY_ID.fullmatch(lowered):
        raise ValueError("must be an entry id: 64 hex digits")
    return lowered


EntryId: TypeAlias = Annotated[str, Field(strict=True, max_length=64), AfterValidator(_entry_id)]


def _dedupe(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


Reference: TypeAlias = Annotated[
    str, Field(strict=True, max_length=MAX_INDICATOR_CHARS), AfterValidator(normalise_url)
]

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,6}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)


def _to_utc(value: object) -> datetime:
    """Parse an RFC 3339 string or take an aware datetime; return it in UTC."""
    if isinstance(value, str):
        match = _RFC3339.fullmatch(value)
        if match is None:
            raise ValueError(
                "must be an RFC 3339 timestamp with a time zone, e.g. 2026-12-31T00:00:00Z "
                "(at most 6 fractional digits)"
            )
        year, month, day, hour, minute, second, fraction, zulu, sign, oh, om = match.groups()
        offset = timedelta(0)
        if not zulu:
            if int(oh) > 23 or int(om) > 59:
                raise ValueError("has an invalid UTC offset")
            offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
        try:
            value = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second),
                int((fraction or "").ljust(6, "0")), tzinfo=timezone(offset),
            )
        except ValueError as exc:
            raise ValueError(f"is not a valid date and time ({exc})") from None
    if not isinstance(value, datetime):
        raise ValueError("must be an RFC 3339 timestamp string")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must include a time zone (e.g. a trailing Z for UTC)")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if utc.year < 1970:
        raise ValueError("is before 1970")
    return utc


def _format_utc(value: datetime) -> str:
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


UtcDatetime: TypeAlias = Annotated[
    datetime,
    BeforeValidator(_to_utc),
    PlainSerializer(_format_utc, return_type=str, when_used="json"),
]
"""A timezone-aware instant, held in UTC, written ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``
(fraction only when non-zero, without trailing zeros)."""


# --- Models ----------------------------------------------------------------------


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


Tags: TypeAlias = Annotated[tuple[Tag, ...], Field(max_length=MAX_TAGS), AfterValidator(_dedupe)]
References: TypeAlias = Annotated[
    tuple[Reference, ...], Field(max_length=MAX_REFERENCES), AfterValidator(_dedupe)
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
        tuple[EntryId, ...], Field(max_length=MAX_RELATED), AfterValidator(_dedupe)
    ] = ()
    needs: Annotated[tuple[Need, ...], Field(max_length=MAX_NEEDS), AfterValidator(_dedupe)] = ()


class Rule(_Model):
    """A detection rule, carried as text in its own language; not compiled or checked."""

    kind: Literal["rule"] = "rule"
    rule_type: RuleType
    name: Title
    text: RuleText
    description: LocalizedText | None = None


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
        if depth > _MAX_STIX_DEPTH:
            raise ValueError(f"is nested deeper than {_MAX_STIX_DEPTH} levels")
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
        raise ValueError(f"is nested deeper than {_MAX_STIX_DEPTH} levels") from None
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
        _max_utf8_bytes(MAX_STIX_JSON_BYTES),
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


# --- The union, encoding and decoding --------------------------------------------

Payload: TypeAlias = Annotated[
    Observation | Sighting | Retraction | Alert | Rule | StixObject,
    Field(discriminator="kind"),
]
_PAYLOAD = TypeAdapter[Payload](Payload)
_PAYLOAD_TYPES = (Observation, Sighting, Retraction, Alert, Rule, StixObject)

# Every valid payload fits these caps (the widest list is Alert.related; the deepest
# value is a list or a description map inside the top-level map).
_LIMITS = Limits(
    max_bytes=MAX_PAYLOAD_BYTES,
    max_str=MAX_PAYLOAD_BYTES,
    max_bin=MAX_PAYLOAD_BYTES,  # no field is binary: let validation say so by name
    max_array=MAX_RELATED,
    max_map=16,
    max_depth=3,
)


def encode_payload(payload: Payload) -> bytes:
    """Encode a payload canonically (protocol/encoding.py).

    The encoded value is the model's JSON-mode dump as a map: fields that are None
    or empty lists are left out, datetimes are RFC 3339 strings ending in ``Z``,
    enums are their string values.

    Raises:
        TypeError: ``payload`` is not one of the payload models.
        OversizeError: over ``MAX_PAYLOAD_BYTES`` (cannot happen for a validated model).
    """
    return encode_payload_with_fields(payload)[0]


def encode_payload_with_fields(payload: Payload) -> tuple[bytes, dict[str, Any]]:
    """``encode_payload(payload)`` and ``payload.model_dump(mode="json")``, from one dump.

    The dump (None values and empty lists included, as the query index keeps them) is
    a new dict the caller may keep; the encoding does not share its maps.

    Raises:
        TypeError, OversizeError: as :func:`encode_payload`.
    """
    if not isinstance(payload, _PAYLOAD_TYPES):
        raise TypeError(f"not a payload: {type(payload).__name__}")
    dumped = payload.model_dump(mode="json")
    value = {}
    # The dump holds every field of the model, in declaration order: the wire order
    # (keys sorted) is fixed per model and computed once.
    for key in _WIRE_ORDER[type(payload)]:
        item = dumped[key]
        if item is not None and item != []:
            value[key] = _wire_value(item) if type(item) is dict else item
    # A validated model's JSON dump holds only strings, booleans, integers within the
    # models' bounds (none reaches 2**53), lists of strings and maps of strings, so
    # sorting every map's keys is all the canonical form asks (code-point order of
    # str keys is their UTF-8 byte order): encode()'s walk would find nothing to
    # refuse. tests/vectors and the round-trip tests hold the bytes to encode()'s.
    data = pack_trusted(value)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise OversizeError(f"payload is {len(data)} bytes, over the {MAX_PAYLOAD_BYTES} cap")
    return data, dumped


_WIRE_ORDER: dict[type[BaseModel], tuple[str, ...]] = {
    model: tuple(sorted(model.model_fields)) for model in _PAYLOAD_TYPES}


def _wire_value(value: Any) -> Any:
    """A nested dump value as encoded: maps without None values, keys sorted."""
    if isinstance(value, dict):
        return {key: _wire_value(item) for key, item in sorted(value.items())
                if item is not None}
    return value


def decode_payload(data: bytes) -> Payload:
    """Decode and fully re-validate a payload from untrusted bytes.

    Returns:
        The payload model; ``encode_payload`` of it gives back ``data`` exactly.

    Raises:
        OversizeError: over ``MAX_PAYLOAD_BYTES``, or a field over its wire cap.
        EncodingError: not canonical msgpack.
        PayloadError: not a valid payload, or a value not in canonical form (an
            unnormalised indicator, a datetime not in UTC, an empty list written out...).
    """
    return decode_payload_with_fields(data)[0]


def decode_payload_with_fields(data: bytes) -> tuple[Payload, dict[str, Any]]:
    """:func:`decode_payload`, and the model's JSON dump its canonical check made.

    For the query index (``build_record(payload, ts, dumped)``): one dump per
    received payload instead of two. The dump is as :func:`encode_payload_with_fields`
    gives it.

    Raises:
        OversizeError, EncodingError, PayloadError: as :func:`decode_payload`.
    """
    accepted = _decode_valid(data)
    if accepted is not None:
        return accepted
    # Refused by the short path: the full one says why, with the error it always gave.
    return _decode_checked(data)


def _decode_checked(data: bytes) -> tuple[Payload, dict[str, Any]]:
    """The full path of :func:`decode_payload_with_fields`: every check, in order."""
    value = decode(data, _LIMITS)
    if not isinstance(value, dict):
        raise PayloadError("a payload must be a map")
    try:
        payload = _PAYLOAD.validate_python(value)
    except ValidationError as exc:
        raise PayloadError(format_validation_error(exc)) from exc
    encoded, dumped = encode_payload_with_fields(payload)
    if encoded != bytes(data):
        raise PayloadError("payload is valid but not in canonical form")
    return payload, dumped


def _decode_valid(data: bytes) -> tuple[Payload, dict[str, Any]] | None:
    """``decode_payload_with_fields(data)`` for valid payloads; None for anything else.

    The full path runs ``decode()`` first, whose canonical check (a Python walk over
    the value, then a re-pack) costs as much as validating the model. For a payload
    that check is implied by the last one: ``data`` is accepted only if it equals
    ``encode_payload`` of the validated model, and that encoding is canonical by
    construction (sorted keys, no floats, within ``_LIMITS``: see
    :func:`encode_payload_with_fields`). So here the bytes are unpacked with the same
    caps but without the walk, and the model's encoding is compared with them: equal
    means the full path accepts ``data`` with the same result. Any refusal returns
    None and the caller runs the full path, which raises the error it always raised
    (an input both non-canonical and invalid is an ``EncodingError``, as before).
    tests/protocol/test_payloads.py holds the two paths to each other.
    """
    if not isinstance(data, bytes) or len(data) > _LIMITS.max_bytes:
        return None
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            max_str_len=_LIMITS.max_str, max_bin_len=_LIMITS.max_bin,
            max_array_len=_LIMITS.max_array, max_map_len=_LIMITS.max_map, max_ext_len=0)
        if not isinstance(value, dict):
            return None
        payload = _PAYLOAD.validate_python(value)
        encoded, dumped = encode_payload_with_fields(payload)
    except Exception:  # hostile input: the full path below names the error
        return None
    if encoded != data:
        return None
    return payload, dumped


def parse_payload_json(obj: Mapping[str, Any]) -> Payload:
    """Validate a payload given as parsed JSON (API input), where ``kind`` may be implied.

    - with ``kind``: that model; ``{"kind": "stix", "object": {...}}`` wraps the object;
    - without ``kind``: a JSON object whose ``id`` contains ``--`` or that has a
      ``spec_version`` is taken as a raw STIX object; one with ``type`` and ``value`` as
      an observation.

    Raises:
        PayloadError: not a valid payload; the message names each bad field.
    """
    if not isinstance(obj, Mapping):
        raise PayloadError("a payload must be a JSON object")
    kind = obj.get("kind")
    if kind is None:
        stix_id = obj.get("id")
        if "spec_version" in obj or (isinstance(stix_id, str) and "--" in stix_id):
            return StixObject.from_object(obj)
        if "type" in obj and "value" in obj:
            kind, obj = "observation", {**obj, "kind": "observation"}
        else:
            raise PayloadError(
                f"cannot tell what kind of payload this is; add 'kind' "
                f"(one of {', '.join(PAYLOAD_KINDS)})"
            )
    if kind == "stix" and "object" in obj:
        if set(obj) != {"kind", "object"} or not isinstance(obj["object"], Mapping):
            raise PayloadError("invalid stix: give only 'kind' and 'object' (a JSON object)")
        return StixObject.from_object(obj["object"])
    try:
        return _PAYLOAD.validate_python(dict(obj))
    except ValidationError as exc:
        raise PayloadError(format_validation_error(exc)) from exc


_MAX_REPORTED_ERRORS = 10


def format_validation_error(exc: ValidationError, what: str | None = None) -> str:
    """One line naming each invalid field and why, for API errors and logs.

    The input values are not repeated (they may be large or hostile), except where
    an indicator normaliser quotes the start of a bad value.

    Args:
        exc: the pydantic error.
        what: the payload kind to name in the message, when known (e.g. "observation"
            after ``Observation.model_validate``); without it the message says "payload".
    """
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:_MAX_REPORTED_ERRORS]:
        location = ".".join(str(part) for part in error["loc"])
        if error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", error["msg"]))
        elif error["type"] in ("union_tag_not_found", "union_tag_invalid"):
            location, message = "kind", f"must be one of {', '.join(PAYLOAD_KINDS)}"
        else:
            message = error["msg"]
        parts.append(f"{location}: {message}" if location else message)
    if exc.error_count() > _MAX_REPORTED_ERRORS:
        parts.append(f"and {exc.error_count() - _MAX_REPORTED_ERRORS} more")
    prefix = f"invalid {what}: " if what else "invalid payload: "
    return prefix + "; ".join(parts)
