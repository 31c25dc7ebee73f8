"""The local API's routes, on a real server (127.0.0.1), real ledger file, real keys.

Every JSON answer is validated against the response model that the OpenAPI document
publishes (they forbid unknown fields), so the document and the API cannot drift.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from agent.api.app import OPENAPI, ROUTES, create_app
from agent.api.models import (
    BatchCreated,
    BatchRouting,
    IndicatorOut,
    ObservationBatch,
    ObservationList,
    ObservationOut,
    ObservationSubmit,
    PeerList,
    PeerOut,
    PeerRemoved,
    RetractionCreated,
    Routing,
    SightingCreated,
    StatusOut,
    VerifyOut,
)
from agent.config.settings import load_trust_list
from agent.metrics import parse_text
from agent.web.openapi import openapi_path
from protocol.cards import PeerCard, encode_card
from protocol.entries import TLP, sign_entry
from protocol.envelope import seal_envelope
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import Api, identity, ip, obs, running_api


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    async with running_api(tmp_path) as running:
        yield running


async def ingest_from(api: Api, author: str, payloads: list[Observation], *,
                      tlp: TLP = TLP.GREEN, to: tuple[str, ...] = ()) -> list[str]:
    """Entries signed by a trusted peer, stored as if replicated; returns their ids."""
    who = identity(author)
    head = api.node.ledger.head(who.public_key)
    seq, prev = (0, None) if head is None else head
    entries = []
    for payload in payloads:
        body, audience = encode_payload(payload), None
        if tlp.encrypted:
            audience, body = seal_envelope(body, [identity(n).public_key for n in to],
                                           lambda n: bytes(n))
        entry = sign_entry(who, seq=seq + 1, prev=prev, now_ms=1_700_000_000_000 + seq,
                           tlp=tlp, audience=audience, body=body)
        entries.append(entry)
        seq, prev = entry.seq, entry.hash
    result = await api.node.ledger.ingest(entries)
    assert result.stored == len(entries)
    return [e.id for e in entries]


# --- observations -----------------------------------------------------------------------


async def test_health_answers_without_token(api: Api) -> None:
    assert await api.call("GET", "/api/v1/health", scope=None) == (200, {"status": "ok"})


async def test_submit_one_returns_201_with_id_seq_and_the_stored_observation(api: Api) -> None:
    created = await api.submit(obs("203.0.113.7", confidence=80, severity="high",
                                   description={"en": "C2", "fr": "C2"}, tags=["ransomware"],
                                   valid_until="2026-12-31T00:00:00Z"))
    ObservationOut.model_validate(created)
    assert len(created["id"]) == 64 and created["seq"] == 1
    assert created["origin"] == api.node.public_key.text and created["origin_name"] == "QC"
    assert (created["tlp"], created["retracted"], created["audience"]) == ("GREEN", False, None)
    status, got = await api.call("GET", f"/api/v1/observations/{created['id']}", scope="read")
    assert status == 200
    ObservationOut.model_validate(got)
    for key in ("id", "type", "value", "tlp", "confidence", "severity", "description", "tags",
                "origin", "origin_name", "seq", "ts", "retracted", "valid_until", "audience"):
        assert got[key] == created[key], key
    assert got["verified"] is True and got["valid_until"] == "2026-12-31T00:00:00Z"


async def test_submit_normalises_the_indicator_value(api: Api) -> None:
    created = await api.submit(obs("WWW.Example.COM.", type="domain-name"))
    assert created["value"] == "www.example.com"


async def test_submit_batch_returns_ids_in_the_order_given(api: Api) -> None:
    values = [ip(i) for i in range(50)]
    created = await api.submit({"observations": [obs(v) for v in values]})
    BatchCreated.model_validate(created)
    assert created["count"] == 50 and created["seqs"] == list(range(1, 51))
    for entry_id, value in zip(created["ids"], values, strict=True):
        status, got = await api.call("GET", f"/api/v1/observations/{entry_id}", scope="read")
        assert status == 200 and got["value"] == value


async def test_submit_batch_level_tlp_and_audience_are_defaults(api: Api) -> None:
    created = await api.submit({"tlp": "AMBER", "audience": ["ON"], "observations": [
        obs(ip(1)), obs(ip(2), tlp="GREEN"), obs(ip(3), audience=["FED"])]})
    got = [(await api.call("GET", f"/api/v1/observations/{i}", scope="read"))[1]
           for i in created["ids"]]
    shown = [(g["tlp"], None if g["audience"] is None else sorted(g["audience"])) for g in got]
    assert shown == [("AMBER", ["ON", "QC"]), ("GREEN", None), ("AMBER", ["FED", "QC"])]


async def test_amber_without_audience_goes_to_every_member_and_this_node(api: Api) -> None:
    created = await api.submit(obs(tlp="amber"))
    assert created["tlp"] == "AMBER"
    assert sorted(created["audience"]) == ["FED", "ON", "QC"]


async def test_red_with_audience_reaches_only_those_named(api: Api) -> None:
    created = await api.submit(obs(tlp="TLP:RED", audience=["on"]))
    assert created["tlp"] == "RED" and sorted(created["audience"]) == ["ON", "QC"]


async def test_list_filters_by_type_value_origin_tlp_and_time(api: Api) -> None:
    mine = await api.submit(obs("203.0.113.7", tlp="AMBER"))
    await api.submit(obs("evil.example", type="domain-name"))
    (theirs,) = await ingest_from(api, "ON", [Observation(type="ipv4-addr", value="203.0.113.7")])

    async def ids(query: str) -> list[str]:
        status, body = await api.call("GET", f"/api/v1/observations?{query}", scope="read")
        assert status == 200, body
        ObservationList.model_validate(body)
        return [o["id"] for o in body["observations"]]

    assert len(await ids("")) == 3
    assert await ids("type=ipv4-addr&value=203.0.113.7") == [theirs, mine["id"]]  # newest first
    assert await ids("type=domain-name&value=EVIL.example.") != []
    assert await ids("origin=ON") == [theirs]
    assert await ids("origin=" + urllib.parse.quote(identity("ON").public_key.text)) == [theirs]
    assert await ids("origin=QC&tlp=AMBER") == [mine["id"]]
    assert await ids("since=1700000000000&until=1700000000001") == [theirs]
    assert await ids("until=2020-01-01T00:00:00Z") == []
    _status, body = await api.call("GET", "/api/v1/observations?origin=ON", scope="read")
    assert body["observations"][0]["origin_name"] == "ON"


async def test_list_cursor_pages_through_everything_once(api: Api) -> None:
    created = await api.submit({"observations": [obs(ip(i)) for i in range(25)]})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=10" + (f"&cursor={cursor}" if cursor else "")
        status, body = await api.call("GET", f"/api/v1/observations?{query}", scope="read")
        assert status == 200
        seen += [o["id"] for o in body["observations"]]
        pages += 1
        if pages == 1:  # rows written while paging do not disturb the pages
            await api.submit(obs("192.0.2.1"))
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(created["ids"]))


async def test_unreadable_amber_entry_is_not_listed_nor_found(api: Api) -> None:
    (sealed,) = await ingest_from(api, "ON", [Observation(type="ipv4-addr", value="192.0.2.9")],
                                  tlp=TLP.AMBER, to=("FED",))
    (readable,) = await ingest_from(api, "ON", [Observation(type="ipv4-addr", value="192.0.2.8")],
                                    tlp=TLP.AMBER, to=("QC",))
    _status, body = await api.call("GET", "/api/v1/observations", scope="read")
    assert [o["id"] for o in body["observations"]] == [readable]
    assert (await api.call("GET", f"/api/v1/observations/{sealed}", scope="read"))[0] == 404
    assert (await api.call("GET", f"/api/v1/observations/{readable}", scope="read"))[0] == 200
    assert api.node.ledger.counts().entries == 2  # replicated, counted, never shown


async def test_retract_own_observation_hides_it_unless_asked(api: Api) -> None:
    created = await api.submit(obs())
    status, body = await api.call("POST", f"/api/v1/observations/{created['id']}/retract",
                                  scope="write", json_body={"reason": "false positive"})
    assert status == 201, body
    RetractionCreated.model_validate(body)
    assert body["of"] == created["id"] and body["seq"] == 2
    listed = (await api.call("GET", "/api/v1/observations", scope="read"))[1]["observations"]
    assert listed == []
    status, body = await api.call("GET", "/api/v1/observations?include_retracted=true",
                                  scope="read")
    assert [(o["id"], o["retracted"]) for o in body["observations"]] == [(created["id"], True)]


async def test_retract_accepts_an_empty_body(api: Api) -> None:
    created = await api.submit(obs())
    status, _ = await api.call("POST", f"/api/v1/observations/{created['id']}/retract",
                               scope="write")
    assert status == 201


async def test_sighting_of_an_observation_is_counted(api: Api) -> None:
    (theirs,) = await ingest_from(api, "ON", [Observation(type="ipv4-addr", value="192.0.2.5")])
    status, body = await api.call("POST", "/api/v1/sightings", scope="write", json_body={
        "of": theirs, "count": 3, "seen_at": "2026-01-02T03:04:05Z", "note": "seen at the edge"})
    assert status == 201, body
    SightingCreated.model_validate(body)
    assert body["of"] == theirs and body["tlp"] == "GREEN"
    got = (await api.call("GET", f"/api/v1/observations/{theirs}", scope="read"))[1]
    assert got["sightings"] == 1 and got["origin_name"] == "ON"


async def test_indicator_aggregates_across_origins(api: Api) -> None:
    await ingest_from(api, "ON", [Observation(type="domain-name", value="bad.example",
                                              first_seen="2026-01-01T00:00:00Z")])
    await api.submit(obs("BAD.example", type="domain-name", last_seen="2026-03-01T00:00:00Z"))
    await api.submit(obs("other.example", type="domain-name"))
    status, body = await api.call("GET", "/api/v1/indicators/domain-name/BAD.Example.",
                                  scope="read")
    assert status == 200, body
    IndicatorOut.model_validate(body)
    assert (body["type"], body["value"], body["count"]) == ("domain-name", "bad.example", 2)
    assert body["origins"] == ["ON", "QC"]
    assert body["first_seen"] == "2026-01-01T00:00:00Z"
    assert body["last_seen"] == "2026-03-01T00:00:00Z"


async def test_indicator_url_value_may_keep_its_slashes_or_be_encoded(api: Api) -> None:
    plain = await api.submit(obs("HTTPS://Example.com/a/b", type="url"))
    query = await api.submit(obs("https://example.com/a/b?q=1%2F", type="url"))
    for path, value in ((plain["value"], "https://example.com/a/b"),
                        (urllib.parse.quote(query["value"], safe=""),
                         "https://example.com/a/b?q=1%2F")):
        status, body = await api.call("GET", f"/api/v1/indicators/url/{path}", scope="read")
        assert (status, body["count"], body["value"]) == (200, 1, value)


# --- node, peers, verify ------------------------------------------------------------------


async def test_status_reports_name_key_peers_and_counts(api: Api) -> None:
    await api.submit(obs())
    status, body = await api.call("GET", "/api/v1/status", scope="read")
    assert status == 200
    StatusOut.model_validate(body)
    assert body["name"] == "QC" and body["key"] == api.node.public_key.text
    assert body["fingerprint"] == api.node.public_key.fingerprint
    assert {p["name"]: p["connected"] for p in body["peers"]} == {"ON": False, "FED": False}
    assert body["ledger"]["entries"] == 1 and body["ledger"]["origins"] == 1
    assert body["forks"] == []


async def test_peers_add_remove_are_persisted_and_applied_live(api: Api) -> None:
    ab = identity("AB").public_key
    status, body = await api.call("POST", "/api/v1/peers", json_body={
        "name": "AB", "key": ab.text, "url": "https://ab.example:8471", "jurisdiction": "Alberta"})
    assert status == 201, body
    PeerOut.model_validate(body)
    assert body["fingerprint"] == ab.fingerprint
    on_disk = load_trust_list(api.node.data_dir)
    assert on_disk.by_name("AB") is not None and on_disk.by_name("AB").url == "https://ab.example:8471"
    assert ab in api.node.trust
    bc = identity("BC").public_key
    card = encode_card(PeerCard("BC", bc, "https://bc.example"))
    status, body = await api.call("POST", "/api/v1/peers", json_body={"card": card})
    assert status == 201 and body["key"] == bc.text
    status, body = await api.call("GET", "/api/v1/peers/BC")
    assert status == 200 and body["url"] == "https://bc.example"
    status, body = await api.call("GET", "/api/v1/peers")
    PeerList.model_validate(body)
    assert [p["name"] for p in body["peers"]] == ["ON", "FED", "AB", "BC"]
    status, body = await api.call("DELETE", "/api/v1/peers/AB")
    assert status == 200, body
    PeerRemoved.model_validate(body)
    assert body["removed"]["name"] == "AB"
    assert load_trust_list(api.node.data_dir).by_name("AB") is None
    assert ab not in api.node.trust
    # A removed peer can no longer be an audience.
    status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                  json_body=obs(tlp="RED", audience=["AB"]))
    assert status == 422


async def test_ledger_verify_reports_ok(api: Api) -> None:
    await api.submit({"observations": [obs(ip(i)) for i in range(5)]})
    await ingest_from(api, "ON", [Observation(type="ipv4-addr", value="192.0.2.1")])
    status, body = await api.call("GET", "/api/v1/ledger/verify")
    assert status == 200
    VerifyOut.model_validate(body)
    assert body == {"ok": True, "entries": 6, "origins": 2, "fork_proofs": 0, "problems": [],
                    "bodies": {"present": 6, "expired": 0, "erased": 0, "absent": 0}}


async def test_metrics_parse_as_prometheus_text(api: Api) -> None:
    await api.submit({"observations": [obs(ip(i)) for i in range(7)]})
    await api.call("GET", "/api/v1/observations", scope="read")
    status, text = await api.call("GET", "/metrics", scope="read")
    assert status == 200
    samples = parse_text(text)
    assert samples["entraide_ledger_entries"][()] == 7
    assert samples["entraide_local_entries_total"][()] == 7
    assert samples["entraide_peer_connected"][(("peer", "ON"),)] == 0
    key = (("method", "POST"), ("route", "/api/v1/observations"), ("status", "201"))
    assert samples["entraide_http_requests_total"][key] == 1
    count = samples["entraide_http_request_duration_seconds_count"]
    assert count[(("method", "GET"), ("route", "/api/v1/observations"))] == 1
    assert any(name.endswith("_bucket") for name in samples)


# --- the document and the scopes -------------------------------------------------------


def test_submit_fast_path_validates_exactly_the_documented_fields() -> None:
    # POST /observations validates with Observation + Routing (fast) but documents
    # ObservationSubmit and ObservationBatch: they must declare the same fields.
    assert set(ObservationSubmit.model_fields) == (set(Observation.model_fields)
                                                   | set(Routing.model_fields))
    for name, info in Routing.model_fields.items():
        assert repr(info) == repr(ObservationSubmit.model_fields[name]), name
    for name, info in Observation.model_fields.items():
        assert repr(info) == repr(ObservationSubmit.model_fields[name]), name
    assert set(ObservationBatch.model_fields) == {"observations"} | set(BatchRouting.model_fields)
    for name, info in BatchRouting.model_fields.items():
        assert repr(info) == repr(ObservationBatch.model_fields[name]), name
    assert ObservationBatch.model_config == BatchRouting.model_config
    assert ObservationSubmit.model_config["extra"] == Routing.model_config["extra"] == "forbid"



async def test_openapi_covers_every_registered_route(api: Api) -> None:
    status, doc = await api.call("GET", "/api/v1/openapi.json", scope=None)
    assert status == 200 and doc == OPENAPI
    app = create_app(api.node)
    registered = {(r.method.lower(), openapi_path(r.resource.canonical))
                  for r in app.router.routes() if r.resource is not None}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert registered == documented
    assert len(registered) == len(ROUTES)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            scope = op["x-scope"]
            assert (scope is None) == (op["security"] == []), (method, path)
            for ref in _refs(op):
                assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"]


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if "$ref" in value else []
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


# (method, path, scope needed) for every guarded route, with a body valid enough to pass.
_GUARDED = [(op.method, op.path, op.scope) for op in ROUTES if op.scope is not None]


def _concrete(path: str) -> str:
    return (path.replace("{id}", "0" * 64).replace("{offer}", "1" * 64).replace("{name}", "ON")
            .replace("{origin}", "ON")
            .replace("{type}", "ipv4-addr").replace("{value:.+}", "192.0.2.1"))


@pytest.mark.parametrize(("method", "path", "needed"), _GUARDED,
                         ids=[f"{m} {p}" for m, p, _ in _GUARDED])
async def test_scopes_are_enforced_on_every_guarded_route(api: Api, method: str, path: str,
                                                          needed: Any) -> None:
    url = _concrete(path)
    entries = api.node.ledger.counts().entries
    status, body = await api.call(method, url, scope=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await api.call(method, url, scope=None,
                                  headers={"Authorization": "Bearer ent_" + "A" * 43})
    assert status == 401
    for scope in ("read", "write", "admin"):
        if scope == needed.value or (scope == "admin") or (scope == "write" and needed == "read"):
            continue
        status, body = await api.call(method, url, scope=scope, json_body={})
        assert status == 403 and body["error"]["code"] == "insufficient_scope", (scope, body)
    assert api.node.ledger.counts().entries == entries
    assert load_trust_list(api.node.data_dir).by_name("ON") is not None


async def test_higher_scopes_include_lower_ones(api: Api) -> None:
    for scope in ("read", "write", "admin"):
        assert (await api.call("GET", "/api/v1/status", scope=scope))[0] == 200
    for scope in ("write", "admin"):
        await api.submit(obs(), scope=scope)
