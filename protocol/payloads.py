"""What an entry's body says: the payload models and their one encoding.

A payload is one of the kinds in ``PAYLOAD_KINDS``, told apart by its ``kind`` field:
``observation``, ``sighting``, ``retraction``, ``alert``, ``rule``, ``stix``, ``playbook``
and the mutual-aid kinds (docs/protocol.md §6).
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

This module is the union and its encoding, and the one place to import payloads
from: the bounds and field types live in :mod:`protocol.payload_fields`, the models in
:mod:`protocol.payload_models`; their public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeAlias

import msgpack
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from protocol.aid import (
    AidAccept,
    AidClose,
    AidOffer,
    AidRequest,
    AidUpdate,
    AidWithdraw,
    Capabilities,
)
from protocol.encoding import Limits, decode, pack_trusted
from protocol.erasure import Erasure, ErasureReceipt
from protocol.errors import OversizeError, PayloadError
from protocol.handover import Handover
from protocol.indicators import IndicatorType, normalise_indicator
from protocol.payload_fields import (
    MAX_CONTACT_CHARS,
    MAX_COUNT,
    MAX_DESCRIPTION_CHARS,
    MAX_NEED_CHARS,
    MAX_NEEDS,
    MAX_NOTE_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_REFERENCES,
    MAX_RELATED,
    MAX_RULE_TEXT_BYTES,
    MAX_STIX_JSON_BYTES,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    PAYLOAD_KINDS,
    EntryId,
    Note,
    RuleType,
    Severity,
    UtcDatetime,
    format_validation_error,
)
from protocol.payload_models import (
    Alert,
    LocalizedText,
    Observation,
    Playbook,
    Retraction,
    Rule,
    Sighting,
    StixObject,
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
    "EntryId",
    "Erasure",
    "ErasureReceipt",
    "Handover",
    "IndicatorType",
    "LocalizedText",
    "Note",
    "Observation",
    "Payload",
    "Playbook",
    "Retraction",
    "Rule",
    "RuleType",
    "Severity",
    "Sighting",
    "StixObject",
    "UtcDatetime",
    "decode_payload",
    "decode_payload_with_fields",
    "encode_payload",
    "encode_payload_with_fields",
    "format_validation_error",
    "normalise_indicator",
    "parse_payload_json",
    "stored_observation_fields",
]

# --- The union, encoding and decoding --------------------------------------------

Payload: TypeAlias = Annotated[
    Observation | Sighting | Retraction | Alert | Rule | StixObject
    # mutual aid and the expertise directory (protocol/aid.py)
    | AidRequest | AidOffer | AidWithdraw | AidAccept | AidUpdate | AidClose | Capabilities
    # shared tools: CACAO 2.0 playbooks (checked against the schema by agent/tools)
    | Playbook
    # erasure of an entry's body and its receipts (protocol/erasure.py)
    | Erasure | ErasureReceipt
    # key rotation: the old key's last entry names its successor (protocol/handover.py)
    | Handover,
    Field(discriminator="kind"),
]
_PAYLOAD = TypeAdapter[Payload](Payload)
_PAYLOAD_TYPES = (Observation, Sighting, Retraction, Alert, Rule, StixObject,
                  AidRequest, AidOffer, AidWithdraw, AidAccept, AidUpdate, AidClose,
                  Capabilities, Playbook, Erasure, ErasureReceipt, Handover)

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
            # Maps, and lists of maps (an aid request's needs), lose their None values.
            nested = type(item) is dict or (type(item) is list and type(item[0]) is dict)
            value[key] = _wire_value(item) if nested else item
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
    if isinstance(value, list):
        return [_wire_value(item) for item in value]
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


def stored_observation_fields(data: bytes) -> dict[str, Any] | None:
    """The JSON dump of the observation ``data`` encodes, without ``kind``: what
    ``decode_payload_with_fields(data)`` gives for it, in the same key order, for bytes
    already checked by the full path (an entry's body the ledger stored). None for
    anything not shaped like an encoded observation (the caller then decodes it fully).

    Not a check: ``decode_payload`` is, and it ran when the entry was stored; the
    entry's hash covers these bytes (``entraide ledger verify``). It inverts
    :func:`encode_payload_with_fields` instead of validating again: the dump's empty
    fields (None, an empty list) are the ones the encoding left out, and a description
    map lost its None values. Each lookup and listed observation reads one stored
    body: ~3 us here against ~11 us through the model.
    tests/protocol/test_payloads.py holds both to the same result.
    """
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            max_str_len=_LIMITS.max_str, max_bin_len=_LIMITS.max_bin,
            max_array_len=_LIMITS.max_array, max_map_len=_LIMITS.max_map, max_ext_len=0)
    except Exception:  # not for this path: the full one says why
        return None
    if (type(value) is not dict or value.get("kind") != "observation"
            or not value.keys() <= _OBSERVATION_KEYS):
        return None
    fields = {name: value.get(name, [] if name in _OBSERVATION_LISTS else None)
              for name in _OBSERVATION_FIELDS}
    description = fields["description"]
    if description is not None:
        if type(description) is not dict or not description.keys() <= _LOCALIZED_KEYS:
            return None
        fields["description"] = {name: description.get(name) for name in _LOCALIZED_FIELDS}
    return fields


_OBSERVATION_FIELDS = tuple(name for name in Observation.model_fields if name != "kind")
_OBSERVATION_KEYS = frozenset(Observation.model_fields)
_OBSERVATION_LISTS = frozenset(name for name, field in Observation.model_fields.items()
                               if field.default == ())
_LOCALIZED_FIELDS = tuple(LocalizedText.model_fields)
_LOCALIZED_KEYS = frozenset(_LOCALIZED_FIELDS)


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
