"""The payloads' building blocks: bounds, enums and constrained field types.

Every string, list and number a payload model holds is one of the annotated types
here, so each bound and each text rule (one line, no control or bidi characters,
valid UTF-8, RFC 3339 times held in UTC) is written once (docs/protocol.md §6).
``format_validation_error`` turns pydantic's report on these into one line.

Invariant: the bounds are chosen so that the largest valid payload of any kind
encodes within ``MAX_PAYLOAD_BYTES`` (tests/protocol/test_payloads.py builds each).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, TypeAlias

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
)

from protocol.indicators import MAX_INDICATOR_CHARS, normalise_url

__all__ = [
    "MAX_CONTACT_CHARS",
    "MAX_COUNT",
    "MAX_DESCRIPTION_CHARS",
    "MAX_NEEDS",
    "MAX_NEED_CHARS",
    "MAX_NOTE_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_PLAYBOOK_JSON_BYTES",
    "MAX_REFERENCES",
    "MAX_RELATED",
    "MAX_RULE_TEXT_BYTES",
    "MAX_STIX_DEPTH",
    "MAX_STIX_JSON_BYTES",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_TITLE_CHARS",
    "PAYLOAD_KINDS",
    "Contact",
    "DescriptionText",
    "EntryId",
    "Need",
    "Note",
    "Reference",
    "RuleText",
    "RuleType",
    "Severity",
    "Tag",
    "Title",
    "UtcDatetime",
    "dedupe",
    "format_validation_error",
    "max_utf8_bytes",
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
MAX_PLAYBOOK_JSON_BYTES = 192 * 1024
MAX_COUNT = (1 << 53) - 1  # the largest integer every JSON client reads exactly
MAX_STIX_DEPTH = 64

PAYLOAD_KINDS = ("observation", "sighting", "retraction", "alert", "rule", "stix",
                 # protocol/aid.py
                 "aid-request", "aid-offer", "aid-withdraw", "aid-accept", "aid-update",
                 "aid-close", "capabilities",
                 # shared tools (agent/tools)
                 "playbook",
                 # erasure and its receipts (protocol/erasure.py)
                 "erasure", "erasure-receipt",
                 # key rotation (protocol/handover.py)
                 "handover")


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


def max_utf8_bytes(limit: int) -> AfterValidator:
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
    max_utf8_bytes(MAX_RULE_TEXT_BYTES),
]

_ENTRY_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _entry_id(text: str) -> str:
    lowered = text.lower()
    if not _ENTRY_ID.fullmatch(lowered):
        raise ValueError("must be an entry id: 64 hex digits")
    return lowered


EntryId: TypeAlias = Annotated[str, Field(strict=True, max_length=64), AfterValidator(_entry_id)]


def dedupe(items: tuple[str, ...]) -> tuple[str, ...]:
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


# --- Reporting -------------------------------------------------------------------

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
