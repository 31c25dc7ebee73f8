"""TAXII across the federation: what one node's SOC posts comes out of another node's
TAXII collection after gossip, with the same STIX id (real nodes, real peer sessions
on 127.0.0.1, taxii2-client on both ends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from taxii2client.v21 import Collection

from agent.api.app import create_app
from agent.config.settings import PeerEntry
from agent.config.tokens import Scope, TokenStore
from agent.node.node import Node
from agent.peering.transport import replication_factory, start_peer_listener
from agent.taxii.app import API_ROOT, COLLECTIONS
from protocol.entries import TLP
from protocol.payloads import Observation
from protocol.stix import entry_stix_id
from tests.agent._api_helpers import identity, make_data_dir
from tests.agent.nodes import FAST_TRANSPORT, wait_for

pytestmark = pytest.mark.slow
FED_ID, LOCAL_ID = COLLECTIONS[0].id, COLLECTIONS[1].id


@asynccontextmanager
async def serving(root: Path, name: str, stack: AsyncExitStack
                  ) -> AsyncIterator[tuple[Node, str, str, int]]:
    """A node with replication, its peer listener and its local API; yields (node, API
    base URL, write token, peer port)."""
    dd = make_data_dir(root, name)
    token = TokenStore(dd).create(Scope.WRITE)
    node = Node(dd, replication=replication_factory(FAST_TRANSPORT), trust_poll_interval=0.05)
    await node.start()
    stack.push_async_callback(node.stop)
    runner, port = await start_peer_listener(node.replication, "127.0.0.1", 0)  # type: ignore[arg-type]
    stack.push_async_callback(runner.cleanup)
    client = TestClient(TestServer(create_app(node), host="127.0.0.1", port=0),
                        timeout=aiohttp.ClientTimeout(total=30))
    await client.start_server()
    stack.push_async_callback(client.close)
    yield node, f"http://127.0.0.1:{client.port}", token, port


async def test_taxii_object_posted_at_one_node_comes_out_of_another(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        qc, qc_api, qc_token, qc_port = await stack.enter_async_context(
            serving(tmp_path, "QC", stack))
        on, on_api, on_token, on_port = await stack.enter_async_context(
            serving(tmp_path, "ON", stack))
        await qc.add_peer(PeerEntry.build(name="ON", key=identity("ON").public_key.text,
                                          url=f"http://127.0.0.1:{on_port}"))
        await on.add_peer(PeerEntry.build(name="QC", key=identity("QC").public_key.text,
                                          url=f"http://127.0.0.1:{qc_port}"))
        posted = {"type": "indicator", "spec_version": "2.1",
                  "id": "indicator--6b1f0e1c-5a3e-4c2b-9d8f-1e2a3b4c5d6e",
                  "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z",
                  "pattern": "[url:value = 'https://evil.example/payload']",
                  "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z"}
        malware = {"type": "malware", "spec_version": "2.1", "name": "Evil", "is_family": True,
                   "id": "malware--6b1f0e1c-5a3e-4c2b-9d8f-1e2a3b4c5d6f",
                   "created": "2024-01-01T00:00:00.000Z",
                   "modified": "2024-01-01T00:00:00.000Z"}
        local = Collection(f"{qc_api}{API_ROOT}collections/{LOCAL_ID}/", user="soc",
                           password=qc_token)
        status = await asyncio.to_thread(local.add_objects, {"objects": [posted, malware]})
        assert status.success_count == 2
        (native,) = await qc.submit_observations(
            [Observation(type="domain-name", value="c2.evil.example")], TLP.AMBER)
        federation = Collection(f"{on_api}{API_ROOT}collections/{FED_ID}/", user="soc",
                                password=on_token)

        def ids_at_on() -> set[str]:
            envelope: dict[str, Any] = federation.get_objects()
            return {o["id"] for o in envelope.get("objects", [])}

        wanted = {posted["id"], malware["id"], entry_stix_id("indicator", native.id)}
        seen: set[str] = set()

        async def arrived() -> bool:
            seen.update(await asyncio.to_thread(ids_at_on))
            return wanted <= seen

        await wait_for(arrived, what="QC's objects in ON's federation collection", timeout=60)
        served = await asyncio.to_thread(federation.get_object, posted["id"])
        assert served["objects"] == [posted]  # exactly as QC's SOC posted it
        carried = await asyncio.to_thread(federation.get_object, malware["id"])
        assert carried["objects"] == [malware]
        # ON did not write them: they are not in ON's own collection.
        own = Collection(f"{on_api}{API_ROOT}collections/{LOCAL_ID}/", user="soc",
                         password=on_token)
        assert (await asyncio.to_thread(own.get_objects)) == {}
        # A TAXII client that syncs ON's federation collection back into ON's local one
        # (issue 17, AMBER widening): every object is QC's and is refused, so QC's AMBER
        # observation is not re-shared to the whole federation under ON's name.
        everything = (await asyncio.to_thread(federation.get_objects))["objects"]
        entries = on.ledger.counts().entries
        back = await asyncio.to_thread(own.add_objects, {"objects": everything})
        assert (back.success_count, back.failure_count) == (0, len(everything))
        reasons = {f["id"]: f["message"] for f in back.failures}
        amber = entry_stix_id("indicator", native.id)
        assert "TLP:AMBER object" in reasons[amber] and "QC" in reasons[amber]
        assert "first published by QC" in reasons[malware["id"]]
        assert on.ledger.counts().entries == entries
        assert (await asyncio.to_thread(own.get_objects)) == {}
