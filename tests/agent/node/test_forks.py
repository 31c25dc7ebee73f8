"""Forks, end to end: an origin that signed two entries with one seq is listed by
``GET /api/v1/forks``, quarantined, and accepted again after an admin clears it with
``POST /api/v1/forks/{origin}/clear`` or ``entraide forks clear`` (real HTTP server on
127.0.0.1, real SQLite files, real keys; the last test runs real peer sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.api.app import create_app
from agent.api.models import ForkList, ForkRecordOut, StatusOut
from agent.cli.client import ApiError, forks_clear_command, forks_list_command
from agent.config.settings import PeerEntry
from agent.config.tokens import Scope, TokenStore
from agent.errors import StorageError
from agent.node.node import Node
from agent.peering.transport import replication_factory, start_peer_listener
from protocol.entries import TLP, VerifiedEntry, decode_fork_proof, sign_entry
from protocol.keys import b64url_decode
from protocol.messages import Fork, encode_message
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import Api, identity, ip, make_data_dir, running_api
from tests.agent.nodes import FAST_TRANSPORT, wait_for

ON = identity("ON")


def on_chain(count: int, *, start: tuple[int, bytes] | None = None,
             tag: str = "") -> list[VerifiedEntry]:
    """``count`` entries signed by ON after ``start`` (seq, hash); ``tag`` makes a twin."""
    seq, prev = (0, None) if start is None else start
    out = []
    for _ in range(count):
        body = encode_payload(Observation(type="ipv4-addr", value=ip(seq + 1),
                                          tags=(tag,) if tag else ()))
        entry = sign_entry(ON, seq=seq + 1, prev=prev, now_ms=1_700_000_000_000 + seq,
                           tlp=TLP.GREEN, audience=None, body=body)
        out.append(entry)
        seq, prev = entry.seq, entry.hash
    return out


async def fork_on(api: Api) -> list[VerifiedEntry]:
    """ON's entries 1..3 stored, then a second entry 2 signed by the same key: a fork.
    Returns the whole honest chain (6 entries; 4..6 not stored)."""
    honest = on_chain(6)
    assert (await api.node.ledger.ingest(honest[:3])).stored == 3
    twin = on_chain(1, start=(1, honest[0].hash), tag="twin")[0]
    result = await api.node.ledger.ingest([twin])
    assert result.forks == 1
    return honest


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    async with running_api(tmp_path) as running:
        yield running


async def test_forks_route_lists_the_fork_with_a_proof_anyone_can_verify(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/forks")
    assert (status, body) == (200, {"forks": []})
    honest = await fork_on(api)
    status, body = await api.call("GET", "/api/v1/forks")
    assert status == 200, body
    ForkList.model_validate(body)
    [record] = body["forks"]
    assert (record["origin"], record["origin_name"], record["seq"], record["cleared"]) == (
        ON.public_key.text, "ON", 2, None)
    proof = decode_fork_proof(b64url_decode(record["proof"]))
    assert (proof.origin, proof.seq) == (ON.public_key, 2)
    assert honest[1].id in {proof.a.id, proof.b.id}


async def test_forks_clear_accepts_the_origin_again(api: Api) -> None:
    honest = await fork_on(api)
    refused = await api.node.ledger.ingest(honest[3:5])
    assert (refused.stored, refused.refused) == (0, 2)
    status, body = await api.call("GET", "/api/v1/status", scope="read")
    assert body["ledger"]["forked_origins"] == 1 and body["forks"][0]["cleared"] is None
    status, body = await api.call("POST", "/api/v1/forks/ON/clear")
    assert status == 200, body
    ForkRecordOut.model_validate(body)
    assert body["origin"] == ON.public_key.text and body["seq"] == 2
    assert body["cleared"] is not None
    accepted = await api.node.ledger.ingest(honest[3:5])
    assert accepted.stored == 2 and api.node.ledger.head(ON.public_key) == (5, honest[4].hash)
    status, body = await api.call("GET", "/api/v1/status", scope="read")
    StatusOut.model_validate(body)
    assert body["ledger"]["forked_origins"] == 0
    assert [(f["origin_name"], f["seq"]) for f in body["forks"]] == [("ON", 2)]
    assert body["forks"][0]["cleared"] is not None
    # Clearing again is harmless; by key text works as well as by name.
    status, again = await api.call("POST", f"/api/v1/forks/{ON.public_key.text}/clear")
    assert status == 200 and again["cleared"] == body["forks"][0]["cleared"]


@pytest.mark.parametrize("origin", ["FED", "nobody", "ed25519:not-a-key"])
async def test_forks_clear_without_a_fork_is_404(api: Api, origin: str) -> None:
    await fork_on(api)
    status, body = await api.call("POST", f"/api/v1/forks/{origin}/clear")
    assert status == 404 and body["error"]["code"] == "not_found", body
    assert api.node.ledger.is_forked(ON.public_key)


async def test_forks_routes_need_the_admin_scope(api: Api) -> None:
    await fork_on(api)
    for method, path in (("GET", "/api/v1/forks"), ("POST", "/api/v1/forks/ON/clear")):
        status, _ = await api.call(method, path, scope=None)
        assert status == 401
        for scope in ("read", "write"):
            status, body = await api.call(method, path, scope=scope)
            assert status == 403 and body["error"]["code"] == "insufficient_scope"
    assert api.node.ledger.is_forked(ON.public_key)


async def test_forks_cli_lists_and_clears(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    await fork_on(api)
    common = ["--api", f"http://127.0.0.1:{api.client.port}", "--token", api.tokens["admin"]]
    data_dir = api.node.data_dir.root
    assert await asyncio.to_thread(forks_list_command, common, data_dir) == 0
    table = capsys.readouterr().out
    assert "quarantined" in table and ON.public_key.text in table
    assert await asyncio.to_thread(forks_clear_command, ["ON", *common, "--json"], data_dir) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["origin_name"] == "ON" and cleared["cleared"] is not None
    assert not api.node.ledger.is_forked(ON.public_key)
    assert await asyncio.to_thread(forks_list_command, [*common, "--json"], data_dir) == 0
    [record] = json.loads(capsys.readouterr().out)["forks"]  # the API's shape
    assert record["cleared"] == cleared["cleared"]
    with pytest.raises(ApiError, match="no fork recorded"):
        await asyncio.to_thread(forks_clear_command, ["FED", *common], data_dir)
    read_only = ["--api", common[1], "--token", api.tokens["read"]]
    with pytest.raises(ApiError, match="403"):
        await asyncio.to_thread(forks_list_command, read_only, data_dir)


# --- with replication: the fork is found by gossip, and cleared on both sides ------------


async def test_forks_cleared_stay_cleared_in_the_engine_after_a_restart(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await fork_on(api)
        [record] = await api.node.ledger.forks()
        assert (await api.call("POST", "/api/v1/forks/ON/clear"))[0] == 200
    node = Node(tmp_path / "qc", replication=replication_factory(FAST_TRANSPORT))
    async with contextlib.AsyncExitStack() as stack:
        await node.start()
        stack.push_async_callback(node.stop)
        engine = node.replication.engine  # type: ignore[attr-defined]
        assert not _forked_in_engine(node, ON.public_key)
        # A peer that has not cleared it gossips the same proof: it quarantines nothing.
        peer = identity("FED").public_key
        engine.add_peer(peer, 0.0)
        engine.receive(peer, encode_message(Fork(record.proof)), 0.0)
        assert not _forked_in_engine(node, ON.public_key)
        assert not node.ledger.is_forked(ON.public_key)


async def _serving(root: Path, name: str, stack: AsyncExitStack, peers: tuple[str, ...] = ()
                   ) -> tuple[Node, int, Api | None]:
    """A node with replication and its peer listener; QC also serves its local API."""
    dd = make_data_dir(root, name, peers)
    node = Node(dd, replication=replication_factory(FAST_TRANSPORT), trust_poll_interval=0.05)
    await node.start()
    stack.push_async_callback(node.stop)
    runner, port = await start_peer_listener(node.replication, "127.0.0.1", 0)  # type: ignore[arg-type]
    stack.push_async_callback(runner.cleanup)
    if name != "QC":
        return node, port, None
    tokens = {scope.value: TokenStore(dd).create(scope) for scope in Scope}
    client = TestClient(TestServer(create_app(node), host="127.0.0.1", port=0),
                        timeout=aiohttp.ClientTimeout(total=30))
    await client.start_server()
    stack.push_async_callback(client.close)
    return node, port, Api(node, client, tokens)


def _forked_in_engine(node: Node, key: Any) -> bool:
    engine = node.replication.engine  # type: ignore[attr-defined]
    return engine is not None and key.key_id in engine.forked()


@pytest.mark.slow
async def test_forks_found_by_gossip_are_cleared_and_replication_resumes(
        tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        qc, qc_port, api = await _serving(tmp_path, "QC", stack)
        on, on_port, _ = await _serving(tmp_path, "ON", stack)
        assert api is not None
        await on.add_peer(PeerEntry.build(name="QC", key=identity("QC").public_key.text))
        await qc.add_peer(PeerEntry.build(name="ON", key=ON.public_key.text,
                                          url=f"http://127.0.0.1:{on_port}"))
        honest = await on.submit_observations([Observation(type="ipv4-addr", value=ip(i))
                                               for i in range(3)], TLP.GREEN)
        await wait_for(lambda: qc.ledger.head(ON.public_key) == (3, honest[2].hash),
                       what="ON's entries at QC")
        # FED holds another entry 2 signed with ON's key (a stolen copy of the key).
        fed_dd = make_data_dir(tmp_path, "FED", ("ON",))
        twin = sign_entry(ON, seq=2, prev=honest[0].hash, now_ms=honest[1].ts + 1,
                          tlp=TLP.GREEN, audience=None,
                          body=encode_payload(Observation(type="ipv4-addr", value=ip(99))))
        async with Node.open(fed_dd) as seeding:
            assert (await seeding.ledger.ingest([honest[0], twin])).stored == 2
        await qc.add_peer(PeerEntry.build(name="FED", key=identity("FED").public_key.text))
        fed = Node(fed_dd, replication=replication_factory(FAST_TRANSPORT),
                   trust_poll_interval=0.05)
        await fed.start()
        stack.push_async_callback(fed.stop)
        await fed.add_peer(PeerEntry.build(name="QC", key=identity("QC").public_key.text,
                                           url=f"http://127.0.0.1:{qc_port}"))
        await wait_for(lambda: qc.ledger.is_forked(ON.public_key)
                       and _forked_in_engine(qc, ON.public_key)
                       and on.ledger.is_forked(ON.public_key), what="the fork known at QC and ON")
        status, body = await api.call("GET", "/api/v1/forks")
        assert status == 200 and [f["seq"] for f in body["forks"]] == [2]
        with pytest.raises(StorageError):  # ON's own log is quarantined too
            await on.submit_observations([Observation(type="ipv4-addr", value=ip(3))],
                                         TLP.GREEN)
        # The admins talk, and both clear it; FED's admin does not (it keeps the proof).
        status, body = await api.call("POST", "/api/v1/forks/ON/clear")
        assert status == 200 and body["cleared"] is not None, body
        await on.clear_fork(ON.public_key)
        assert not _forked_in_engine(qc, ON.public_key)
        later = await on.submit_observations([Observation(type="ipv4-addr", value=ip(i))
                                              for i in range(3, 5)], TLP.GREEN)
        await wait_for(lambda: qc.ledger.head(ON.public_key) == (5, later[-1].hash),
                       what="ON's later entries at QC")
        assert not qc.ledger.is_forked(ON.public_key)
        assert not _forked_in_engine(qc, ON.public_key)
        assert fed.ledger.is_forked(ON.public_key)

