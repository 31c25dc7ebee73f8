from __future__ import annotations

import json
import re
import sys
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import protocol.payload_fields as ftypes
import protocol.payloads as payloads
from protocol.encoding import encode
from protocol.entries import MAX_AUDIENCE
from protocol.envelope import open_envelope, seal_envelope
from protocol.errors import EncodingError, EntraideError, OversizeError, PayloadError
from protocol.keys import Identity
from protocol.payloads import (
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
    Alert,
    IndicatorType,
    LocalizedText,
    Observation,
    Payload,
    Retraction,
    Rule,
    RuleType,
    Severity,
    Sighting,
    StixObject,
    decode_payload,
    decode_payload_with_fields,
    encode_payload,
    format_validation_error,
    parse_payload_json,
)

ENTRY_ID = "ab" * 32
OTHER_ID = "cd" * 32
STIX_ID = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
STIX_INDICATOR = {
    "type": "indicator",
    "spec_version": "2.1",
    "id": STIX_ID,
    "created": "2026-01-02T03:04:05.678Z",
    "modified": "2026-01-02T03:04:05.678Z",
    "name": "Poste Canada — hameçonnage",
    "pattern": "[ipv4-addr:value = '203.0.113.7']",
    "pattern_type": "stix",
    "valid_from": "2026-01-02T00:00:00Z",
    "confidence": 85,
    "x_score": 1.5,
    "x_nested": {"list": [1, -2.25e-7, None, True, "é"]},
}


def observation(**fields: Any) -> Observation:
    base: dict[str, Any] = {"type": "ipv4-addr", "value": "203.0.113.7"}
    return Observation.model_validate(base | fields)


def examples() -> list[Payload]:
    return [
        Observation.model_validate({
            "type": "domain-name", "value": "Bücher.Example.", "confidence": 80,
            "severity": "high", "first_seen": "2026-01-01T00:00:00Z",
            "last_seen": "2026-01-02T12:30:00.250+02:00", "valid_until": "2026-12-31T00:00:00Z",
            "tags": ["ransomware", " phishing ", "ransomware"],
            "description": {"en": "C2 domain", "fr": "Domaine de commande et contrôle"},
            "references": ["HTTPS://Example.com/report"],
        }),
        observation(),
        Sighting(of=ENTRY_ID, count=3, seen_at=datetime(2026, 5, 1, 8, 0, 0, 1, tzinfo=UTC),
                 note="Seen on the perimeter firewall"),
        Sighting(of=ENTRY_ID),
        Retraction(of=ENTRY_ID, reason="False positive: a CDN address"),
        Retraction(of=ENTRY_ID),
        Alert(title="Ransomware at a regional hospital", severity=Severity.CRITICAL,
              description=LocalizedText(fr="Aide demandée pour la réponse à incident"),
              contact="SOC Québec +1 418 555 0100", related=(ENTRY_ID, OTHER_ID),
              needs=("forensics", "malware analysis")),
        Rule(rule_type=RuleType.YARA, name="Example_Loader",
             text='rule Example_Loader {\n\tstrings: $a = "evil"\n\tcondition: $a\n}\n',
             description=LocalizedText(en="Loader stage 1")),
        StixObject.from_object(STIX_INDICATOR),
        *_aid_examples(),
    ]


def _aid_examples() -> list[Payload]:
    from tests.vectors.make_payload_vectors import INPUTS
    return [parse_payload_json(i) for i in INPUTS
            if str(i.get("kind", "")).startswith(("aid-", "erasure"))
            or i.get("kind") in ("capabilities", "playbook", "handover")]


# --- Round trips -----------------------------------------------------------------


@pytest.mark.parametrize("payload", examples(), ids=lambda p: p.kind)
def test_payload_round_trips_exactly(payload: Payload) -> None:
    data = encode_payload(payload)
    decoded = decode_payload(data)
    assert decoded == payload
    assert type(decoded) is type(payload)
    assert encode_payload(decoded) == data


@pytest.mark.parametrize("payload", examples(), ids=lambda p: p.kind)
def test_decode_payload_with_fields_gives_the_model_and_its_json_dump(payload: Payload) -> None:
    decoded, dumped = decode_payload_with_fields(encode_payload(payload))
    assert decoded == payload
    assert dumped == payload.model_dump(mode="json")


@pytest.mark.parametrize("payload", [
    *examples(), observation(description={"fr": "seulement en français"}),
    observation(first_seen="2026-01-01T00:00:00.5+02:00", tags=("a", "b"))],
    ids=lambda p: p.kind)
def test_encode_payload_is_encode_of_the_dump_without_none_or_empty_lists(
    payload: Payload,
) -> None:
    # encode_payload skips encode()'s walk (it only sorts keys): same bytes.
    dumped = payload.model_dump(mode="json", exclude_none=True)
    expected = encode({key: value for key, value in dumped.items() if value != []})
    data, fields = payloads.encode_payload_with_fields(payload)
    assert data == expected == encode_payload(payload)
    assert fields == payload.model_dump(mode="json")


def test_payload_examples_cover_every_kind() -> None:
    assert {p.kind for p in examples()} == set(PAYLOAD_KINDS)


# --- A stored observation read back (protocol.payloads.stored_observation_fields) ----

_INDICATORS = [("ipv4-addr", "203.0.113.7"), ("ipv4-addr", "198.51.100.0/24"),
               ("ipv6-addr", "2001:DB8::1"), ("domain-name", "Bücher.Example."),
               ("url", "HTTP://Example.com/a/../b?q=1"), ("file:sha256", "AB" * 32),
               ("cve", "cve-2024-3094"),
               ("email-addr", "Phish@Example.com")]
_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF,
                              blacklist_categories=("Cc", "Cf")), min_size=1,
                max_size=12).filter(lambda t: t.strip() == t and t.strip())
_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                      timezones=st.just(UTC))


@st.composite
def _observations(draw: st.DrawFn) -> Observation:
    type, value = draw(st.sampled_from(_INDICATORS))
    first, last = sorted(draw(st.lists(_TIMES, min_size=2, max_size=2)))
    fields: dict[str, Any] = {"type": type, "value": value}
    optional: dict[str, Any] = {
        "confidence": st.integers(0, 100), "severity": st.sampled_from(list(Severity)),
        "first_seen": st.just(first), "last_seen": st.just(last), "valid_until": _TIMES,
        "tags": st.lists(_TEXT, max_size=4),
        "description": st.sampled_from([{"en": "C2"}, {"fr": "Commande"},
                                        {"en": "C2", "fr": "Commande"}]),
        "references": st.lists(st.sampled_from(["https://example.com/r", "http://a.example/"]),
                               max_size=2)}
    for name in draw(st.sets(st.sampled_from(sorted(optional)))):
        fields[name] = draw(optional[name])
    return Observation.model_validate(fields)


@settings(max_examples=300, deadline=None)
@given(_observations())
def test_a_stored_observation_reads_back_as_the_full_decode_gives_it(
        payload: Observation) -> None:
    data = encode_payload(payload)
    _model, full = decode_payload_with_fields(data)
    del full["kind"]
    fast = payloads.stored_observation_fields(data)
    assert fast is not None
    assert list(fast.items()) == list(full.items())  # the answer's JSON keeps this order


@pytest.mark.parametrize("payload", [p for p in examples() if p.kind != "observation"],
                         ids=lambda p: p.kind)
def test_only_an_observation_reads_back_on_the_short_path(payload: Payload) -> None:
    assert payloads.stored_observation_fields(encode_payload(payload)) is None


@pytest.mark.parametrize("data", [
    b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"kind": "observation", "x": 1}),
    msgpack.packb({"kind": "observation", "type": "ipv4-addr", "value": "203.0.113.7",
                   "description": "not a map"}),
    msgpack.packb({"kind": "observation", "type": "ipv4-addr", "value": "203.0.113.7",
                   "description": {"de": "Nein"}}),
], ids=["empty", "not-msgpack", "array", "unknown-field", "flat-description",
        "unknown-language"])
def test_a_body_not_shaped_like_an_observation_takes_the_full_path(data: bytes) -> None:
    assert payloads.stored_observation_fields(data) is None


@pytest.mark.parametrize("payload", examples(), ids=lambda p: p.kind)
def test_payload_json_dump_parses_back(payload: Payload) -> None:
    dumped = payload.model_dump(mode="json", exclude_none=True)
    assert parse_payload_json(json.loads(json.dumps(dumped))) == payload


def test_encode_payload_omits_none_and_empty_lists() -> None:
    wire = msgpack.unpackb(encode_payload(observation()))
    assert wire == {"kind": "observation", "type": "ipv4-addr", "value": "203.0.113.7"}


def test_encode_payload_writes_datetimes_as_rfc3339_utc() -> None:
    obs = observation(first_seen="2026-03-01T10:00:00-05:00",
                      last_seen="2026-03-01T15:00:00.120000Z")
    wire = msgpack.unpackb(encode_payload(obs))
    assert wire["first_seen"] == "2026-03-01T15:00:00Z"
    assert wire["last_seen"] == "2026-03-01T15:00:00.12Z"


def test_encode_payload_refuses_non_payload() -> None:
    with pytest.raises(TypeError):
        encode_payload(LocalizedText(en="x"))  # type: ignore[arg-type]


def test_stix_object_float_survives_round_trip() -> None:
    decoded = decode_payload(encode_payload(StixObject.from_object(STIX_INDICATOR)))
    assert isinstance(decoded, StixObject)
    assert decoded.object == STIX_INDICATOR
    assert decoded.object["x_score"] == 1.5
    assert decoded.stix_type == "indicator"
    assert decoded.stix_id == STIX_ID


# --- Observation -----------------------------------------------------------------


def test_observation_value_is_normalised_for_its_type() -> None:
    obs = observation(type="url", value=" HTTP://Example.COM:80/A?b ")
    assert obs.value == "http://example.com/A?b"
    assert obs.type is IndicatorType.URL


def test_observation_validates_json_text_the_same_way() -> None:
    text = json.dumps({"type": "email-addr", "value": "Alice@EXAMPLE.com",
                       "valid_until": "2026-12-31T00:00:00+01:00"})
    obs = Observation.model_validate_json(text)
    assert obs == observation(type="email-addr", value="Alice@example.com",
                              valid_until="2026-12-30T23:00:00Z")
    with pytest.raises(ValidationError):
        Observation.model_validate_json('{"type": "cve", "value": "CVE-1", "confidence": "5"}')


def test_observation_kind_defaults_for_api_input() -> None:
    assert observation().kind == "observation"


@pytest.mark.parametrize(("fields", "location", "message"), [
    ({"value": "010.0.0.1"}, "value", "Leading zeros"),
    ({"type": "mac-addr"}, "type", "Input should be"),
    ({"confidence": 101}, "confidence", "less than or equal to 100"),
    ({"confidence": -1}, "confidence", "greater than or equal to 0"),
    ({"confidence": True}, "confidence", "valid integer"),
    ({"confidence": "80"}, "confidence", "valid integer"),
    ({"confidence": 80.0}, "confidence", "valid integer"),
    ({"severity": "severe"}, "severity", "'low', 'medium', 'high' or 'critical'"),
    ({"value": 16909060}, "value", "valid string"),
    ({"value": b"203.0.113.7"}, "value", "valid string"),
    ({"tags": "ransomware"}, "tags", "valid tuple"),
    ({"tags": [""]}, "tags.0", "at least 1 character"),
    ({"tags": ["  "]}, "tags.0", "at least 1 character"),
    ({"tags": ["a" * (MAX_TAG_CHARS + 1)]}, "tags.0", f"at most {MAX_TAG_CHARS}"),
    ({"tags": [str(i) for i in range(MAX_TAGS + 1)]}, "tags", f"at most {MAX_TAGS}"),
    ({"tags": ["two\nlines"]}, "tags.0", "one line"),
    ({"tags": ["evil\u202egnp"]}, "tags.0", "U+202E"),
    ({"description": {}}, "description", "at least one language"),
    ({"description": {"de": "Hallo"}}, "description.de", "Extra inputs"),
    ({"description": {"en": ""}}, "description.en", "at least 1 character"),
    ({"description": {"en": " \n "}}, "description.en", "only whitespace"),
    ({"description": {"en": "bell\x07"}}, "description.en", "U+0007"),
    ({"description": {"fr": "é" * (MAX_DESCRIPTION_CHARS + 1)}}, "description.fr", "at most"),
    ({"description": "just text"}, "description", "valid dictionary"),
    ({"references": ["not-a-url"]}, "references.0", "not an absolute URL"),
    ({"references": ["https://a.example/"] * (MAX_REFERENCES + 1)}, "references", "at most"),
    ({"first_seen": "2026-01-02T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z"}, "",
     "first_seen is later than last_seen"),
    ({"tlp": "RED"}, "tlp", "Extra inputs are not permitted"),
    ({"audience": ["ON"]}, "audience", "Extra inputs are not permitted"),
    ({"kind": "sighting"}, "kind", "Input should be 'observation'"),
])
def test_observation_refuses_bad_field_with_clear_message(
    fields: dict[str, Any], location: str, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        observation(**fields)
    text = format_validation_error(info.value, "observation")
    assert text.startswith("invalid observation: ")
    assert message in text
    if location:
        assert f"{location}: " in text
        assert any(".".join(map(str, e["loc"])) == location for e in info.value.errors())


def test_text_checks_refuse_exactly_what_unicodedata_says() -> None:
    # _one_line and _multi_line use one regex each instead of a unicodedata lookup
    # per character: every code point must be judged as the categories say.
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        one_line_bad = (category in ("Cc", "Cs", "Zl", "Zp")
                        or char in ftypes._BIDI_CONTROLS)
        multi_line_bad = category in ("Cc", "Cs") and char not in "\t\n\r"
        assert (ftypes._NOT_ONE_LINE.search(char) is not None) is one_line_bad, hex(code)
        assert (ftypes._NOT_MULTI_LINE.search(char) is not None) is multi_line_bad, hex(code)


@pytest.mark.parametrize(("text", "found"), [
    ("ok\u2029x\x07", "U+2029"), ("é\x85é", "U+0085"), ("x\x7f", "U+007F"),
    ("a\u2066b", "U+2066"),
])
def test_one_line_names_the_first_bad_character(text: str, found: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(found)):
        observation(tags=[text])


def test_multi_line_keeps_tabs_and_line_breaks_but_names_other_controls() -> None:
    assert observation(description={"fr": "a\tb\r\nç"}).description.fr == "a\tb\r\nç"
    with pytest.raises(ValidationError, match=re.escape("U+009F")):
        observation(description={"en": "line\n\x9f"})


def test_observation_keeps_tags_as_given_but_stripped_and_deduplicated() -> None:
    obs = observation(tags=[" APT29 ", "apt29", "APT29", "Cozy Bear"])
    assert obs.tags == ("APT29", "apt29", "Cozy Bear")


def test_observation_references_are_normalised_and_deduplicated() -> None:
    obs = observation(references=["HTTPS://Example.com", "https://example.com/"])
    assert obs.references == ("https://example.com/",)


def test_observation_accepts_bounds_exactly() -> None:
    obs = observation(confidence=0, tags=["t" * MAX_TAG_CHARS] + [str(i) for i in range(1, 32)])
    assert len(obs.tags) == MAX_TAGS
    assert observation(confidence=100).confidence == 100


def test_observation_is_frozen_and_hashable() -> None:
    obs = observation(tags=["a"])
    with pytest.raises(ValidationError):
        obs.confidence = 5  # type: ignore[misc]
    assert hash(obs) == hash(observation(tags=["a"]))


# --- Datetimes -------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    ("2026-12-31T00:00:00Z", datetime(2026, 12, 31, tzinfo=UTC)),
    ("2026-12-31t00:00:00z", datetime(2026, 12, 31, tzinfo=UTC)),
    ("2026-12-31T00:00:00+05:30", datetime(2026, 12, 30, 18, 30, tzinfo=UTC)),
    ("2026-12-31T00:00:00-00:00", datetime(2026, 12, 31, tzinfo=UTC)),
    ("2026-12-31T00:00:00.5Z", datetime(2026, 12, 31, 0, 0, 0, 500000, tzinfo=UTC)),
    ("2026-12-31T00:00:00.000001Z", datetime(2026, 12, 31, 0, 0, 0, 1, tzinfo=UTC)),
    (datetime(2026, 12, 31, 1, tzinfo=timezone(timedelta(hours=1))),
     datetime(2026, 12, 31, tzinfo=UTC)),
])
def test_datetime_accepts_rfc3339_and_aware_datetimes(given: object, expected: datetime) -> None:
    value = observation(valid_until=given).valid_until
    assert value == expected
    assert value is not None and value.tzinfo is UTC


@pytest.mark.parametrize(("given", "message"), [
    ("2026-12-31", "RFC 3339"),
    ("2026-12-31T00:00:00", "RFC 3339"),
    ("2026-12-31 00:00:00Z", "RFC 3339"),
    ("2026-12-31T00:00:00.1234567Z", "at most 6 fractional digits"),
    ("2026-13-01T00:00:00Z", "not a valid date"),
    ("2026-02-30T00:00:00Z", "not a valid date"),
    ("2026-12-31T24:00:00Z", "not a valid date"),
    ("2026-12-31T00:00:60Z", "not a valid date"),
    ("2026-12-31T00:00:00+24:00", "invalid UTC offset"),
    ("２０２６-12-31T00:00:00Z", "RFC 3339"),
    ("1969-12-31T23:59:59Z", "before 1970"),
    ("9999-12-31T23:30:00-01:00", "out of range"),
    (1767139200, "RFC 3339 timestamp string"),
    (datetime(2026, 12, 31), "time zone"),
])
def test_datetime_refuses_ambiguous_or_invalid(given: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        observation(valid_until=given)
    assert message in format_validation_error(info.value)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31),
                    timezones=st.just(UTC)))
def test_datetime_round_trips_exactly(moment: datetime) -> None:
    obs = observation(first_seen=moment)
    decoded = decode_payload(encode_payload(obs))
    assert isinstance(decoded, Observation)
    assert decoded.first_seen == moment
    assert decoded.first_seen is not None and decoded.first_seen.microsecond == moment.microsecond


# --- Sighting, retraction, alert, rule -------------------------------------------


def test_sighting_entry_id_is_lowercased() -> None:
    assert Sighting(of="AB" * 32).of == ENTRY_ID


@pytest.mark.parametrize("model", [Sighting, Retraction])
@pytest.mark.parametrize("bad", ["ab" * 31, "ab" * 33, "zz" * 32, "ab" * 31 + "a ", 12])
def test_reference_to_entry_refuses_bad_id(model: type[Sighting | Retraction], bad: object) -> None:
    with pytest.raises(ValidationError):
        model.model_validate({"of": bad})


@pytest.mark.parametrize("count", [0, -1, MAX_COUNT + 1, True, 1.0])
def test_sighting_refuses_bad_count(count: object) -> None:
    with pytest.raises(ValidationError):
        Sighting.model_validate({"of": ENTRY_ID, "count": count})


def test_sighting_count_defaults_to_one_and_is_encoded() -> None:
    assert msgpack.unpackb(encode_payload(Sighting(of=ENTRY_ID)))["count"] == 1


def test_retraction_refuses_oversize_reason() -> None:
    with pytest.raises(ValidationError):
        Retraction(of=ENTRY_ID, reason="x" * (MAX_NOTE_CHARS + 1))


def alert(**fields: Any) -> Alert:
    base: dict[str, Any] = {"title": "Help", "severity": "high",
                            "description": {"en": "We need help"}, "contact": "soc@example.ca"}
    return Alert.model_validate(base | fields)


@pytest.mark.parametrize("missing", ["title", "severity", "description", "contact"])
def test_alert_requires_its_core_fields(missing: str) -> None:
    fields = alert().model_dump(exclude_none=True)
    del fields[missing]
    with pytest.raises(ValidationError, match=missing):
        Alert.model_validate(fields)


@pytest.mark.parametrize("fields", [
    {"title": "x" * (MAX_TITLE_CHARS + 1)},
    {"title": "two\nlines"},
    {"contact": "c" * (MAX_CONTACT_CHARS + 1)},
    {"related": ["ab" * 32 if i == 0 else f"{i:064x}" for i in range(MAX_RELATED + 1)]},
    {"related": ["nope"]},
    {"needs": ["n"] * 0 + [str(i) for i in range(MAX_NEEDS + 1)]},
    {"needs": ["n" * (MAX_NEED_CHARS + 1)]},
    {"tlp": "AMBER"},
])
def test_alert_refuses_out_of_bounds(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        alert(**fields)


def test_alert_deduplicates_related_ids() -> None:
    assert alert(related=[ENTRY_ID, ENTRY_ID.upper(), OTHER_ID]).related == (ENTRY_ID, OTHER_ID)


@pytest.mark.parametrize("rule_type", list(RuleType))
def test_rule_accepts_each_rule_type(rule_type: RuleType) -> None:
    rule = Rule(rule_type=rule_type, name="r", text="alert tcp any any -> any any (sid:1;)")
    assert decode_payload(encode_payload(rule)) == rule


def test_rule_text_is_bounded_in_utf8_bytes() -> None:
    Rule(rule_type="sigma", name="r", text="a" * MAX_RULE_TEXT_BYTES)
    with pytest.raises(ValidationError, match="bytes in UTF-8"):
        Rule(rule_type="sigma", name="r", text="é" * (MAX_RULE_TEXT_BYTES // 2 + 1))


@pytest.mark.parametrize("fields", [
    {"rule_type": "clamav"},
    {"text": "nul\x00byte"},
    {"text": "lone \ud800 surrogate"},
    {"name": ""},
])
def test_rule_refuses_bad_fields(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {"rule_type": "yara", "name": "r", "text": "rule r { condition: true }"}
    with pytest.raises(ValidationError):
        Rule.model_validate(base | fields)


# --- STIX objects ----------------------------------------------------------------


def test_stix_object_is_carried_as_canonical_json() -> None:
    stix = StixObject.from_object(STIX_INDICATOR)
    assert stix.object_json == json.dumps(STIX_INDICATOR, sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=False)


def test_stix_object_property_returns_a_fresh_copy() -> None:
    stix = StixObject.from_object(STIX_INDICATOR)
    stix.object["name"] = "changed"
    assert stix.object["name"] == STIX_INDICATOR["name"]


def test_stix_object_accepts_observable_without_spec_version() -> None:
    sco = {"type": "ipv4-addr", "id": "ipv4-addr--ff26c055-6336-5bc5-b98d-13d6226742dd",
           "value": "203.0.113.7"}
    assert StixObject.from_object(sco).stix_type == "ipv4-addr"


@pytest.mark.parametrize(("change", "message"), [
    ({"type": "In"}, "'type' must be"),
    ({"type": 5}, "'type' must be"),
    ({"id": "indicator--not-a-uuid"}, "'id' must be"),
    ({"id": "malware--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"}, "'id' must be"),
    ({"id": "indicator--8e2e2d2b-17d4-4cbf-c38f-98ee46b3cd3f"}, "'id' must be"),  # variant
    ({"spec_version": "2.0"}, "'spec_version' must be"),
    ({"spec_version": None}, "'spec_version' must be"),
    ({"x_bad": float("nan")}, "not JSON"),
    ({"x_bad": float("inf")}, "not JSON"),
    ({"x_bad": object()}, "not JSON"),
])
def test_stix_object_refuses_invalid(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        StixObject.from_object(STIX_INDICATOR | change)


def test_stix_object_refuses_stix_20_and_bundles() -> None:
    old = {k: v for k, v in STIX_INDICATOR.items() if k != "spec_version"}
    with pytest.raises(PayloadError, match=r"STIX 2\.0"):
        StixObject.from_object(old)
    bundle = {"type": "bundle", "id": "bundle--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
              "objects": [STIX_INDICATOR]}
    with pytest.raises(PayloadError, match="bundle"):
        StixObject.from_object(bundle)


STIX_HEAD = '{"id":"' + STIX_ID + '","spec_version":"2.1",'


@pytest.mark.parametrize(("text", "message"), [
    (STIX_HEAD + ' "type":"indicator"}', "not canonical"),
    ('{"type":"indicator","id":"' + STIX_ID + '","spec_version":"2.1"}', "not canonical"),
    (STIX_HEAD + '"type":"indicator","type":"indicator"}',
     "duplicate key"),
    (STIX_HEAD + '"type":"indicator","x":NaN}', "NaN"),
    (STIX_HEAD + '"type":"indicator","x":1e999}', "infinity"),
    ("[1,2]", "must be a JSON object"),
    ("{", "not valid JSON"),
    ("[" * 50_000 + "]" * 50_000, "nested deeper"),
    ('{"x":' + "[" * 100 + "]" * 100 + "}", "nested deeper"),
    (STIX_HEAD + '"type":"indicator","x":"\\ud800"}',
     "not canonical"),
])
def test_stix_object_refuses_bad_json_text(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        StixObject(object_json=text)
    assert message in format_validation_error(info.value)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8).map(lambda k: "x_" + k), _json_values, max_size=5))
def test_stix_object_any_json_content_survives_round_trip(extra: dict[str, Any]) -> None:
    obj = extra | {"type": "x-custom", "id": "x-custom--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
                   "spec_version": "2.1"}
    try:
        stix = StixObject.from_object(obj)
    except PayloadError as exc:
        assert "surrogate" in str(exc)  # text() may draw lone surrogates: not UTF-8
        return
    decoded = decode_payload(encode_payload(stix))
    assert isinstance(decoded, StixObject)
    assert json.dumps(decoded.object, sort_keys=True) == json.dumps(obj, sort_keys=True)


def test_stix_object_is_bounded() -> None:
    big = STIX_INDICATOR | {"description": "é" * (MAX_STIX_JSON_BYTES // 2)}
    with pytest.raises(PayloadError, match="bytes in UTF-8"):
        StixObject.from_object(big)


# --- Decoding hostile bytes ------------------------------------------------------


def wire(payload: Payload) -> dict[str, Any]:
    value = msgpack.unpackb(encode_payload(payload))
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize(("value", "message"), [
    ([1, 2], "must be a map"),
    ("observation", "must be a map"),
    ({}, "kind: must be one of"),
    ({"kind": "nope"}, "kind: must be one of"),
    (wire(observation()) | {"tlp": "RED"}, "tlp: Extra inputs"),
    (wire(observation()) | {"value": "203.000.113.7"}, "Leading zeros"),
    (wire(observation()) | {"confidence": 1 << 40}, "less than or equal to 100"),
    (wire(observation()) | {"value": b"203.0.113.7"}, "valid string"),
])
def test_decode_payload_refuses_invalid_map(value: object, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_payload(encode(value))


@pytest.mark.parametrize("value", [
    wire(observation()) | {"value": " 203.0.113.7"},
    wire(observation(type="domain-name", value="example.com")) | {"value": "EXAMPLE.com"},
    wire(observation()) | {"tags": []},
    wire(observation()) | {"severity": None},
    wire(observation(tags=["a"])) | {"tags": ["a", "a"]},
    wire(observation(tags=["a"])) | {"tags": [" a"]},
    wire(observation()) | {"valid_until": "2026-12-31T01:00:00+01:00"},
    wire(observation()) | {"valid_until": "2026-12-31T00:00:00.500Z"},
    wire(Sighting(of=ENTRY_ID)) | {"of": ENTRY_ID.upper()},
    {k: v for k, v in wire(Sighting(of=ENTRY_ID)).items() if k != "count"},
    wire(StixObject.from_object(STIX_INDICATOR)) | {"object_json": json.dumps(STIX_INDICATOR)},
])
def test_decode_payload_refuses_non_canonical_values(value: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        decode_payload(encode(value))


def test_decode_payload_refuses_oversize_before_parsing() -> None:
    with pytest.raises(OversizeError):
        decode_payload(b"\x00" * (MAX_PAYLOAD_BYTES + 1))


def test_decode_payload_refuses_non_canonical_msgpack() -> None:
    with pytest.raises(EncodingError):
        decode_payload(msgpack.packb({"value": "x", "kind": "observation"}))  # unsorted
    with pytest.raises(EncodingError):
        decode_payload(encode_payload(observation()) + b"\x00")


def test_decode_payload_error_chains_the_validation_error() -> None:
    with pytest.raises(PayloadError) as info:
        decode_payload(encode({"kind": "sighting", "of": "x"}))
    assert isinstance(info.value.__cause__, ValidationError)


_HOSTILE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.text(max_size=30) | st.binary(max_size=10)
    | st.sampled_from(["observation", "stix", "ipv4-addr", "203.0.113.7", ENTRY_ID, "{}"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELD_NAMES = st.sampled_from(
    ["kind", "type", "value", "confidence", "severity", "tags", "description", "of", "count",
     "title", "contact", "related", "rule_type", "name", "text", "object_json", "valid_until"]
)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_decode_payload_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    try:
        payload = decode_payload(data)
    except EntraideError as exc:
        assert isinstance(exc, EncodingError | PayloadError)
        return
    assert encode_payload(payload) == data


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(PAYLOAD_KINDS), st.dictionaries(_FIELD_NAMES, _HOSTILE_VALUES, max_size=6))
def test_decode_payload_hostile_maps_raise_only_typed_errors(
    kind: str, fields: dict[str, Any]
) -> None:
    data = encode({"kind": kind} | fields)
    try:
        payload = decode_payload(data)
    except EntraideError as exc:
        assert isinstance(exc, EncodingError | PayloadError)
        return
    assert encode_payload(payload) == data


_words = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
                 min_size=1, max_size=20).filter(lambda s: s.strip() != "")
_indicators = st.one_of(
    st.ip_addresses(v=4).map(lambda a: ("ipv4-addr", str(a))),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)
    .map(lambda a: ("ipv6-addr", str(a).upper())),
    st.binary(min_size=32, max_size=32).map(lambda b: ("file:sha256", b.hex().upper())),
    st.binary(min_size=16, max_size=16).map(lambda b: ("file:md5", b.hex())),
    st.integers(1, (1 << 32) - 1).map(lambda n: ("autonomous-system", f"as{n}")),
    st.integers(1999, 2100).flatmap(
        lambda y: st.integers(1000, 10**7).map(lambda n: ("cve", f"cve-{y}-{n}"))),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z]\.(ca|com|quebec)", fullmatch=True)
    .map(lambda d: ("domain-name", d.upper())),
)
_aware = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]))


@settings(max_examples=300, deadline=None)
@given(
    _indicators,
    st.none() | st.integers(0, 100),
    st.none() | st.sampled_from(list(Severity)),
    st.none() | _aware,
    st.lists(_words.filter(lambda s: len(s.strip()) <= MAX_TAG_CHARS), max_size=5),
    st.none() | st.fixed_dictionaries({}, optional={"en": _words, "fr": _words})
    .filter(lambda d: bool(d)),
)
def test_observation_generated_round_trips(
    indicator: tuple[str, str], confidence: int | None, severity: Severity | None,
    valid_until: datetime | None, tags: list[str], description: dict[str, str] | None,
) -> None:
    kind, value = indicator
    obs = Observation.model_validate({
        "type": kind, "value": value, "confidence": confidence, "severity": severity,
        "valid_until": valid_until, "tags": tags, "description": description,
    })
    data = encode_payload(obs)
    decoded = decode_payload(data)
    assert decoded == obs
    assert encode_payload(decoded) == data
    assert parse_payload_json(json.loads(json.dumps(obs.model_dump(mode="json")))) == obs


# --- Bounds as a whole -----------------------------------------------------------


def largest_payloads() -> list[Payload]:
    big_text = "é" * MAX_DESCRIPTION_CHARS  # two UTF-8 bytes each; worst case is 4
    wide = "\U0001f600" * MAX_DESCRIPTION_CHARS
    long_url = "https://example.com/" + "\U0001f600" * 2020
    return [
        observation(
            type="url", value=long_url, confidence=100, severity="critical",
            first_seen="2026-01-01T00:00:00.123456Z", last_seen="2026-01-01T00:00:00.123456Z",
            valid_until="2026-01-01T00:00:00.123456Z",
            tags=[f"{i:02d}" + "\U0001f600" * (MAX_TAG_CHARS - 2) for i in range(MAX_TAGS)],
            description={"en": wide, "fr": wide},
            references=[long_url[:-2] + f"{i:02d}" for i in range(MAX_REFERENCES)],
        ),
        Sighting(of=ENTRY_ID, count=MAX_COUNT, seen_at="2026-01-01T00:00:00.1Z",
                 note="\U0001f600" * MAX_NOTE_CHARS),
        Retraction(of=ENTRY_ID, reason="\U0001f600" * MAX_NOTE_CHARS),
        alert(title="\U0001f600" * MAX_TITLE_CHARS, contact="\U0001f600" * MAX_CONTACT_CHARS,
              description={"en": wide, "fr": wide},
              related=[f"{i:064x}" for i in range(MAX_RELATED)],
              needs=[f"{i:02d}" + "\U0001f600" * (MAX_NEED_CHARS - 2) for i in range(MAX_NEEDS)]),
        Rule(rule_type="snort", name="\U0001f600" * MAX_TITLE_CHARS,
             text="\U0001f600" * (MAX_RULE_TEXT_BYTES // 4),
             description=LocalizedText(en=wide, fr=big_text)),
        StixObject.from_object(STIX_INDICATOR | {
            "description": "x" * (MAX_STIX_JSON_BYTES - len(json.dumps(STIX_INDICATOR)) - 100)}),
    ]


@pytest.mark.parametrize("payload", largest_payloads(), ids=lambda p: p.kind)
def test_payload_largest_valid_fits_in_a_full_envelope(payload: Payload) -> None:
    data = encode_payload(payload)
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert decode_payload(data) == payload
    readers = [Identity(i.to_bytes(32, "big")) for i in range(1, MAX_AUDIENCE + 1)]
    counter = iter(range(1 << 30))

    def randbytes(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    audience, body = seal_envelope(data, [r.public_key for r in readers], randbytes)
    assert open_envelope(body, audience, readers[-1]) == data


# --- API input -------------------------------------------------------------------


def test_parse_payload_json_implies_observation() -> None:
    assert parse_payload_json({"type": "cve", "value": "cve-2021-44228"}) == observation(
        type="cve", value="CVE-2021-44228")


def test_parse_payload_json_implies_raw_stix_object() -> None:
    parsed = parse_payload_json(STIX_INDICATOR)
    assert isinstance(parsed, StixObject)
    assert parsed.object == STIX_INDICATOR


def test_parse_payload_json_wraps_stix_object_field() -> None:
    parsed = parse_payload_json({"kind": "stix", "object": STIX_INDICATOR})
    assert parsed == StixObject.from_object(STIX_INDICATOR)
    with pytest.raises(PayloadError, match="only 'kind' and 'object'"):
        parse_payload_json({"kind": "stix", "object": STIX_INDICATOR, "x": 1})


@pytest.mark.parametrize(("obj", "message"), [
    ([1], "must be a JSON object"),
    ({"title": "x"}, "cannot tell what kind"),
    ({"kind": "alert", "title": "x"}, "alert.severity: Field required"),
    ({"type": "ipv4-addr", "value": "1.2.3"}, "observation.value: ipv4-addr"),
])
def test_parse_payload_json_refuses_with_clear_message(obj: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_payload_json(obj)


def test_format_validation_error_does_not_echo_large_input() -> None:
    secret = "s3cr3t" * 1000
    with pytest.raises(ValidationError) as info:
        observation(tags=[secret], description={"en": secret + "\x00"})
    message = format_validation_error(info.value)
    assert "s3cr3t" not in message
    assert "s3cr3t" not in str(info.value)


def test_format_validation_error_caps_the_number_of_errors() -> None:
    with pytest.raises(ValidationError) as info:
        observation(tags=[""] * MAX_TAGS)
    assert "and 22 more" in format_validation_error(info.value)


# --- Module hygiene --------------------------------------------------------------


def test_payloads_all_names_exist_and_are_sorted() -> None:
    assert all(hasattr(payloads, name) for name in payloads.__all__)
    assert len(set(payloads.__all__)) == len(payloads.__all__)


@pytest.mark.parametrize("model", [Observation, Sighting, Retraction, Alert, Rule, StixObject])
def test_payload_models_have_a_json_schema(model: type[Payload]) -> None:
    schema = model.model_json_schema()
    assert schema["additionalProperties"] is False


def test_payload_vectors_encode_exactly() -> None:
    vectors = json.loads((Path(__file__).parent.parent / "vectors" / "payloads.json").read_text())
    assert {v["kind"] for v in vectors} == set(PAYLOAD_KINDS)
    for vector in vectors:
        payload = parse_payload_json(vector["input"])
        assert encode_payload(payload).hex() == vector["encoded"]
        assert payload.model_dump(mode="json", exclude_none=True) == vector["canonical"]
        assert decode_payload(bytes.fromhex(vector["encoded"])) == payload


# --- the short path of decode_payload_with_fields ----------------------------------
# _decode_valid skips decode()'s canonical walk because the final re-encoding check
# implies it; these hold it to the full path (_decode_checked): whatever it accepts,
# the full path accepts with the same model and dump, and the full path's refusals
# are still raised with their own error.


def _agree(data: bytes) -> None:
    short = payloads._decode_valid(data)
    try:
        full = payloads._decode_checked(data)
    except EntraideError:
        assert short is None
        return
    assert short is not None
    assert short == full


@pytest.mark.parametrize("payload", examples(), ids=lambda p: p.kind)
def test_decode_short_path_accepts_what_the_full_path_accepts(payload: Payload) -> None:
    data = encode_payload(payload)
    assert payloads._decode_valid(data) == payloads._decode_checked(data)
    _agree(data)


@pytest.mark.parametrize("data", [
    msgpack.packb({"value": "203.0.113.7", "kind": "observation", "type": "ipv4-addr"}),
    encode_payload(observation()) + b"\x00",
    # a duplicate key (the second copy wins in msgpack): same value, other bytes
    b"\x84" + encode_payload(observation())[1:] + msgpack.packb("kind")
    + msgpack.packb("observation"),
    # confidence 70 as a uint16 instead of a positive fixint
    encode_payload(observation(confidence=70)).replace(b"\xaaconfidence\x46",
                                                       b"\xaaconfidence\xcd\x00\x46"),
    # a str of 3 bytes written with a str8 header instead of a fixstr
    encode_payload(observation(tags=["abc"])).replace(b"\x91\xa3abc", b"\x91\xd9\x03abc"),
    msgpack.packb({"confidence": 70.0, "kind": "observation", "type": "ipv4-addr",
                   "value": "203.0.113.7"}),
], ids=["unsorted", "trailing", "duplicate-key", "long-int", "long-str", "float"])
def test_decode_short_path_refuses_non_canonical_bytes(data: bytes) -> None:
    assert payloads._decode_valid(data) is None
    with pytest.raises(EncodingError):
        decode_payload_with_fields(data)
    _agree(data)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(PAYLOAD_KINDS), st.dictionaries(_FIELD_NAMES, _HOSTILE_VALUES, max_size=6),
       st.booleans())
def test_decode_short_path_agrees_with_the_full_path(
    kind: str, fields: dict[str, Any], sort: bool
) -> None:
    value = {"kind": kind} | fields
    _agree(encode(value) if sort else msgpack.packb(value))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_decode_short_path_agrees_on_random_bytes(data: bytes) -> None:
    _agree(data)
