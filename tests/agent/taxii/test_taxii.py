"""The TAXII 2.1 server, driven by the real client (taxii2-client) over a real socket.

taxii2-client is synchronous (requests), so each client call runs in a worker thread
while the node serves on the test's event loop. Every object served is parsed with
stix2 and checked with stix2-validator.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import stix2
from stix2validator import ValidationOptions, validate_instance
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages

from agent.storage.taxii_index import Collection as IndexCollection
from agent.storage.taxii_index import TaxiiIndex, VersionFilter
from agent.taxii.app import API_ROOT, COLLECTIONS, MAX_CONTENT_LENGTH, _origin_info
from agent.taxii.post import MAX_OBJECTS
from protocol.entries import TLP
from protocol.payloads import Alert, Rule, StixObject
from protocol.stix import TLP2_MARKINGS, entry_stix_id, identity_id
from tests.agent._api_helpers import Api, ip, obs, running_api

T = TypeVar("T")
T0 = "2024-01-01T00:00:00.000Z"
MEDIA = "application/taxii+json;version=2.1"
FED_ID, LOCAL_ID = COLLECTIONS[0].id, COLLECTIONS[1].id


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


def base(api: Api) -> str:
    return f"http://127.0.0.1:{api.client.port}"


def collection(api: Api, cid: str, scope: str = "write") -> Collection:
    return Collection(f"{base(api)}{API_ROOT}collections/{cid}/", user="soc",
                      password=api.tokens[scope])


async def threaded(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(func, *args, **kwargs)


def assert_valid(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        result = validate_instance(obj, ValidationOptions())
        assert result.is_valid, (obj["id"], [str(e) for e in result.errors])
        stix2.parse(obj)


def read_all(coll: Collection, per_request: int, **filters: Any) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for envelope in as_pages(coll.get_objects, per_request=per_request, **filters):
        objects += envelope.get("objects", [])
    return objects


def indicator(n: int, *, modified: str = "2024-01-01T00:00:00.000Z",
              pattern: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "indicator", "spec_version": "2.1",
            "id": f"indicator--{n:08x}-1111-4111-8111-111111111111",
            "created": "2024-01-01T00:00:00.000Z", "modified": modified,
            "pattern": pattern or f"[ipv4-addr:value = '{ip(n)}']", "pattern_type": "stix",
            "valid_from": "2024-01-01T00:00:00Z", **extra}


async def raw(api: Api, method: str, path: str, *, scope: str | None = "read",
              headers: dict[str, str] | None = None, data: bytes | None = None
              ) -> tuple[int, Any, dict[str, str]]:
    all_headers = {"Accept": MEDIA, **(headers or {})}
    if scope is not None:
        all_headers.setdefault("Authorization", f"Bearer {api.tokens[scope]}")
    async with api.client.request(method, path, headers=all_headers, data=data) as resp:
        body = await resp.json(content_type=None) if resp.status != 204 else None
        return resp.status, body, dict(resp.headers)


# --- discovery and collections ---------------------------------------------------------


async def test_taxii_discovery_api_root_and_collections_with_taxii2_client(api: Api) -> None:
    def discover() -> tuple[Server, ApiRoot]:
        server = Server(f"{base(api)}/taxii2/", user="soc", password=api.tokens["read"])
        return server, server.api_roots[0]

    server, root = await threaded(discover)
    assert server.title == "Entraide node QC" and server.default.url == root.url
    info = await threaded(lambda: (root.versions, root.max_content_length, root.collections))
    versions, max_length, collections = info
    assert versions == [MEDIA] and max_length == MAX_CONTENT_LENGTH
    assert [(c.alias, c.can_read, c.can_write) for c in collections] == [
        ("federation", True, False), ("local", True, False)]  # a read token cannot write
    writer = await threaded(lambda: collection(api, LOCAL_ID).can_write)
    assert writer is True
    status, by_alias, _ = await raw(api, "GET", f"{API_ROOT}collections/local/")
    assert status == 200 and by_alias["id"] == LOCAL_ID


async def test_taxii_bearer_token_and_token_scheme_work_like_basic(api: Api) -> None:
    for header in (f"Bearer {api.tokens['read']}", f"Token {api.tokens['read']}",
                   "Basic " + base64.b64encode(f"{api.tokens['read']}:".encode()).decode()):
        status, body, headers = await raw(api, "GET", "/taxii2/",
                                          headers={"Authorization": header})
        assert status == 200 and body["api_roots"] == [API_ROOT]
        assert headers["Content-Type"] == MEDIA


# --- what the node serves --------------------------------------------------------------


async def test_taxii_serves_every_kind_of_entry_as_valid_stix(api: Api) -> None:
    node = api.node
    first = await api.submit(obs(ip(1), tlp="GREEN", confidence=70, severity="high",
                                 description={"fr": "méchant"}, tags=["apt"]))
    cve = await api.submit(obs("cve-2021-44228", type="cve", tlp="CLEAR"))
    amber = await api.submit(obs(ip(2), tlp="AMBER"))
    status, _ = await api.call("POST", "/api/v1/sightings", scope="write",
                               json_body={"of": first["id"], "count": 3})
    assert status == 201
    status, _ = await api.call("POST", f"/api/v1/observations/{amber['id']}/retract",
                               scope="write", json_body={"reason": "false positive"})
    assert status == 201
    malware = {"type": "malware", "spec_version": "2.1", "name": "X", "is_family": True,
               "id": "malware--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061",
               "created": T0, "modified": T0}
    await node.submit_observations([], TLP.GREEN)
    from agent.node.node import Submission

    await node.submit([Submission(Rule(rule_type="yara", name="r", text="rule r { condition: "
                                                                          "true }")),
                       Submission(Alert(title="help", severity="high",
                                        description={"en": "x"}, contact="soc@qc")),
                       Submission(StixObject.from_object(malware))])
    objects = await threaded(read_all, collection(api, FED_ID, "read"), 3, version="all")
    assert_valid(objects)
    types = [o["type"] for o in objects]
    assert types == ["identity", "indicator", "vulnerability", "indicator", "sighting",
                     "indicator", "indicator", "incident", "malware"]
    ids = [o["id"] for o in objects]
    assert ids[0] == identity_id(node.public_key.text)
    assert ids[1] == entry_stix_id("indicator", first["id"])
    assert ids[2] == entry_stix_id("vulnerability", cve["id"])
    assert objects[4]["sighting_of_ref"] == ids[1] and objects[4]["count"] == 3
    assert ids[5] == ids[3] and objects[5]["revoked"] is True  # the retraction
    assert objects[3]["object_marking_refs"] == [TLP2_MARKINGS[TLP.AMBER]]
    assert objects[-1] == malware  # carried unchanged
    latest = await threaded(read_all, collection(api, FED_ID, "read"), 100)
    assert [o["id"] for o in latest].count(ids[3]) == 1  # only the latest version by default


# --- posting ---------------------------------------------------------------------------


async def test_taxii_post_bundle_poll_status_and_read_back(api: Api) -> None:
    local = collection(api, LOCAL_ID)
    report = {"type": "report", "spec_version": "2.1", "name": "R", "published":
              "2024-01-01T00:00:00.000Z", "id": "report--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0064",
              "created": T0, "modified": T0,
              "object_refs": [indicator(1)["id"]]}
    bundle = {"type": "bundle", "id": "bundle--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0065",
              "objects": [indicator(1), report,
                          indicator(2, pattern="[ipv4-addr:value = "),  # unknown pattern
                          {**indicator(3), "created": "not a time"},  # invalid STIX
                          indicator(4, object_marking_refs=[TLP2_MARKINGS[TLP.RED]])]}
    entries = api.node.ledger.counts().entries
    status = await threaded(local.add_objects, bundle, poll_interval=0.1)
    assert status.status == "complete"
    assert (status.total_count, status.success_count, status.failure_count,
            status.pending_count) == (5, 2, 3, 0)
    reasons = {f["id"]: f["message"] for f in status.failures}
    assert "invalid STIX pattern" in reasons[indicator(2)["id"]]
    assert "created must be a STIX timestamp" in reasons[indicator(3)["id"]]
    assert "TLP:RED" in reasons[indicator(4)["id"]]
    # The indicator is kept as posted and as the observation derived from it.
    assert api.node.ledger.counts().entries == entries + 3
    polled = await threaded(lambda: ApiRoot(f"{base(api)}{API_ROOT}", user="u",
                                            password=api.tokens["read"]).get_status(status.id))
    assert polled.status == "complete" and polled.success_count == 2
    back = await threaded(local.get_object, indicator(1)["id"])
    assert back["objects"] == [indicator(1)]  # exactly as posted
    assert_valid(back["objects"])
    assert (await threaded(local.get_object, report["id"]))["objects"] == [report]
    # The indicator became a signed observation of this node, visible to the native API.
    code, found = await api.call("GET", f"/api/v1/indicators/ipv4-addr/{ip(1)}", scope="read")
    assert code == 200 and found["origins"] == ["QC"]


async def test_taxii_duplicates_create_nothing_and_later_versions_are_versions(api: Api) -> None:
    local = collection(api, LOCAL_ID)
    await threaded(local.add_objects, {"objects": [indicator(1), indicator(1)]})
    entries = api.node.ledger.counts().entries
    again = await threaded(local.add_objects, {"objects": [indicator(1)]})
    assert again.success_count == 1 and "already" in again.successes[0]["message"]
    assert api.node.ledger.counts().entries == entries
    newer = indicator(1, modified="2024-06-01T00:00:00.000Z", confidence=90)
    await threaded(local.add_objects, {"objects": [newer]})
    versions = await threaded(local.object_versions, newer["id"])
    assert versions["versions"] == ["2024-01-01T00:00:00.000Z", "2024-06-01T00:00:00.000Z"]
    latest = await threaded(local.get_object, newer["id"])
    assert [o["confidence"] for o in latest["objects"]] == [90]
    both = await threaded(local.get_object, newer["id"], version="all")
    assert len(both["objects"]) == 2
    first = await threaded(local.get_object, newer["id"], version="first")
    assert first["objects"][0]["modified"] == "2024-01-01T00:00:00.000Z"


# --- paging and filters ----------------------------------------------------------------


async def test_taxii_paging_is_exact_while_entries_keep_arriving(api: Api) -> None:
    first = [await api.submit({"observations": [obs(ip(i)) for i in range(n, n + 50)]})
             for n in range(0, 200, 50)]
    before = {i for batch in first for i in batch["ids"]}
    fed = collection(api, FED_ID, "read")
    seen_next: list[dict[str, Any]] = []
    seen_after: list[dict[str, Any]] = []
    writes = 0

    async def write_more() -> None:
        nonlocal writes
        writes += 1
        await api.submit({"observations": [obs(ip(1000 + writes * 10 + k)) for k in range(7)]})

    envelope = await threaded(fed.get_objects, limit=23)
    seen_next += envelope["objects"]
    while envelope.get("more"):
        await write_more()
        envelope = await threaded(fed.get_objects, limit=23, next=envelope["next"])
        seen_next += envelope.get("objects", [])
    # The same walk with added_after and the X-TAXII-Date-Added-Last header.
    added_after = None
    while True:
        params: dict[str, Any] = {"limit": "31"}
        if added_after:
            params["added_after"] = added_after
        query = "&".join(f"{k}={v}" for k, v in params.items())
        status, body, headers = await raw(api, "GET", f"{API_ROOT}collections/{FED_ID}/objects/"
                                          f"?{query}")
        assert status == 200
        seen_after += body.get("objects", [])
        if not body.get("more"):
            break
        added_after = headers["X-TAXII-Date-Added-Last"]
        await write_more()
    total = api.node.ledger.counts().entries
    for seen in (seen_next, seen_after):
        ids = [o["id"] for o in seen]
        assert len(ids) == len(set(ids)), "an object was served twice"
        entries = {o["external_references"][0]["external_id"] for o in seen
                   if o["type"] == "indicator"}
        assert before <= entries
    assert len({o["id"] for o in seen_after}) == total + 1  # every entry, and the identity


async def test_taxii_one_post_of_thousands_pages_exactly_by_added_after(api: Api) -> None:
    local = collection(api, LOCAL_ID)
    objects = [indicator(n) for n in range(3000)]
    status = await threaded(local.add_objects, {"objects": objects})
    assert status.success_count == 3000
    seen: list[str] = []
    added_after = None
    dates: list[str] = []
    while True:
        query = "limit=250" + (f"&added_after={added_after}" if added_after else "")
        code, body, headers = await raw(api, "GET",
                                        f"{API_ROOT}collections/local/manifest/?{query}")
        assert code == 200
        seen += [r["id"] for r in body.get("objects", [])]
        dates += [r["date_added"] for r in body.get("objects", [])]
        if not body.get("more"):
            break
        assert headers["X-TAXII-Date-Added-Last"] == body["objects"][-1]["date_added"]
        added_after = headers["X-TAXII-Date-Added-Last"]
    assert seen[1:] == [o["id"] for o in objects]  # the identity first, then post order
    assert dates == sorted(set(dates))  # a distinct date_added per object, ascending


async def test_taxii_filters_match_exactly(api: Api) -> None:
    local = collection(api, LOCAL_ID)
    await threaded(local.add_objects, {"objects": [indicator(n) for n in range(5)] + [
        {"type": "malware", "spec_version": "2.1", "name": "X", "is_family": True,
         "id": "malware--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061",
         "created": T0, "modified": T0}]})
    by_type = await threaded(read_all, local, 2, type="malware")
    assert [o["type"] for o in by_type] == ["malware"]
    two = [indicator(1)["id"], indicator(3)["id"]]
    by_id = await threaded(read_all, local, 10, id=two)
    assert [o["id"] for o in by_id] == two
    exact = await threaded(read_all, local, 10, version="2024-01-01T00:00:00Z", type="indicator")
    assert len(exact) == 5
    none = await threaded(read_all, local, 10, version="2025-01-01T00:00:00Z")
    assert none == []
    status, body, _ = await raw(api, "GET", f"{API_ROOT}collections/local/objects/"
                                            "?match[spec_version]=2.0")
    assert status == 200 and body == {}
    status, body, _ = await raw(api, "GET", f"{API_ROOT}collections/local/objects/"
                                            "?match[spec_version]=2.1&match[unknown]=x&limit=1")
    assert status == 200 and len(body["objects"]) == 1 and body["more"] is True


# --- bad input --------------------------------------------------------------------------


async def test_taxii_bad_requests_get_the_spec_status_and_error_body(api: Api) -> None:
    objects_path = f"{API_ROOT}collections/local/objects/"
    envelope = b'{"objects": []}'
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/taxii2/", {"headers": {"Accept": "application/json"}}, 406),
        ("GET", "/taxii2/", {"headers": {"Accept": "application/taxii+json;version=2.0"}}, 406),
        ("POST", objects_path, {"scope": "write", "data": envelope,
                                "headers": {"Content-Type": "application/json"}}, 415),
        ("POST", objects_path, {"scope": "write", "data": b"x" * (MAX_CONTENT_LENGTH + 1),
                                "headers": {"Content-Type": MEDIA}}, 413),
        ("POST", objects_path, {"scope": "write", "headers": {"Content-Type": MEDIA},
                                "data": b'{"objects": [' + b",".join([b"{}"] * (MAX_OBJECTS + 1))
                                        + b"]}"}, 413),
        ("POST", objects_path, {"scope": "write", "data": b"{not json",
                                "headers": {"Content-Type": MEDIA}}, 400),
        ("POST", objects_path, {"scope": "write", "data": b"[1]",
                                "headers": {"Content-Type": MEDIA}}, 422),
        ("POST", objects_path, {"scope": "read", "data": envelope,
                                "headers": {"Content-Type": MEDIA}}, 403),
        ("POST", f"{API_ROOT}collections/federation/objects/",
         {"scope": "admin", "data": envelope, "headers": {"Content-Type": MEDIA}}, 403),
        ("GET", objects_path + "?next=garbage", {}, 400),
        ("GET", objects_path + "?next=n1&next=n2", {}, 400),
        ("GET", objects_path + "?limit=0", {}, 400),
        ("GET", objects_path + "?added_after=yesterday", {}, 400),
        ("GET", objects_path + "?match[version]=all,last", {}, 400),
        ("GET", f"{API_ROOT}collections/nope/objects/", {}, 404),
        ("GET", objects_path + "indicator--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061/", {}, 404),
        ("GET", f"{API_ROOT}status/0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061/", {}, 404),
        ("GET", "/taxii2/nothing/", {}, 404),
        ("DELETE", objects_path + "indicator--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061/", {}, 405),
        ("GET", "/taxii2/", {"scope": None}, 401),
        ("GET", "/taxii2/", {"scope": None, "headers": {"Authorization": "Basic !!"}}, 401),
        ("GET", "/taxii2/", {"scope": None,
                             "headers": {"Authorization": "Bearer ent_" + "A" * 43}}, 401),
    ]
    entries = api.node.ledger.counts().entries
    for method, path, options, expected in cases:
        status, body, headers = await raw(api, method, path, **options)
        assert status == expected, (method, path, status, body)
        if expected == 406:  # the client does not accept TAXII: the API's own error body
            assert body["error"]["code"] == "not_acceptable", body
            continue
        assert headers["Content-Type"] == MEDIA
        assert body["http_status"] == str(expected) and body["title"] and body["description"]
        if expected == 401:
            assert "Basic" in headers["WWW-Authenticate"]
    assert api.node.ledger.counts().entries == entries


async def test_taxii_errors_follow_the_accept_header(api: Api) -> None:
    status, body = await api.call("GET", "/taxii2/", scope=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_taxii_client_raises_on_a_wrong_scope(api: Api) -> None:
    reader = collection(api, LOCAL_ID, "read")
    reader._loaded = True
    reader._can_write = True
    with pytest.raises(requests.HTTPError, match="403"):
        await threaded(reader.add_objects, {"objects": [indicator(1)]})


async def test_taxii_objects_indexed_at_post_time_equal_a_rebuild_from_the_ledger(
        api: Api, tmp_path: Path) -> None:
    local = collection(api, LOCAL_ID)
    vulnerability = {"type": "vulnerability", "spec_version": "2.1", "name": "CVE-2021-44228",
                     "id": "vulnerability--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0066",
                     "created": T0, "modified": T0, "description": "log4shell", "lang": "fr"}
    malware = {"type": "malware", "spec_version": "2.1", "name": "X", "is_family": True,
               "id": "malware--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061", "created": T0,
               "modified": T0, "x_score": 1.5, "x_note": "é \u2028"}
    posted = [indicator(n, confidence=n % 101, labels=["bench"], name=ip(n),
                        valid_until="2030-01-01T00:00:00Z") for n in range(40)]
    posted += [vulnerability, malware, indicator(99, pattern="[file:hashes.MD5 = 'x']"),
               indicator(98, object_marking_refs=[TLP2_MARKINGS[TLP.AMBER]])]
    status = await threaded(local.add_objects, {"objects": posted})
    assert status.success_count == len(posted)
    await api.submit({"observations": [obs(ip(500))]})  # a native one, rendered from the ledger
    async with api.client.get(f"{API_ROOT}collections/{FED_ID}/objects/?match[version]=all",
                              headers={"Accept": MEDIA,
                                       "Authorization": f"Bearer {api.tokens['read']}"}) as resp:
        served = await resp.text()
    node = api.node
    rebuilt = await TaxiiIndex.open(tmp_path / "rebuilt.sqlite3",
                                    node.config.ledger_path(node.data_dir), node.public_key,
                                    _origin_info(node), node.clock)
    try:
        await rebuilt.sync()
        page = await rebuilt.page(IndexCollection.ALL, limit=1000, versions=VersionFilter(all=True))
    finally:
        await rebuilt.close()
    assert len(page.rows) == len(posted) + 2  # and this node's identity, and the native one
    assert served == '{"objects":[' + ",".join(row.json for row in page.rows) + "]}"
    assert json.loads(page.rows[-4].json) == malware  # carried exactly
