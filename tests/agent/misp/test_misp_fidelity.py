"""MISP fidelity on real events (tests/data/misp, CIRCL OSINT events from PyMISP's tests):
what comes in is counted, ``to_ids: false`` is never an indicator, composites and objects
are mapped, and an export gives MISP back the same event (uuids, types, categories,
timestamps, info), which PyMISP loads and which re-imports to the same observations."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymisp import MISPEvent

from agent.cli.misp import import_misp_command
from agent.misp.export import export_misp
from agent.misp.parse import join_meta, meta_tags_of, parse_misp, split_comment
from protocol.entries import TLP
from tests.agent._api_helpers import Api, running_api

DATA = Path(__file__).parents[2] / "data" / "misp"
XORIST = "57c4445b-c548-4654-af0b-4be3950d210f.json"
# file: (attributes, shared, repeated, context, unsupported, invalid)
COUNTS = {XORIST: (9, 3, 0, 4, 2, 0), "long_event.json": (370, 227, 12, 112, 8, 11),
          "HTML_event.json": (13, 3, 0, 8, 1, 1), "mainly_objects_1.json": (74, 17, 0, 53, 4, 0)}


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return document


def _source_attributes(event: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(event.get("Attribute", []))
    for obj in event.get("Object", []):
        found += obj["Attribute"]
    return found


def _as_api(parsed: Any, origin: str = "QC") -> list[dict[str, Any]]:
    """Observations shaped as the API returns them (for export tests without a node)."""
    out = []
    for index, (observation, tlp) in enumerate(parsed.items):
        item = observation.model_dump(mode="json", exclude_none=True)
        item.update(id=f"{index:064x}", tlp=tlp.value, ts=1_700_000_000_000,
                    origin_name=origin)
        out.append(item)
    return out


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_misp_real_events_every_attribute_counted_once(name: str) -> None:
    parsed = parse_misp(_load(name))
    got = (parsed.attributes, len(parsed.items), parsed.repeated, len(parsed.context),
           len(parsed.unsupported), len(parsed.invalid))
    assert got == COUNTS[name]
    assert sum(got[1:]) == got[0]  # nothing dropped without a word
    assert all(r["reason"] for r in [*parsed.context, *parsed.unsupported, *parsed.invalid])


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_misp_to_ids_false_is_never_an_indicator(name: str) -> None:
    document = _load(name)
    attributes = _source_attributes(document["Event"])
    parsed = parse_misp(document)
    uuids_false = {a["uuid"] for a in attributes if a.get("to_ids") is False}
    for observation, _ in parsed.items:
        meta = join_meta(observation.tags)
        assert meta["uuid"] not in uuids_false
    assert len(parsed.context) == len(uuids_false)
    assert all("to_ids" in c["reason"] for c in parsed.context)
    exported = export_misp(_as_api(parsed), info="x", now=datetime.now(UTC))["Event"]
    out = [*exported["Attribute"], *(a for o in exported.get("Object", [])
                                      for a in o["Attribute"])]
    assert out and all(a["to_ids"] is True for a in out)
    assert not {a["uuid"] for a in out} & uuids_false


def test_misp_cerber_context_urls_stay_context() -> None:
    # The real case of the issue: CDN and lookup URLs of a ransomware event, to_ids false.
    parsed = parse_misp(_load("HTML_event.json"))
    assert [c["type"] for c in parsed.context].count("url") == 4
    assert not any(o.type.value == "url" for o, _ in parsed.items)
    hostname = [o for o, _ in parsed.items if o.type.value == "domain-name"]
    assert len(hostname) == 1 and "x-misp:type=hostname" in hostname[0].tags


def test_misp_composite_hashes_of_a_real_osint_event_are_imported() -> None:
    document = _load("long_event.json")
    composite = [a for a in document["Event"]["Attribute"]
                 if a["type"] in ("filename|md5", "filename|sha256") and a["to_ids"]]
    assert len(composite) == 88  # 92 in the event, 4 of them context
    parsed = parse_misp(document)
    by_uuid = {join_meta(o.tags)["uuid"]: o for o, _ in parsed.items}
    for attribute in composite:
        filename, _, digest = attribute["value"].partition("|")
        observation = by_uuid.get(attribute["uuid"])
        if observation is None:  # the same hash as an earlier attribute: repeated
            assert any(o.value == digest.lower() for o, _ in parsed.items)
            continue
        assert observation.value == digest.lower()
        assert join_meta(observation.tags)["filename"] == filename


def test_misp_objects_keep_their_uuid_name_and_relations() -> None:
    document = _load("mainly_objects_1.json")
    parsed = parse_misp(document)
    exported = export_misp(_as_api(parsed), info="x", now=datetime.now(UTC))["Event"]
    source = {o["uuid"]: o for o in document["Event"]["Object"]}
    assert exported["Object"]
    for obj in exported["Object"]:
        assert obj["name"] == source[obj["uuid"]]["name"]
        relations = {a["uuid"]: a["object_relation"] for a in source[obj["uuid"]]["Attribute"]}
        for attribute in obj["Attribute"]:
            assert attribute["object_relation"] == relations[attribute["uuid"]]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_misp_export_is_the_source_event_and_pymisp_loads_it(name: str) -> None:
    document = _load(name)
    event = document["Event"]
    source = {a["uuid"]: a for a in _source_attributes(event)}
    parsed = parse_misp(document)
    exported = export_misp(_as_api(parsed), info="ignored", now=datetime.now(UTC))
    out = exported["Event"]
    assert (out["uuid"], out["info"], out["date"]) == (event["uuid"], event["info"],
                                                       event["date"])
    attributes = [*out["Attribute"], *(a for o in out.get("Object", []) for a in o["Attribute"])]
    assert len(attributes) == len(parsed.items)
    for attribute in attributes:
        original = source[attribute["uuid"]]
        for key in ("type", "category", "value", "timestamp"):
            if key == "value" and original["type"] in ("md5", "sha1", "sha256", "url"):
                continue  # normalised (lowercase hex, host): compared after import below
            assert attribute[key] == original[key], (key, attribute, original)
    loaded = MISPEvent()
    loaded.from_dict(**copy.deepcopy(exported))
    assert str(loaded.uuid) == event["uuid"] and loaded.info == event["info"]
    assert len(loaded.attributes) + sum(len(o.attributes) for o in loaded.objects) == \
        len(attributes)
    # Round trip: the export imports to the very same observations (no tag piles up).
    again = parse_misp(exported)
    assert again.items == parsed.items
    twice = parse_misp(export_misp(_as_api(again), info="x", now=datetime.now(UTC)))
    assert twice.items == parsed.items


def test_misp_export_groups_one_event_per_source_event() -> None:
    first, second = parse_misp(_load(XORIST)), parse_misp(_load("HTML_event.json"))
    observations = _as_api(first) + [{**o, "id": "f" + o["id"][1:]} for o in _as_api(second)]
    native = {"id": "e" * 64, "type": "domain-name", "value": "native.example", "tlp": "GREEN",
              "ts": 1_700_000_000_000, "tags": ["phishing"]}
    exported = export_misp([*observations, native], info="Entraide export", now=datetime.now(UTC))
    events = [e["Event"] for e in exported["response"]]
    assert [e["info"] for e in events] == ["Entraide export", "Ransomware - Xorist",
                                           "Cerber Ransomware"]
    assert [len(e["Attribute"]) for e in events] == [1, 3, 3]
    for event in events:
        MISPEvent().from_dict(**copy.deepcopy(event))
    assert len(parse_misp(exported).items) == 7


def test_misp_descriptions_keep_french_and_english() -> None:
    base = {"id": "a" * 64, "type": "domain-name", "tlp": "GREEN", "ts": 1_700_000_000_000}
    observations = [
        {**base, "value": "both.example", "description": {"en": "C2 server",
                                                          "fr": "Serveur de commande"}},
        {**base, "id": "b" * 64, "value": "fr.example",
         "description": {"fr": "Hameçonnage visant les municipalités"}},
    ]
    parsed = parse_misp(export_misp(observations, info="x", now=datetime.now(UTC)))
    got = {o.value: o.description for o, _ in parsed.items}
    assert got["both.example"] is not None
    assert (got["both.example"].en, got["both.example"].fr) == ("C2 server",
                                                               "Serveur de commande")
    assert got["fr.example"] is not None and got["fr.example"].en is None
    assert got["fr.example"].fr == "Hameçonnage visant les municipalités"
    assert split_comment("plain English") == {"en": "plain English"}


def test_misp_long_metadata_is_split_and_joined_whole() -> None:
    info = "OSINT - ASERT Threat Intelligence Report 2016-03 The Four-Element Sword Engagement"
    tags = meta_tags_of("info", info)
    assert tags is not None and len(tags) == 2 and all(len(t) <= 64 for t in tags)
    assert all(t == t.strip() for t in tags)
    assert join_meta(tags) == {"info": info}
    assert meta_tags_of("info", "x" * 1000) is None  # too long: reported, not cut
    assert meta_tags_of("filename", "a\tb") is None


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


async def test_misp_real_event_through_the_node_and_back(api: Api) -> None:
    document = _load("long_event.json")
    status, result = await api.call("POST", "/api/v1/import/misp", scope="write",
                                    json_body=document)
    assert status == 201, result
    assert (result["imported"], len(result["context"]), result["repeated"]) == (227, 112, 12)
    status, page = await api.call("GET", "/api/v1/observations?limit=1000", scope="read")
    assert len(page["observations"]) == 227
    exported = export_misp(page["observations"], info="x", now=datetime.now(UTC))
    event = exported["Event"]
    assert event["uuid"] == document["Event"]["uuid"]
    tags = [t["name"] for a in event["Attribute"] for t in a["Tag"]]
    assert not any(t.startswith("x-misp:") for t in tags)
    assert all(t == 'entraide:origin="QC"' or t.startswith("tlp:") for t in tags)
    hostnames = {a["value"] for a in document["Event"]["Attribute"]
                 if a["type"] == "hostname" and a["to_ids"]}
    assert {a["value"] for a in event["Attribute"] if a["type"] == "hostname"} == hostnames
    # Imported back into the node: nothing new, nothing piled up.
    status, again = await api.call("POST", "/api/v1/import/misp", scope="write",
                                   json_body=exported)
    assert status == 201 and again["imported"] == 0 and again["already_shared"] == 227
    def keyed(items: Any) -> dict[tuple[str, str], Any]:
        return {(o.type.value, o.value): (o, tlp) for o, tlp in items}

    assert keyed(parse_misp(exported).items) == keyed(parse_misp(document).items)


async def test_misp_red_without_audience_is_refused_in_the_readers_language(
        api: Api) -> None:
    """One message, English by default and French for Accept-Language: fr (not both
    languages glued into one text)."""
    status, body = await api.call("POST", "/api/v1/import/misp?tlp=RED", scope="write",
                                  json_body=_load(XORIST))
    assert status == 422 and body["error"]["code"] == "audience_required"
    assert body["error"]["message"] == "TLP:RED needs an audience (?audience=NAME,...)"
    status, body = await api.call("POST", "/api/v1/import/misp?tlp=RED", scope="write",
                                  json_body=_load(XORIST), headers={"Accept-Language": "fr"})
    assert status == 422 and body["error"]["code"] == "audience_required"
    assert body["error"]["message"] == "TLP:RED exige une audience (?audience=NOM,...)"


async def test_misp_red_without_audience_is_refused(api: Api, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    entries = api.node.ledger.counts().entries
    status, body = await api.call("POST", "/api/v1/import/misp?tlp=RED", scope="write",
                                  json_body=_load(XORIST))
    assert status == 422 and body["error"]["code"] == "audience_required"
    source = tmp_path / "event.json"
    source.write_text(json.dumps(_load(XORIST)))
    common = ["--api", f"http://127.0.0.1:{api.client.port}", "--token", api.tokens["write"]]
    code = await asyncio.to_thread(import_misp_command, [str(source), "--tlp", "red", *common],
                                   api.node.data_dir.root)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "--to" in captured.err
    assert api.node.ledger.counts().entries == entries
    status, result = await api.call("POST", "/api/v1/import/misp?tlp=RED&audience=ON",
                                    scope="write", json_body={"Event": {
                                        "info": "x", "Attribute": [
                                            {"type": "domain", "value": "red.example"}]}})
    assert status == 201 and result["imported"] == 1
    status, found = await api.call("GET", "/api/v1/observations/" + result["ids"][0],
                                   scope="read")
    assert found["tlp"] == TLP.RED.value


def test_misp_personal_data_without_a_tlp_is_amber() -> None:
    event = {"Event": {"uuid": "5f0c9a8e-1b2c-4d3e-8f40-123456789abc", "info": "phishing",
                       "Attribute": [
                           {"type": "email-src", "value": "victim@example.com"},
                           {"type": "target-user", "value": "EXAMPLE\\jdoe"},
                           {"type": "domain", "value": "phish.example"}]}}
    tlps = {o.type.value: tlp for o, tlp in parse_misp(event).items}
    assert tlps == {"email-addr": TLP.AMBER, "user-account": TLP.AMBER,
                    "domain-name": TLP.GREEN}
    # a TLP the event or the operator gives is taken as given
    tagged = copy.deepcopy(event)
    tagged["Event"]["Tag"] = [{"name": "tlp:green"}]
    assert {tlp for _, tlp in parse_misp(tagged).items} == {TLP.GREEN}
    assert {tlp for _, tlp in parse_misp(event, default_tlp=TLP.CLEAR).items} == {TLP.CLEAR}
