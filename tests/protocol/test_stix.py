"""STIX 2.1 mapping (protocol/stix.py) and patterns (protocol/stix_pattern.py).

Every object produced is checked with the OASIS tools themselves: it must parse with
``stix2`` and pass ``stix2-validator`` with no error.
"""

from __future__ import annotations

from typing import Any

import pytest
import stix2
from hypothesis import given, settings
from hypothesis import strategies as st
from stix2validator import ValidationOptions, validate_instance

from protocol.entries import TLP
from protocol.errors import PayloadError
from protocol.indicators import IndicatorType
from protocol.payloads import Alert, Observation, Retraction, Rule, Sighting, StixObject
from protocol.stix import (
    EXTENSION_ID,
    TLP1_MARKINGS,
    TLP2_MARKINGS,
    EntryRef,
    check_stix_object,
    entry_stix_id,
    format_ms,
    format_us,
    identity_id,
    identity_to_stix,
    import_object,
    object_json,
    observation_text,
    parse_timestamp,
    payload_to_stix,
    revoke,
    tlp_of_markings,
)
from protocol.stix_check import _plain_stix_basics
from protocol.stix_pattern import indicator_of, parse_pattern, pattern_for, simple_indicator

T0 = "2024-01-01T00:00:00.000Z"
REF = EntryRef("ab" * 32, "ed25519:" + "Q" * 43, 7, 1_767_323_045_123, TLP.AMBER)
VALUES = {
    IndicatorType.IPV4_ADDR: "203.0.113.0/24",
    IndicatorType.IPV6_ADDR: "2001:db8::1",
    IndicatorType.DOMAIN_NAME: "xn--80ak6aa92e.com",
    IndicatorType.URL: "https://evil.example/a?q='x'\\y",
    IndicatorType.EMAIL_ADDR: "o'brien@evil.example",
    IndicatorType.FILE_MD5: "d41d8cd98f00b204e9800998ecf8427e",
    IndicatorType.FILE_SHA1: "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    IndicatorType.FILE_SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    IndicatorType.FILE_SHA512: "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
                               "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    IndicatorType.AUTONOMOUS_SYSTEM: "AS64500",
    IndicatorType.USER_ACCOUNT: "EXAMPLE\\jdoe",
    IndicatorType.CVE: "CVE-2021-44228",
}


def assert_valid_stix(obj: dict[str, Any]) -> None:
    result = validate_instance(obj, ValidationOptions())
    assert result.is_valid, [str(e) for e in result.errors]
    stix2.parse(obj)


def rich_observation(kind: IndicatorType) -> Observation:
    return Observation(
        type=kind, value=VALUES[kind], confidence=80, severity="high",
        first_seen="2026-01-01T00:00:00Z", last_seen="2026-01-02T00:00:00.5Z",
        valid_until="2027-01-01T00:00:00Z", tags=("ransomware", "lockbit"),
        description={"en": "C2 server", "fr": "serveur de commande"},
        references=("https://example.org/report",))


# --- patterns ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in IndicatorType if k is not IndicatorType.CVE])
def test_pattern_for_reads_back_to_the_same_indicator(kind: IndicatorType) -> None:
    pattern = parse_pattern(pattern_for(kind, VALUES[kind]))
    assert pattern.simple
    assert indicator_of(pattern) == (kind, VALUES[kind])


def test_pattern_for_cve_is_refused() -> None:
    with pytest.raises(PayloadError, match="vulnerability"):
        pattern_for(IndicatorType.CVE, "CVE-2021-44228")


@pytest.mark.parametrize("text", [
    "[ipv4-addr:value = '1.2.3.4'] OR [domain-name:value = 'x.example']",
    "[file:hashes.'SHA-256' = 'aa' AND file:size > 10] WITHIN 300 SECONDS",
    "([network-traffic:dst_ref.value ISSUBSET '10.0.0.0/8'] FOLLOWEDBY "
    "[process:name MATCHES '^cmd']) REPEATS 2 TIMES",
    "[email-message:to_refs[*].value IN ('a@b.example', 'c@d.example')]",
    "[x-custom-thing:extensions.'x-ext'.field NOT LIKE 'a%'] START t'2020-01-01T00:00:00Z' "
    "STOP t'2021-01-01T00:00:00.5Z'",
    "[artifact:payload_bin = b'aGVsbG8=' AND artifact:hashes.MD5 = h'00ff']",
    "[user-account:is_privileged = true]",
    "[windows-registry-key:key = 'HKLM\\\\Soft\\'ware']",
])
def test_parse_pattern_accepts_valid_stix_patterns(text: str) -> None:
    pattern = parse_pattern(text)
    assert pattern.comparisons
    assert indicator_of(pattern) is None


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("ipv4-addr:value = '1.2.3.4'", "expected '\\[' or '\\('"),
    ("[ipv4-addr:value = '1.2.3.4'", "expected '\\]'"),
    ("[ipv4-addr:value = ]", "expected a value"),
    ("[ipv4-addr:value == '1']", "expected a value"),
    ("[ipv4-addr:value = 'unterminated]", "unexpected character"),
    ("[IPV4:value = '1']", "object type"),
    ("[ipv4-addr:value = '1'] WITHIN -5 SECONDS", "positive"),
    ("[ipv4-addr:value = '1'] extra", "unexpected"),
    ("[a:b = '1' AND]", "expected an object type"),
    ("(" * 40 + "[a-b:c = 1]" + ")" * 40, "nested deeper"),
])
def test_parse_pattern_refuses_invalid_patterns_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(PayloadError, match="invalid STIX pattern.*" + why):
        parse_pattern(text)


# --- export --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(IndicatorType))
def test_observation_to_stix_is_valid_stix_for_every_indicator_type(kind: IndicatorType) -> None:
    obj = payload_to_stix(rich_observation(kind), REF)
    assert obj is not None
    assert_valid_stix(obj)
    expected_type = "vulnerability" if kind is IndicatorType.CVE else "indicator"
    assert obj["id"] == entry_stix_id(expected_type, REF.id)
    assert obj["created_by_ref"] == identity_id(REF.origin)
    assert obj["object_marking_refs"] == [TLP2_MARKINGS[TLP.AMBER]]
    assert obj["confidence"] == 80 and obj["labels"] == ["ransomware", "lockbit"]
    assert obj["description"] == "C2 server"
    if expected_type == "indicator":
        assert obj["valid_from"] == "2026-01-01T00:00:00.000Z"
        assert obj["valid_until"] == "2027-01-01T00:00:00.000Z"
        assert indicator_of(parse_pattern(obj["pattern"])) == (kind, VALUES[kind])


def test_stix_ids_are_deterministic_per_entry_and_distinct_between_entries() -> None:
    obs = Observation(type="ipv4-addr", value="192.0.2.1")
    other = EntryRef("cd" * 32, REF.origin, 8, REF.ts, REF.tlp)
    first, again = payload_to_stix(obs, REF), payload_to_stix(obs, REF)
    assert first is not None and again is not None
    assert first["id"] == again["id"] == "indicator--" + entry_stix_id("x", REF.id).split("--")[1]
    assert payload_to_stix(obs, other)["id"] != first["id"]  # type: ignore[index]
    assert identity_id(REF.origin) != identity_id("ed25519:" + "R" * 43)


@pytest.mark.parametrize("payload", [
    Sighting(of="cd" * 32, count=10**12, seen_at="2026-01-01T00:00:00Z", note="seen twice"),
    Rule(rule_type="yara", name="r1", text="rule r1 { condition: true }",
         description={"fr": "règle"}),
    Rule(rule_type="sigma", name="s1", text="title: x\ndetection: {}"),
    Rule(rule_type="suricata", name="u1", text='alert tcp any any -> any any (msg:"x";)'),
    Rule(rule_type="snort", name="n1", text='alert tcp any any -> any any (msg:"x";)'),
    Alert(title="Ransomware at a hospital", severity="critical",
          description={"en": "help", "fr": "aide"}, contact="soc@qc.example",
          needs=("forensics",), related=("ef" * 32,)),
], ids=lambda p: p.kind + getattr(p, "rule_type", ""))
def test_other_payloads_map_to_valid_stix(payload: Any) -> None:
    obj = payload_to_stix(payload, REF)
    assert obj is not None
    assert_valid_stix(obj)
    assert obj["extensions"][EXTENSION_ID]["entry"] == REF.id
    if isinstance(payload, Sighting):
        assert obj["sighting_of_ref"] == entry_stix_id("indicator", payload.of)
        assert obj["count"] == 999_999_999  # STIX's maximum; the exact count rides along
        assert obj["extensions"][EXTENSION_ID]["count"] == 10**12
    if isinstance(payload, Rule):
        assert obj["pattern_type"] == payload.rule_type.value
        assert obj["pattern"] == payload.text


def test_retraction_maps_to_a_later_revoked_version() -> None:
    assert payload_to_stix(Retraction(of="cd" * 32), REF) is None
    original = payload_to_stix(Observation(type="url", value="http://x.example/"), REF)
    assert original is not None
    same_ms = revoke(original, REF.ts)
    later = revoke(original, REF.ts + 5000)
    assert same_ms is not None and later is not None
    assert same_ms["revoked"] is True and same_ms["id"] == original["id"]
    assert parse_timestamp(same_ms["modified"]) > parse_timestamp(original["modified"])
    assert later["modified"] == format_ms(REF.ts + 5000)
    assert_valid_stix(same_ms)
    assert revoke({"type": "ipv4-addr", "id": "ipv4-addr--" + "0" * 8 + "-0000-4000-8000-"
                   + "0" * 12, "value": "1.2.3.4"}, REF.ts) is None


def test_identity_is_valid_and_the_same_for_the_same_key() -> None:
    one = identity_to_stix(REF.origin, "QC", jurisdiction="Québec")
    assert_valid_stix(one)
    assert one["id"] == identity_to_stix(REF.origin, "other name")["id"]


def test_carried_stix_object_is_served_unchanged() -> None:
    malware = {"type": "malware", "spec_version": "2.1", "created": "2024-01-01T00:00:00.000Z",
               "id": "malware--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061", "name": "X",
               "modified": "2024-01-01T00:00:00.000Z", "is_family": True, "x_score": 1.5}
    assert payload_to_stix(StixObject.from_object(malware), REF) == malware


# --- TLP and timestamps -------------------------------------------------------------


def test_tlp_markings_map_both_versions_and_keep_the_most_restrictive() -> None:
    assert {tlp_of_markings([m]) for m in TLP2_MARKINGS.values()} == set(TLP)
    white, green, amber, red = TLP1_MARKINGS
    assert [tlp_of_markings([m]) for m in (white, green, amber, red)] == [
        TLP.CLEAR, TLP.GREEN, TLP.AMBER, TLP.RED]
    assert tlp_of_markings([green, TLP2_MARKINGS[TLP.AMBER_STRICT], amber]) == TLP.AMBER_STRICT
    assert tlp_of_markings(["marking-definition--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061"]) is None
    assert tlp_of_markings(None) is None


def test_timestamps_parse_and_format() -> None:
    assert parse_timestamp("1970-01-01T00:00:01.5Z") == 1_500_000
    assert parse_timestamp("2026-01-02T03:04:05.123456789Z") == parse_timestamp(
        "2026-01-02T03:04:05.123456Z")
    assert format_us(1_500_000) == "1970-01-01T00:00:01.500Z"
    assert format_us(1_500_001) == "1970-01-01T00:00:01.500001Z"
    assert format_us(1_500_000, taxii=True) == "1970-01-01T00:00:01.500000Z"
    for bad in ("2026-01-02 03:04:05Z", "2026-01-02T03:04:05+00:00", "2026-02-30T00:00:00Z", 5):
        with pytest.raises(PayloadError):
            parse_timestamp(bad)


# --- import --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(IndicatorType))
def test_import_of_an_exported_observation_gives_it_back(kind: IndicatorType) -> None:
    original = rich_observation(kind)
    obj = payload_to_stix(original, REF)
    assert obj is not None
    imported = import_object(obj)
    assert imported.tlp is TLP.AMBER and imported.dropped == ()
    payload = imported.payload
    assert isinstance(payload, Observation)
    assert payload.model_copy(update={"tags": original.tags}) == original
    assert f"stix-id:{obj['id']}" in payload.tags
    again = payload_to_stix(payload, REF)
    assert again is not None and again["id"] == obj["id"] and again["modified"] == obj["modified"]
    assert again["labels"] == obj["labels"]  # the reserved tags are not labels


def test_import_keeps_a_posted_indicators_id_and_versions() -> None:
    posted = {"type": "indicator", "spec_version": "2.1", "name": "evil",
              "id": "indicator--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061",
              "created": "2024-01-01T00:00:00.000Z", "modified": "2024-02-01T00:00:00.000Z",
              "pattern": "[domain-name:value = 'EVIL.example.']", "pattern_type": "stix",
              "valid_from": "2024-01-01T00:00:00Z", "indicator_types": ["malicious-activity"],
              "object_marking_refs": [next(iter(TLP1_MARKINGS))], "lang": "fr",
              "description": "méchant"}
    imported = import_object(posted)
    obs = imported.payload
    assert isinstance(obs, Observation)
    assert (obs.type, obs.value) == (IndicatorType.DOMAIN_NAME, "evil.example")
    assert obs.description is not None and obs.description.fr == "méchant"
    assert imported.tlp is TLP.CLEAR and imported.version == posted["modified"]
    assert set(imported.dropped) == {"indicator_types", "name"}
    obj = payload_to_stix(obs, REF)
    assert obj is not None
    assert (obj["id"], obj["created"], obj["modified"]) == (
        posted["id"], posted["created"], posted["modified"])
    assert_valid_stix(obj)


def test_import_carries_what_observations_do_not_model() -> None:
    complex_pattern = {"type": "indicator", "spec_version": "2.1",
                       "id": "indicator--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0062",
                       "created": T0, "modified": T0,
                       "pattern": "[ipv4-addr:value = '1.2.3.4'] OR [ipv4-addr:value = '5.6.7.8']",
                       "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z"}
    yara = {**complex_pattern, "id": "indicator--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0063",
            "pattern": "rule x { condition: true }", "pattern_type": "yara"}
    octal = {**complex_pattern, "pattern": "[ipv4-addr:value = '010.0.0.1']"}
    report = {"type": "report", "spec_version": "2.1", "name": "R",
              "id": "report--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0064",
              "created": T0, "modified": T0,
              "published": "2024-01-01T00:00:00.000Z", "object_refs": [complex_pattern["id"]]}
    for obj in (complex_pattern, yara, octal, report):
        imported = import_object(obj)
        assert isinstance(imported.payload, StixObject)
        assert imported.payload.object == obj


@pytest.mark.parametrize(("change", "why"), [
    ({"created": None}, "created must be a STIX timestamp"),
    ({"modified": "2023-01-01T00:00:00.000Z"}, "modified is earlier than created"),
    ({"modified": "2024-01-01T00:00:01Z"}, "precise to the millisecond"),
    ({"type": "malware", "id": "malware--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061"}, "is_family"),
    ({"pattern": "[ipv4-addr:value = '1.2.3.4'"}, "invalid STIX pattern"),
    ({"pattern": "[not a pattern]"}, "invalid STIX pattern"),
    ({"valid_until": "2023-01-01T00:00:00Z"}, "valid_until must be later"),
    ({"confidence": 101}, "confidence"),
    ({"created_by_ref": "someone"}, "created_by_ref must be a STIX id"),
    ({"object_marking_refs": ["identity--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061"]},
     "marking-definition"),
    ({"pattern_type": None}, "needs 'pattern_type'"),
    ({"spec_version": "2.0"}, "spec_version"),
    ({"id": "indicator--not-a-uuid"}, "'id' must be"),
    ({"type": "bundle", "id": "bundle--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061"}, "bundle"),
    ({"Bad-Name": 1}, "property name"),
])
def test_import_refuses_invalid_objects_with_a_reason(change: dict[str, Any], why: str) -> None:
    obj: dict[str, Any] = {"type": "indicator", "spec_version": "2.1",
                           "id": "indicator--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061",
                           "created": T0, "modified": T0,
                           "pattern": "[ipv4-addr:value = '1.2.3.4']", "pattern_type": "stix",
                           "valid_from": "2024-01-01T00:00:00Z"}
    for key, value in change.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    with pytest.raises(PayloadError, match=why):
        import_object(obj)


def test_check_stix_object_accepts_observables_without_timestamps() -> None:
    sco = {"type": "ipv4-addr", "id": "ipv4-addr--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061",
           "value": "1.2.3.4"}
    assert check_stix_object(sco) == sco
    assert isinstance(import_object(sco).payload, StixObject)


# --- the quick paths agree with the complete checks -----------------------------------

_UUID_TEXT = "0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061"
_JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats()
                 | st.text(max_size=8) | st.sampled_from(["\ud800", "é", 1 << 70])
                 | st.integers(0, 1).map(lambda n: 10**5000 + n))
_ODD_VALUES = st.sampled_from([(1, 2), {1, 2}, b"x", frozenset(), object()])
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=3),
    max_leaves=12)


@st.composite
def stix_like(draw: st.DrawFn) -> dict[Any, Any]:
    """Objects near the STIX basics: good and bad types, ids, versions, values, depths."""
    stix_type = draw(st.sampled_from(["indicator", "malware", "ipv4-addr", "bundle", "ab",
                                      "x-thing", "Indicator", 7]))
    obj: dict[Any, Any] = {"type": stix_type}
    obj["id"] = draw(st.sampled_from([f"{stix_type}--{_UUID_TEXT}", f"{stix_type}--nope",
                                      f"malware--{_UUID_TEXT}", f"{stix_type}--{_UUID_TEXT}"
                                      .replace("-4a4d", "-4a4d-").upper()]))
    version = draw(st.sampled_from(["2.1", "2.0", 2.1, None, "absent"]))
    if version != "absent":
        obj["spec_version"] = version
    for key, value in draw(st.dictionaries(st.text(max_size=6) | st.integers(0, 2),
                                           _JSON | _ODD_VALUES, max_size=4)).items():
        obj.setdefault(key, value)
    nesting = draw(st.sampled_from([0, 0, 63, 64, 65]))
    if nesting:
        deep: Any = "leaf"
        for _ in range(nesting):
            deep = [deep]
        obj["x_deep"] = deep
    if draw(st.booleans()):
        obj["x_big"] = "é" * draw(st.sampled_from([1, 97_000, 98_400]))
    return obj


@settings(max_examples=400, deadline=None)
@given(stix_like())
def test_quick_basics_accept_only_what_stix_object_accepts(obj: dict[Any, Any]) -> None:
    try:
        StixObject.from_object(obj)
    except PayloadError as exc:
        assert not _plain_stix_basics(obj)
        with pytest.raises(PayloadError) as refused:
            check_stix_object(obj)
        if "is over 196608 bytes" in str(exc) or "at most 196608 characters" in str(exc):
            assert str(refused.value).startswith("too large: the object is over 196608 bytes")
        else:
            assert str(refused.value) == str(exc)  # the same precise reason as before
    else:
        # Cautious only where JSON text changes the value: tuples, keys that are not str.
        assert _plain_stix_basics(obj) or not _json_as_is(obj)


def _json_as_is(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _json_as_is(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_as_is(v) for v in value)
    return not isinstance(value, tuple)


_SIMPLE_VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([
    "[{t}:value = '{v}']", "[file:hashes.'{h}' = '{v}']", "[file:hashes.{h} = '{v}']",
    "[autonomous-system:number = {n}]", "[{t}:value  = '{v}']", "[{t}:value = '{v}'] ",
    "[{t}:value = '{v}' OR {t}:value = 'x']", "[{t}:value = \"{v}\"]", "[{t}:name = '{v}']",
    "[autonomous-system:number = {n}.5]", "[autonomous-system:number = -{n}]",
]), st.sampled_from(["ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr", "file",
                     "x-custom", "IPV4-ADDR"]),
    st.sampled_from(["MD5", "SHA-1", "SHA-256", "SHA-512", "SHA256", "sha-256", "TLSH", "A-B"]),
    _SIMPLE_VALUES, st.integers(0, 10**22))
def test_simple_indicator_reads_patterns_as_the_parser_does(
        form: str, stix_type: str, hash_name: str, value: str, number: int) -> None:
    text = form.format(t=stix_type, h=hash_name, v=value, n=number)
    quick = simple_indicator(text)
    try:
        parsed = indicator_of(parse_pattern(text))
    except PayloadError:
        assert quick is None
    else:
        assert quick is None or quick == parsed
    if stix_type in ("ipv4-addr", "url") and form == "[{t}:value = '{v}']" and not (
            {"'", "\\"} & set(value)):
        assert quick is not None  # the quick path does take the common form


_BASE_INDICATOR = {"type": "indicator", "spec_version": "2.1",
                   "id": f"indicator--{_UUID_TEXT}", "created": T0, "modified": T0,
                   "pattern": "[ipv4-addr:value = '198.51.100.7']", "pattern_type": "stix",
                   "valid_from": "2024-01-01T00:00:00Z"}


@st.composite
def posted_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Indicators and vulnerabilities as tools post them, valid or not in many ways."""
    obj = dict(_BASE_INDICATOR)
    kind = draw(st.sampled_from(list(VALUES)))
    if kind is IndicatorType.CVE:
        obj = {k: v for k, v in obj.items() if not k.startswith(("pattern", "valid"))}
        obj.update(type="vulnerability", id=f"vulnerability--{_UUID_TEXT}",
                   name=draw(st.sampled_from([VALUES[kind], "cve-2021-44228", "CVE-21-1"])))
    else:
        value = draw(st.sampled_from([VALUES[kind], VALUES[kind].upper(), "", "x'y", "010.0.0.1",
                                      " 192.0.2.1", "192.0.2.1/32", "EVIL.example."]))
        obj["pattern"] = pattern_for(kind, VALUES[kind]) if draw(st.booleans()) else (
            draw(st.sampled_from(["[ipv4-addr:value = '{}']", "[domain-name:value = '{}']",
                                  "[url:value = '{}']", "[ipv4-addr:value='{}']",
                                  "[file:hashes.MD5 = '{}']"])).format(value))
    options: dict[str, Any] = {
        "name": st.sampled_from(["evil", VALUES[kind], "é"]),
        "modified": st.sampled_from(["2024-02-01T00:00:00.000Z", "2023-01-01T00:00:00.000Z",
                                     "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123456Z"]),
        "confidence": st.sampled_from([0, 55, 100, 101, True, "80"]),
        "labels": st.sampled_from([["bench"], [], ["a", ""], ["stix-id:x", "ok"]]),
        "description": st.sampled_from(["méchant", "two\nlines", ""]),
        "lang": st.sampled_from(["fr", "en", "fr-CA"]),
        "valid_until": st.sampled_from(["2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z"]),
        "object_marking_refs": st.sampled_from(
            [[TLP2_MARKINGS[TLP.AMBER]], [next(iter(TLP1_MARKINGS))],
             [f"identity--{_UUID_TEXT}"], []]),
        "created_by_ref": st.sampled_from([f"identity--{_UUID_TEXT}", "someone"]),
        "external_references": st.sampled_from(
            [[{"source_name": "cve", "external_id": "CVE-2021-44228"}],
             [{"source_name": "x", "url": "https://example.org/"}], [{"url": "x"}]]),
        "indicator_types": st.sampled_from([["malicious-activity"]]),
        "revoked": st.sampled_from([True, False, "no"]),
        "x_score": st.sampled_from([1.5, 7]),
    }
    for key in draw(st.lists(st.sampled_from(sorted(options)), max_size=5, unique=True)):
        obj[key] = draw(options[key])
    return obj


@settings(max_examples=300, deadline=None)
@given(posted_objects())
def test_every_object_the_quick_path_accepts_passes_stix2_validator(obj: dict[str, Any]) -> None:
    quick = _plain_stix_basics(obj) and (obj["type"] != "indicator" or simple_indicator(
        obj["pattern"]) is not None)
    try:
        imported = import_object(obj)
    except PayloadError:
        return
    if not quick:
        return  # judged by the complete checks, as before (e.g. the parser's patterns)
    result = validate_instance(obj, ValidationOptions())
    assert result.is_valid, [str(e) for e in result.errors]
    stix2.parse(obj, allow_custom=True)  # x_ properties are custom, not errors
    if isinstance(imported.payload, Observation):
        assert imported.payload.model_dump() == Observation.model_validate(
            imported.payload.model_dump()).model_dump()


def test_the_common_posted_indicator_takes_the_quick_path() -> None:
    obj = {**_BASE_INDICATOR, "labels": ["bench"], "confidence": 80, "name": "198.51.100.7"}
    assert _plain_stix_basics(obj)
    assert simple_indicator(obj["pattern"]) == (IndicatorType.IPV4_ADDR, "198.51.100.7")
    for kind, value in VALUES.items():
        if kind is not IndicatorType.CVE:
            escaped = "'" in value or "\\" in value  # left to the parser
            assert simple_indicator(pattern_for(kind, value)) == (None if escaped
                                                                  else (kind, value))


MARKER = "5f0c" * 8


@pytest.mark.parametrize("kind", list(IndicatorType))
def test_observation_text_filled_in_is_the_text_of_the_object(kind: IndicatorType) -> None:
    posted = payload_to_stix(rich_observation(kind), REF)
    assert posted is not None
    obs = import_object(posted).payload
    assert isinstance(obs, Observation)
    text = observation_text(obs, REF.origin, REF.tlp, MARKER)
    assert text is not None
    for ref in (REF, EntryRef("cd" * 32, REF.origin, 123_456, 5, REF.tlp)):
        assert text.fill(ref.id, ref.seq) == object_json(payload_to_stix(obs, ref) or {})


def test_observation_text_is_none_when_the_object_needs_more_of_its_entry() -> None:
    native = rich_observation(IndicatorType.URL)
    assert observation_text(native, REF.origin, REF.tlp, MARKER) is None  # no STIX id
    exported = payload_to_stix(native, REF)
    assert exported is not None
    posted = import_object({**exported, "labels": ["c2", MARKER]}).payload
    assert isinstance(posted, Observation)
    assert observation_text(posted, REF.origin, REF.tlp, MARKER) is None  # marker in content
    assert observation_text(posted, REF.origin, REF.tlp, "ab" * 16) is not None
    unseen = posted.model_copy(update={"first_seen": None})
    assert observation_text(unseen, REF.origin, REF.tlp, "ab" * 16) is None  # valid_from = ts
    with pytest.raises(ValueError):
        observation_text(posted, REF.origin, REF.tlp, "not hex")


def test_check_stix_object_accepts_an_empty_custom_reference() -> None:
    # ATT&CK 18.1's data components carry x_mitre_data_source_ref "" (tests/data/stix).
    component = {"type": "x-mitre-data-component", "spec_version": "2.1",
                 "id": "x-mitre-data-component--7b375092-3a61-448d-900a-77c9a4bde4dc",
                 "created": "2021-10-20T15:05:19.272Z", "modified": "2025-10-24T17:49:31.456Z",
                 "name": "Module Load", "x_mitre_data_source_ref": "", "x_mitre_refs": []}
    assert check_stix_object(component) == component
    with pytest.raises(PayloadError, match="x_mitre_data_source_ref"):
        check_stix_object({**component, "x_mitre_data_source_ref": "not-a-ref"})
    with pytest.raises(PayloadError, match="created_by_ref"):
        check_stix_object({**component, "created_by_ref": ""})  # STIX's own: checked


def test_check_stix_object_reports_a_size_limit_as_too_large() -> None:
    big = {"type": "x-mitre-collection", "spec_version": "2.1",
           "id": "x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09",
           "created": "2020-10-27T14:49:39.188Z", "modified": "2025-10-28T14:00:00.188Z",
           "name": "ICS ATT&CK", "x_mitre_contents": ["x" * 100] * 2100}
    with pytest.raises(PayloadError) as refused:
        check_stix_object(big)
    assert str(refused.value).startswith("too large: the object is over 196608 bytes")
