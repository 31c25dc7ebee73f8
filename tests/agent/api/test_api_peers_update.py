"""PATCH /api/v1/peers/{name}: a trusted peer's URL, key (or both, from its card) and
jurisdiction changed live and persisted, as ``entraide peers update`` does; bad input
is refused and changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.api.models import ErrorBody, PeerOut
from agent.config.settings import load_trust_list
from protocol.cards import PeerCard, encode_card
from tests.agent._api_helpers import Api, identity, running_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


async def test_peers_update_changes_url_key_and_jurisdiction_live(api: Api) -> None:
    status, body = await api.call("PATCH", "/api/v1/peers/ON", json_body={
        "url": "https://on.example:8471", "jurisdiction": "Ontario"})
    assert status == 200, body
    PeerOut.model_validate(body)
    assert body["url"] == "https://on.example:8471" and body["jurisdiction"] == "Ontario"
    on_disk = load_trust_list(api.node.data_dir).by_name("ON")
    assert on_disk is not None and on_disk.url == "https://on.example:8471"

    new = identity("ON-2").public_key
    status, body = await api.call("PATCH", "/api/v1/peers/ON", json_body={"key": new.text})
    assert status == 200, body
    assert body["fingerprint"] == new.fingerprint and body["url"] == "https://on.example:8471"
    assert new in api.node.trust and identity("ON").public_key not in api.node.trust

    card = encode_card(PeerCard("ON", identity("ON").public_key, "https://on2.example"))
    status, body = await api.call("PATCH", "/api/v1/peers/ON", json_body={"card": card})
    assert status == 200, body
    assert body["key"] == identity("ON").public_key.text and body["url"] == "https://on2.example"
    assert body["jurisdiction"] == "Ontario"

    status, body = await api.call("PATCH", "/api/v1/peers/ON", json_body={"url": ""})
    assert status == 200 and body["url"] is None


@pytest.mark.parametrize(("status", "body", "scope"), [
    (422, {}, "admin"),
    (422, {"url": "ftp://on.example"}, "admin"),
    (422, {"key": "ed25519:nope"}, "admin"),
    (422, {"card": "entraide1garbage"}, "admin"),
    (422, {"card": encode_card(PeerCard("AB", identity("AB").public_key, None))}, "admin"),
    (409, {"key": identity("FED").public_key.text}, "admin"),
    (403, {"url": "https://on.example"}, "write"),
    (403, {"url": "https://on.example"}, "read"),
])
async def test_peers_update_refuses_bad_input_and_changes_nothing(
        api: Api, status: int, body: dict[str, str], scope: str) -> None:
    before = api.node.data_dir.peers_path.read_bytes()
    got, answer = await api.call("PATCH", "/api/v1/peers/ON", scope=scope, json_body=body)
    assert got == status, answer
    ErrorBody.model_validate(answer)
    assert api.node.data_dir.peers_path.read_bytes() == before


async def test_peers_update_of_an_unknown_peer_is_404(api: Api) -> None:
    got, answer = await api.call("PATCH", "/api/v1/peers/NOPE", json_body={"url": ""})
    assert got == 404 and answer["error"]["code"] == "not_found"
