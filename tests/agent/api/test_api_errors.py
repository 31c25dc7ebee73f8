"""Bad input: the exact status, the error shape, and proof that nothing changed.

"Nothing changed" is checked on everything a request could touch: the ledger's entry
count and head, the listed observations, and the bytes of peers.toml.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import SERVER
from agent.api.models import ErrorBody
from agent.storage.queries import encode_cursor
from protocol.entries import TLP, sign_entry
from protocol.envelope import seal_envelope
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import Api, identity, ip, obs, running_api

MIB = 1024 * 1024


@dataclass
class Snapshot:
    entries: int
    head: Any
    listed: list[str]
    peers: bytes


async def snapshot(api: Api) -> Snapshot:
    status, body = await api.call("GET", "/api/v1/observations?include_retracted=true&limit=1000",
                                  scope="read")
    assert status == 200
    return Snapshot(api.node.ledger.counts().entries, api.node.ledger.head(api.node.public_key),
                    [(o["id"], o["retracted"]) for o in body["observations"]],
                    api.node.data_dir.peers_path.read_bytes())


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        await running.submit(obs("192.0.2.200"))  # something that must survive every test
        yield running


async def expect(api: Api, status: int, method: str, path: str, *, code: str | None = None,
                 scope: str | None = "admin", **kwargs: Any) -> dict[str, Any]:
    """Make the request, check status and error shape, and that nothing changed."""
    before = await snapshot(api)
    got, body = await api.call(method, path, scope=scope, **kwargs)
    assert got == status, body
    ErrorBody.model_validate(body)
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    assert await snapshot(api) == before
    return body


_BAD_OBSERVATIONS: list[tuple[str, Any, int, str | None]] = [
    ("unknown field", obs(colour="red"), 422, "unknown_field"),
    ("kind of another payload", obs(kind="sighting"), 422, None),
    ("confidence as text", obs(confidence="80"), 422, "invalid_confidence"),
    ("confidence over 100", obs(confidence=101), 422, "invalid_confidence"),
    ("confidence below 0", obs(confidence=-1), 422, "invalid_confidence"),
    ("tags not a list", obs(tags="ransomware"), 422, None),
    ("value not a string", obs(123), 422, "invalid_indicator"),
    ("bad IPv4", obs("999.1.1.1"), 422, "invalid_indicator"),
    ("bad hash", obs("abc", type="file:sha256"), 422, "invalid_indicator"),
    ("unknown indicator type", obs("x", type="mac-address"), 422, "invalid_indicator"),
    ("missing value", {"type": "ipv4-addr"}, 422, "missing_field"),
    ("unknown TLP", obs(tlp="PURPLE"), 422, "invalid_tlp"),
    ("TLP wrongly typed", obs(tlp=3), 422, "invalid_tlp"),
    ("TLP null", obs(tlp=None), 422, "invalid_tlp"),
    ("batch item TLP null", {"observations": [obs(tlp=None)]}, 422, "invalid_tlp"),
    ("batch TLP unknown", {"tlp": "PURPLE", "observations": [obs()]}, 422, "invalid_tlp"),
    ("batch item not an object", {"observations": [obs(), 5]}, 422, None),
    ("RED without audience", obs(tlp="RED"), 422, "unknown_audience"),
    ("unknown audience name", obs(tlp="AMBER", audience=["ON", "ATLANTIS"]), 422,
     "unknown_audience"),
    ("empty audience", obs(tlp="RED", audience=[]), 422, "unknown_audience"),
    ("audience on GREEN", obs(tlp="GREEN", audience=["ON"]), 422, "unknown_audience"),
    ("audience not a list", obs(tlp="AMBER", audience="ON"), 422, None),
    ("severity unknown", obs(severity="apocalyptic"), 422, None),
    ("valid_until without zone", obs(valid_until="2026-12-31T00:00:00"), 422, None),
    ("description as text", obs(description="bad"), 422, None),
    ("first_seen after last_seen", obs(first_seen="2026-02-01T00:00:00Z",
                                       last_seen="2026-01-01T00:00:00Z"), 422, None),
    ("a JSON array", [obs()], 422, None),
    ("a JSON string", "203.0.113.7", 422, None),
    ("batch not a list", {"observations": obs()}, 422, None),
    ("empty batch", {"observations": []}, 422, None),
    ("batch with an unknown key", {"observations": [obs()], "extra": 1}, 422, "unknown_field"),
    ("batch with one bad item", {"observations": [obs(ip(1)), obs(ip(2)), obs("1.2.3.999")]},
     422, "invalid_indicator"),
    ("batch with an unknown audience", {"tlp": "RED", "audience": ["NOPE"],
                                        "observations": [obs(ip(1))]}, 422, "unknown_audience"),
]


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in _BAD_OBSERVATIONS],
                         ids=[c[0] for c in _BAD_OBSERVATIONS])
async def test_submit_bad_observation_is_refused_and_writes_nothing(
        api: Api, body: Any, status: int, code: str | None) -> None:
    await expect(api, status, "POST", "/api/v1/observations", code=code, scope="write",
                 json_body=body)


_MALFORMED: list[tuple[str, bytes, str]] = [
    ("not JSON", b"{bad", "not valid JSON"),
    ("truncated", b'{"type": "ipv4-addr", "value": "203.0.113.7"', "not valid JSON"),
    ("empty", b"", "empty"),
    ("not UTF-8", b'{"type": "ipv4-addr", "value": "\xff\xfe"}', "not UTF-8"),
    ("NaN", b'{"type": "ipv4-addr", "value": "203.0.113.7", "confidence": NaN}',
     "not valid JSON"),
    ("Infinity", b'{"type": "ipv4-addr", "value": "203.0.113.7", "confidence": -Infinity}',
     "not valid JSON"),
    ("lone surrogate", b'{"type": "ipv4-addr", "value": "\\ud800"}', "not valid JSON"),
    ("overflowing number", b'{"type": "ipv4-addr", "value": "203.0.113.7", "confidence": 1e999}',
     "not valid JSON"),
    ("nested too deeply", b"[" * 5000 + b"]" * 5000, "not valid JSON"),
]


@pytest.mark.parametrize(("data", "says"), [m[1:] for m in _MALFORMED],
                         ids=[m[0] for m in _MALFORMED])
async def test_submit_malformed_json_is_400(api: Api, data: bytes, says: str) -> None:
    body = await expect(api, 400, "POST", "/api/v1/observations", code="bad_json",
                        scope="write", data=data, headers={"Content-Type": "application/json"})
    assert says in body["error"]["message"]


async def test_body_over_one_mib_is_413(api: Api) -> None:
    big = json.dumps({"observations": [obs(ip(1), description={"en": "x" * 8000})] * 140})
    assert len(big) > MIB
    await expect(api, 413, "POST", "/api/v1/observations", scope="write", data=big)


async def test_body_over_one_mib_without_length_is_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield b" " * (64 * 1024)

    await expect(api, 413, "POST", "/api/v1/observations", scope="write", data=chunks())


async def test_batch_over_1000_items_is_413(api: Api) -> None:
    body = {"observations": [obs(ip(i)) for i in range(1001)]}
    await expect(api, 413, "POST", "/api/v1/observations", code="batch_too_large",
                 scope="write", json_body=body)


async def test_batch_of_exactly_1000_items_is_accepted(api: Api) -> None:
    created = await api.submit({"observations": [obs(ip(i)) for i in range(1000)]})
    assert created["count"] == 1000


@pytest.mark.parametrize("cursor", ["abc", "A" * 12, encode_cursor("sighting", 5), "%00",
                                    "x" * 64])
async def test_bad_cursor_is_400(api: Api, cursor: str) -> None:
    await expect(api, 400, "GET", f"/api/v1/observations?cursor={cursor}", code="bad_cursor",
                 scope="read")


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=ten", "colour=red",
                                   "type=mac-address", "tlp=PURPLE", "since=yesterday",
                                   "include_retracted=perhaps", "origin=ATLANTIS",
                                   "type=ipv4-addr&value=999.1.1.1", "limit=1&limit=2"])
async def test_bad_list_query_is_422(api: Api, query: str) -> None:
    await expect(api, 422, "GET", f"/api/v1/observations?{query}", scope="read")


@pytest.mark.parametrize("entry_id", ["0" * 64, "z" * 64, "short"])
async def test_unknown_id_is_404_everywhere(api: Api, entry_id: str) -> None:
    await expect(api, 404, "GET", f"/api/v1/observations/{entry_id}", code="not_found",
                 scope="read")
    await expect(api, 404, "POST", f"/api/v1/observations/{entry_id}/retract",
                 code="not_found", scope="write")
    if len(entry_id) == 64 and entry_id[0] == "0":
        await expect(api, 404, "POST", "/api/v1/sightings", code="not_found", scope="write",
                     json_body={"of": entry_id})


async def _remote(api: Api, tlp: TLP, to: tuple[str, ...] = ()) -> str:
    who = identity("ON")
    head = api.node.ledger.head(who.public_key)
    seq, prev = (0, None) if head is None else head
    body, audience = encode_payload(Observation(type="ipv4-addr", value="192.0.2.77")), None
    if tlp.encrypted:
        audience, body = seal_envelope(body, [identity(n).public_key for n in to], bytes)
    entry = sign_entry(who, seq=seq + 1, prev=prev, now_ms=1_700_000_000_000, tlp=tlp,
                       audience=audience, body=body)
    assert (await api.node.ledger.ingest([entry])).stored == 1
    return entry.id


async def test_entry_not_addressed_to_this_node_answers_404_like_an_unknown_id(api: Api) -> None:
    sealed = await _remote(api, TLP.RED, ("FED",))
    await expect(api, 404, "GET", f"/api/v1/observations/{sealed}", code="not_found",
                 scope="read")
    await expect(api, 404, "POST", "/api/v1/sightings", code="not_found", scope="write",
                 json_body={"of": sealed})
    await expect(api, 404, "POST", f"/api/v1/observations/{sealed}/retract", scope="write")


async def test_retracting_another_origins_observation_is_403(api: Api) -> None:
    theirs = await _remote(api, TLP.GREEN)
    await expect(api, 403, "POST", f"/api/v1/observations/{theirs}/retract",
                 code="not_own_entry", scope="write")


async def test_retracting_twice_is_409(api: Api) -> None:
    created = await api.submit(obs(ip(9)))
    status, _ = await api.call("POST", f"/api/v1/observations/{created['id']}/retract",
                               scope="write")
    assert status == 201
    await expect(api, 409, "POST", f"/api/v1/observations/{created['id']}/retract",
                 code="already_retracted", scope="write")


async def test_bad_retract_body_is_refused(api: Api) -> None:
    created = await api.submit(obs(ip(10)))
    path = f"/api/v1/observations/{created['id']}/retract"
    await expect(api, 422, "POST", path, scope="write", json_body={"reason": 5})
    await expect(api, 422, "POST", path, scope="write", json_body={"why": "x"})
    await expect(api, 400, "POST", path, scope="write", data=b"{")


async def test_bad_sighting_is_refused(api: Api) -> None:
    created = await api.submit(obs(ip(11)))
    for body in ({"of": created["id"], "count": 0}, {"of": "nothex"},
                 {"of": created["id"], "colour": 1}, {"of": created["id"], "tlp": "PURPLE"},
                 {"of": created["id"], "tlp": "RED"}, {}):
        await expect(api, 422, "POST", "/api/v1/sightings", scope="write", json_body=body)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Basic dXNlcjpwYXNz",
                                    "Bearer ent_" + "A" * 43, "Bearer not-a-token"])
async def test_missing_or_unknown_token_is_401(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    body = await expect(api, 401, "POST", "/api/v1/observations", code="unauthorized",
                        scope=None, headers=headers, json_body=obs(ip(12)))
    assert body["error"]["message"]


async def test_a_401_names_the_bearer_scheme_and_says_what_is_missing(api: Api) -> None:
    for header, message in ((None, "a bearer token is required (Authorization: Bearer "
                                   "<token>)"),
                            ("Bearer ent_" + "A" * 43, "unknown token")):
        headers = {} if header is None else {"Authorization": header}
        async with api.client.get("/api/v1/status", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="entraide"'
            assert (await resp.json())["error"]["message"] == message


@pytest.mark.parametrize(("path", "scope", "status"), [
    ("/api/v1/health", None, 200),
    ("/api/v1/status", "read", 200),
    ("/metrics", "read", 200),
    ("/api/v1/status", None, 401),
    ("/api/v1/nowhere", None, 404),
    ("/taxii2/", None, 401),
    ("/taxii2/", "read", 406),
])
async def test_every_answer_carries_the_node_s_server_header(
        api: Api, path: str, scope: str | None, status: int) -> None:
    async with api.client.get(path, headers=api.auth(scope)) as resp:
        assert resp.status == status
        assert resp.headers.getall("Server") == [SERVER]


async def test_scope_too_low_is_403(api: Api) -> None:
    await expect(api, 403, "POST", "/api/v1/observations", code="insufficient_scope",
                 scope="read", json_body=obs(ip(13)))
    await expect(api, 403, "POST", "/api/v1/peers", code="insufficient_scope", scope="write",
                 json_body={"name": "AB", "key": identity("AB").public_key.text})
    await expect(api, 403, "DELETE", "/api/v1/peers/ON", scope="write")
    await expect(api, 403, "GET", "/api/v1/ledger/verify", scope="write")


_BAD_PEERS: list[tuple[str, Any, int]] = [
    ("bad key", {"name": "AB", "key": "ed25519:nope"}, 422),
    ("bad name", {"name": "A B", "key": identity("AB").public_key.text}, 422),
    ("bad url", {"name": "AB", "key": identity("AB").public_key.text, "url": "ftp://x"}, 422),
    ("no key", {"name": "AB"}, 422),
    ("card and name", {"card": "entraide1.x", "name": "AB"}, 422),
    ("mistyped card", {"card": "entraide1.AB.xxxx"}, 422),
    ("unknown field", {"name": "AB", "key": identity("AB").public_key.text, "x": 1}, 422),
    ("duplicate name", {"name": "ON", "key": identity("AB").public_key.text}, 409),
    ("duplicate name, other case", {"name": "on", "key": identity("AB").public_key.text}, 409),
    ("duplicate key", {"name": "AB", "key": identity("ON").public_key.text}, 409),
    ("this node's key", {"name": "AB", "key": identity("QC").public_key.text}, 409),
    ("this node's name", {"name": "QC", "key": identity("AB").public_key.text}, 409),
]


@pytest.mark.parametrize(("body", "status"), [c[1:] for c in _BAD_PEERS],
                         ids=[c[0] for c in _BAD_PEERS])
async def test_bad_peer_is_refused_and_peers_toml_unchanged(api: Api, body: Any,
                                                            status: int) -> None:
    await expect(api, status, "POST", "/api/v1/peers", json_body=body)
    assert [p.name for p in api.node.trust] == ["ON", "FED"]


async def test_removing_an_unknown_peer_is_404(api: Api) -> None:
    await expect(api, 404, "DELETE", "/api/v1/peers/ATLANTIS", code="not_found")
    await expect(api, 404, "GET", "/api/v1/peers/ATLANTIS", code="not_found")


async def test_unknown_route_and_method_answer_in_the_error_shape(api: Api) -> None:
    await expect(api, 404, "GET", "/api/v1/nothing", code="not_found")
    body = await expect(api, 405, "PUT", "/api/v1/observations", code="method_not_allowed")
    assert body["error"]["message"]


@pytest.mark.parametrize("path", ["/api/v1/indicators/ipv4-addr/999.1.1.1",
                                  "/api/v1/indicators/mac-address/x",
                                  "/api/v1/indicators/ipv4-addr/192.0.2.1?x=1"])
async def test_bad_indicator_lookup_is_422(api: Api, path: str) -> None:
    await expect(api, 422, "GET", path, scope="read")


async def test_unknown_origin_filter_is_422_unknown_origin(api: Api) -> None:
    await expect(api, 422, "GET", "/api/v1/observations?origin=ATLANTIS", code="unknown_origin",
                 scope="read")


@pytest.mark.parametrize("query", ["since=9223372036854775808", "until=-9223372036854775809",
                                   "since=99999999999999999999999"])
async def test_time_filter_outside_sqlite_integers_is_422(api: Api, query: str) -> None:
    # Found by the API fuzzer (tests/agent/api/test_api_fuzz.py): since=2**63 reached
    # SQLite and the driver's OverflowError answered 500.
    await expect(api, 422, "GET", f"/api/v1/observations?{query}", scope="read")
    await expect(api, 422, "GET", f"/api/v1/stream?{query}", scope="read")


async def test_submit_while_the_node_is_stopping_is_503(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.node.stop()
        status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                      json_body=obs())
        assert status == 503 and body["error"]["code"] == "unavailable"
