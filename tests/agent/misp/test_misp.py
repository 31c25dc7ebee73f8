"""MISP event JSON import and export (agent/misp/convert.py, agent/cli/misp.py), through the
running node's API and the CLI, on a realistic event."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.cli.misp import export_misp_command, import_misp_command
from agent.misp.convert import export_misp, parse_misp
from protocol.entries import TLP
from protocol.errors import PayloadError
from tests.agent._api_helpers import Api, running_api

EVENT: dict[str, Any] = {"Event": {
    "info": "Phishing campaign against municipal services",
    "date": "2026-03-01", "threat_level_id": "1", "analysis": "2", "distribution": "1",
    "uuid": "5e0c7b5b-88ff-4a4d-aa9d-feb398cd0061",
    "Tag": [{"name": "tlp:amber"}, {"name": "misp-galaxy:threat-actor=\"APT-X\""}],
    "Attribute": [
        {"type": "ip-dst", "category": "Network activity", "value": "203.0.113.7",
         "to_ids": True, "comment": "C2 server", "Tag": [{"name": "tlp:green"}]},
        {"type": "ip-src", "category": "Network activity", "value": "2001:DB8::1"},
        {"type": "domain", "category": "Network activity", "value": "Login-Portal.example."},
        {"type": "hostname", "category": "Network activity", "value": "mail.evil.example",
         "first_seen": "2026-02-01T00:00:00.000000+00:00"},
        {"type": "url", "category": "Network activity",
         "value": "https://login-portal.example/verify?id=1", "Tag": [{"name": "tlp:white"}]},
        {"type": "email-src", "category": "Payload delivery", "value": "ceo@evil.example"},
        {"type": "email-dst", "category": "Payload delivery", "value": "clerk@city.example"},
        {"type": "md5", "category": "Payload delivery",
         "value": "D41D8CD98F00B204E9800998ECF8427E"},
        {"type": "sha1", "category": "Payload delivery",
         "value": "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {"type": "sha256", "category": "Payload delivery",
         "value": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"type": "vulnerability", "category": "External analysis", "value": "cve-2023-23397"},
        {"type": "AS", "category": "Network activity", "value": "64500"},
        {"type": "filename", "category": "Payload delivery", "value": "invoice.pdf.exe"},
        {"type": "ip-dst|port", "category": "Network activity", "value": "198.51.100.1|443"},
        {"type": "ip-dst", "category": "Network activity", "value": "010.0.0.1"},
        {"type": "domain", "category": "Network activity", "value": "login-portal.example"},
        {"type": "url", "category": "Network activity", "value": "https://gone.example/",
         "deleted": True},
    ],
    "Object": [{"name": "file", "Attribute": [
        {"type": "sha256", "object_relation": "sha256",
         "value": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
        {"type": "size-in-bytes", "object_relation": "size-in-bytes", "value": "4"},
    ]}],
}}
SUPPORTED = 14  # attributes the event carries that Entraide takes (one repeats another)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


def test_parse_misp_maps_types_tags_and_reports_what_it_does_not_take() -> None:
    parsed = parse_misp(EVENT)
    assert (parsed.events, parsed.attributes) == (1, 18)
    got = {(o.type.value, o.value): (tlp, o) for o, tlp in parsed.items}
    assert len(got) == SUPPORTED and parsed.repeated == 1
    assert got[("ipv4-addr", "203.0.113.7")][0] is TLP.GREEN  # the attribute's tag wins
    assert got[("url", "https://login-portal.example/verify?id=1")][0] is TLP.CLEAR
    assert got[("domain-name", "login-portal.example")][0] is TLP.AMBER  # the event's
    for value in ("2001:db8::1", "mail.evil.example", "ceo@evil.example", "clerk@city.example",
                  "d41d8cd98f00b204e9800998ecf8427e", "CVE-2023-23397", "AS64500"):
        assert any(v == value for _, v in got), value
    c2 = got[("ipv4-addr", "203.0.113.7")][1]
    assert c2.description is not None and c2.description.en == "C2 server"
    assert c2.severity is not None and c2.severity.value == "high"
    assert [t for t in c2.tags if not t.startswith("x-misp:")] == [
        'misp-galaxy:threat-actor="APT-X"']
    assert "x-misp:info=" + EVENT["Event"]["info"] in c2.tags
    other = got[("domain-name", "login-portal.example")][1]
    assert other.description is None  # the event's info is not the attribute's comment
    port = got[("ipv4-addr", "198.51.100.1")][1]
    assert {"x-misp:type=ip-dst|port", "x-misp:port=443"} <= set(port.tags)
    assert got[("domain-name", "mail.evil.example")][1].first_seen is not None
    assert {u["type"] for u in parsed.unsupported} == {"filename", "size-in-bytes"}
    assert all(u["reason"] for u in parsed.unsupported)
    assert [i["value"] for i in parsed.invalid] == ["010.0.0.1"]
    assert "ipv4-addr" in parsed.invalid[0]["reason"]


@pytest.mark.parametrize("document", [{}, [], {"response": []}, {"Event": "x"}, "text"])
def test_parse_misp_refuses_documents_without_events(document: Any) -> None:
    with pytest.raises(PayloadError, match="no MISP event"):
        parse_misp(document)


def test_parse_misp_accepts_search_answers_and_lists() -> None:
    event = EVENT["Event"]
    for document in ({"response": [{"Event": event}]}, [{"Event": event}, {"Event": event}],
                     event):
        parsed = parse_misp(document)
        assert len(parsed.items) == SUPPORTED


async def test_misp_import_export_round_trip_through_the_api(api: Api) -> None:
    status, result = await api.call("POST", "/api/v1/import/misp", scope="write",
                                    json_body=EVENT)
    assert status == 201, result
    assert result["imported"] == SUPPORTED and len(result["ids"]) == SUPPORTED
    assert {u["type"] for u in result["unsupported"]} == {"filename", "size-in-bytes"}
    status, page = await api.call("GET", "/api/v1/observations?limit=100", scope="read")
    observations = page["observations"]
    assert len(observations) == SUPPORTED
    exported = export_misp(observations, info="round trip", now=datetime.now(UTC))
    again = parse_misp(exported)
    assert again.unsupported == [] and again.invalid == []

    def keyed(items: Any) -> set[tuple[str, str, TLP]]:
        return {(o.type.value, o.value, tlp) for o, tlp in items}

    assert keyed(again.items) == keyed(parse_misp(EVENT).items)
    assert exported["Event"]["Tag"] == [{"name": "tlp:amber"},
                                        {"name": 'misp-galaxy:threat-actor="APT-X"'}]
    assert exported["Event"]["uuid"] == EVENT["Event"]["uuid"]
    assert exported["Event"]["threat_level_id"] == "1"
    # Importing the same event again shares nothing new.
    entries = api.node.ledger.counts().entries
    status, result = await api.call("POST", "/api/v1/import/misp", scope="write",
                                    json_body=EVENT)
    assert status == 201 and result["imported"] == 0
    assert result["already_shared"] == SUPPORTED
    assert api.node.ledger.counts().entries == entries


async def test_misp_red_needs_an_audience_and_tlp_defaults_apply(api: Api) -> None:
    event = {"Event": {"info": "x", "Tag": [{"name": "tlp:red"}],
                       "Attribute": [{"type": "domain", "value": "red.example"}]}}
    status, result = await api.call("POST", "/api/v1/import/misp", scope="write",
                                    json_body=event)
    assert status == 201 and result["imported"] == 0
    assert "audience" in result["invalid"][0]["reason"]
    status, result = await api.call("POST", "/api/v1/import/misp?audience=ON", scope="write",
                                    json_body=event)
    assert status == 201 and result["imported"] == 1
    plain = {"Event": {"info": "y", "Attribute": [{"type": "domain", "value": "y.example"}]}}
    status, result = await api.call("POST", "/api/v1/import/misp?tlp=CLEAR", scope="write",
                                    json_body=plain)
    assert status == 201
    status, found = await api.call("GET", "/api/v1/observations/" + result["ids"][0],
                                   scope="read")
    assert found["tlp"] == "CLEAR"


async def test_misp_import_refuses_bad_input_and_wrong_scope(api: Api) -> None:
    entries = api.node.ledger.counts().entries
    cases = [({"data": "{not json", "headers": {"Content-Type": "application/json"}},
              "write", 400),
             ({"json_body": {"nothing": 1}}, "write", 422),
             ({"json_body": EVENT}, "read", 403)]
    for options, scope, expected in cases:
        status, body = await api.call("POST", "/api/v1/import/misp", scope=scope, **options)
        assert status == expected and body["error"]["message"], body
    status, body = await api.call("POST", "/api/v1/import/misp?tlp=PURPLE", scope="write",
                                  json_body=EVENT)
    assert status == 422
    assert api.node.ledger.counts().entries == entries


async def test_misp_cli_import_and_export(api: Api, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "event.json"
    source.write_text(json.dumps(EVENT))
    base = f"http://127.0.0.1:{api.client.port}"
    common = ["--api", base, "--token", api.tokens["write"]]
    data_dir = api.node.data_dir.root
    status = await asyncio.to_thread(import_misp_command, [str(source), *common, "--json"],
                                     data_dir)
    assert status == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["imported"] == SUPPORTED
    target = tmp_path / "out.json"
    status = await asyncio.to_thread(export_misp_command,
                                     ["-o", str(target), "--type", "ipv4-addr", *common],
                                     data_dir)
    assert status == 0
    exported = json.loads(target.read_text())
    by_value = {a["value"]: a for a in exported["Event"]["Attribute"]}
    assert sorted(by_value) == ["198.51.100.1|443", "203.0.113.7"]  # ip-dst|port whole
    assert by_value["198.51.100.1|443"]["type"] == "ip-dst|port"
    assert {"name": "tlp:green"} in by_value["203.0.113.7"]["Tag"]
    assert exported["Event"]["info"] == EVENT["Event"]["info"]  # the source event's
    unchanged = copy.deepcopy(exported)
    assert {o.value for o, _ in parse_misp(unchanged).items} == {"203.0.113.7",
                                                                 "198.51.100.1"}


@pytest.mark.parametrize("document", [
    {"Event": {"Attribute": True}},
    {"Event": {"Object": 1}},
    {"Event": {"Object": [{"Attribute": False}]}},
    {"Attribute": "not a list"},
])
def test_parse_misp_ignores_attribute_and_object_fields_that_are_not_lists(
        document: Any) -> None:
    # Found by the fuzzer (tests/fuzz): these raised TypeError ('bool' object is not
    # iterable) instead of a typed error.
    result = parse_misp(document)
    assert result.events == 1 and result.items == []


def test_parse_misp_does_not_recurse_without_bound() -> None:
    document: Any = {"Event": {"Attribute": []}}
    for _ in range(5000):
        document = {"response": [document]}
    with pytest.raises(PayloadError, match="no MISP event"):
        parse_misp(document)


# --- the reasons in the reader's language ----------------------------------------------

REASONS_EVENT: dict[str, Any] = {"Event": {"info": "reasons", "Attribute": [
    {"type": "ip-dst", "value": "203.0.113.9", "to_ids": False},
    {"type": "filename", "value": "invoice.pdf.exe"},
    {"type": "ip-dst|port", "value": "198.51.100.9"},
    {"type": "domain", "value": 42},
]}}


async def test_misp_import_reasons_follow_accept_language(api: Api) -> None:
    answers = {}
    for lang in ("en", "fr-CA"):
        status, answers[lang] = await api.call("POST", "/api/v1/import/misp", scope="write",
                                               json_body=REASONS_EVENT,
                                               headers={"Accept-Language": lang})
        assert status == 201 and answers[lang]["imported"] == 0
    english, french = answers["en"], answers["fr-CA"]
    assert [i["reason"] for i in english["invalid"]] == [
        "a ip-dst|port value holds a '|'", "the value is not a string"]
    assert [i["reason"] for i in french["invalid"]] == [
        "une valeur ip-dst|port contient un '|'", "la valeur n'est pas une chaîne"]
    assert english["unsupported"][0]["reason"] == ("MISP type 'filename' has no Entraide "
                                                   "indicator type")
    assert french["unsupported"][0]["reason"] == ("le type MISP 'filename' n'a pas de type "
                                                  "d'indicateur Entraide")
    assert french["context"][0]["reason"] == ("to_ids est false : contexte, pas un "
                                              "indicateur; non partagé")
    # Only the reasons change: the rest of the answer is the same in both languages.
    for key in ("context", "unsupported", "invalid"):
        assert [{**i, "reason": ""} for i in english[key]] == [
            {**i, "reason": ""} for i in french[key]]
    status, body = await api.call("POST", "/api/v1/import/misp", scope="write",
                                  json_body={"nothing": 1},
                                  headers={"Accept-Language": "fr-CA"})
    assert status == 422 and body["error"]["message"].startswith("aucun événement MISP")


async def test_misp_cli_reasons_in_the_cli_language(api: Api, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.bulk import import_command
    from agent.cli.lang import current_lang, set_lang

    source = tmp_path / "event.json"
    source.write_text(json.dumps(REASONS_EVENT))
    common = ["--api", f"http://127.0.0.1:{api.client.port}", "--token", api.tokens["write"]]
    data_dir = api.node.data_dir.root
    was = current_lang()
    try:
        set_lang("fr")
        for command in (import_misp_command, import_command):
            status = await asyncio.to_thread(command, [str(source), *common], data_dir)
            assert status == 0
            err = capsys.readouterr().err
            assert "la valeur n'est pas une chaîne" in err, err
            assert "n'a pas de type d'indicateur Entraide" in err, err
        set_lang("en")
        status = await asyncio.to_thread(import_misp_command, [str(source), *common], data_dir)
        err = capsys.readouterr().err
        assert status == 0 and "the value is not a string" in err, err
    finally:
        set_lang(was)
