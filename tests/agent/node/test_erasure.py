"""agent/node/erasure.py and the erasure routes, with two real nodes (real keys,
ledgers, TAXII indexes and APIs on 127.0.0.1) whose entries are handed from one ledger
to the other as replication would: after an erasure each node answers 410, the
value's bytes are in none of its files, a receipt comes back to the origin, chains
still verify; an erasure by anyone but the origin has no effect and is counted; a
sighting takes at least its target's TLP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.metrics import parse_text
from agent.storage.taxii_index import TaxiiIndex
from agent.taxii.app import API_ROOT, COLLECTIONS
from protocol.entries import TLP, VerifiedEntry, verify_entry
from protocol.erasure import Erasure
from tests.agent._api_helpers import Api, obs, running_api
from tests.agent.nodes import wait_for

VALUE = "victim.erasure-test@example.org"
MEDIA = "application/taxii+json;version=2.1"


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def _taxii_objects(api: Api) -> str:
    async with api.client.request(
            "GET", f"{API_ROOT}collections/{COLLECTIONS[0].id}/objects/",
            headers={"Accept": MEDIA,
                     "Authorization": f"Bearer {api.tokens['read']}"}) as resp:
        assert resp.status == 200
        return await resp.text()


async def _entries_after(api: Api, seq: int) -> list[VerifiedEntry]:
    head = api.node.ledger.head(api.node.public_key)
    assert head is not None
    return [verify_entry(raw) async for chunk in api.node.ledger.read_range(
        api.node.public_key, seq + 1, head[0]) for raw in chunk]


async def test_erasure_drops_everywhere_without_trace_and_receipts_come_back(
        tmp_path: Path) -> None:
    async with running_api(tmp_path, "BC", ("QC",)) as bc, \
            running_api(tmp_path, "QC", ("BC",)) as qc:
        created = await bc.submit(obs(VALUE, "email-addr", tlp="GREEN"))
        target = created["id"]
        await qc.node.ledger.ingest(await _entries_after(bc, 0))
        for root in (tmp_path / "bc", tmp_path / "qc"):
            assert files_holding(root, VALUE.encode())  # the search finds it before
        for api in (bc, qc):  # the value is in each node's ledger and TAXII index
            assert VALUE in await _taxii_objects(api)
            status, _ = await api.call("GET", f"/api/v1/observations/{target}", scope="read")
            assert status == 200

        # Refusals change nothing: unknown, another origin's, bad body.
        status, body = await qc.call("POST", f"/api/v1/observations/{target}/erase",
                                     scope="write", json_body={})
        assert (status, body["error"]["code"]) == (403, "not_own_entry")
        status, body = await bc.call("POST", f"/api/v1/observations/{'0' * 64}/erase",
                                     scope="write", json_body={})
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, body = await bc.call("POST", f"/api/v1/observations/{target}/erase",
                                     scope="read", json_body={})
        assert status == 403

        status, erased = await bc.call("POST", f"/api/v1/observations/{target}/erase",
                                       scope="write", json_body={"reason": "citizen asked"})
        assert status == 202, erased
        assert erased["of"] == target
        status, body = await bc.call("POST", f"/api/v1/observations/{target}/erase",
                                     scope="write", json_body={})
        assert (status, body["error"]["code"]) == (409, "already_erased")

        await qc.node.ledger.ingest(await _entries_after(bc, created["seq"]))

        async def qc_erased() -> bool:
            status, _ = await qc.call("GET", f"/api/v1/observations/{target}", scope="read")
            return status == 410
        await wait_for(qc_erased, timeout=10, what="QC applies the erasure")

        # QC's receipt travels back to BC.
        async def receipt_signed() -> bool:
            head = qc.node.ledger.head(qc.node.public_key)
            return head is not None
        await wait_for(receipt_signed, timeout=10, what="QC signs a receipt")
        receipts = await _entries_after(qc, 0)
        assert receipts and all(r.tlp is TLP.AMBER_STRICT for r in receipts)
        await bc.node.ledger.ingest(receipts)

        async def listed() -> bool:
            status, body = await bc.call("GET", f"/api/v1/observations/{target}/erasure",
                                         scope="read")
            return status == 200 and len(body["receipts"]) == 2
        await wait_for(listed, timeout=10, what="QC's receipt listed at BC")
        _, body = await bc.call("GET", f"/api/v1/observations/{target}/erasure", scope="read")
        assert [r["node"] for r in body["receipts"]] == ["BC", "QC"]
        assert body["erased_at"] == erased["erased_at"]

        for api in (bc, qc):
            status, body = await api.call("GET", f"/api/v1/observations/{target}",
                                          scope="read")
            assert (status, body["error"]["code"]) == (410, "erased")
            assert VALUE not in await _taxii_objects(api)
            report = await api.node.ledger.verify()
            assert report.ok and report.bodies.get("erased") == 1
            text = (await api.call("GET", "/metrics", scope="read"))[1]
            assert parse_text(text)["entraide_erasures_applied_total"][()] == 1
        for root in (tmp_path / "bc", tmp_path / "qc"):
            for needle in (VALUE.encode(), VALUE.encode("utf-16-le")):
                assert files_holding(root, needle) == []


async def test_erasure_by_another_origin_is_stored_without_effect(tmp_path: Path) -> None:
    async with running_api(tmp_path, "BC", ("QC",)) as bc, \
            running_api(tmp_path, "QC", ("BC",)) as qc:
        created = await bc.submit(obs(VALUE, "email-addr", tlp="GREEN"))
        await qc.node.ledger.ingest(await _entries_after(bc, 0))
        # QC, bypassing its own API as a rogue node would, "erases" BC's entry.
        await qc.node.submit_sealed(Erasure(of=created["id"]), TLP.GREEN, ())
        await bc.node.ledger.ingest(await _entries_after(qc, 0))

        async def counted() -> bool:
            text = (await bc.call("GET", "/metrics", scope="read"))[1]
            return parse_text(text).get("entraide_erasures_invalid_total", {}).get((), 0) >= 1
        await wait_for(counted, timeout=10, what="the rogue erasure counted")
        for api in (bc, qc):
            status, _ = await api.call("GET", f"/api/v1/observations/{created['id']}",
                                       scope="read")
            assert status == 200
        status, _ = await bc.call("GET", f"/api/v1/observations/{created['id']}/erasure",
                                     scope="read")
        assert status == 404


async def test_sighting_takes_at_least_its_targets_tlp_and_audience(tmp_path: Path) -> None:
    async with running_api(tmp_path, "BC", ("QC", "ON")) as bc:
        created = await bc.submit(obs("203.0.113.9", tlp="RED", audience=["QC"]))
        status, got = await bc.call("POST", "/api/v1/sightings", scope="write",
                                    json_body={"of": created["id"], "note": "seen here"})
        assert status == 201, got
        assert got["tlp"] == "RED" and sorted(got["audience"]) == ["BC", "QC"]
        before = bc.node.ledger.counts().entries
        status, body = await bc.call("POST", "/api/v1/sightings", scope="write",
                                     json_body={"of": created["id"], "tlp": "GREEN"})
        assert (status, body["error"]["code"]) == (422, "tlp_below_target")
        status, body = await bc.call("POST", "/api/v1/sightings", scope="write",
                                     json_body={"of": created["id"], "tlp": "RED",
                                                "audience": ["ON"]})
        assert (status, body["error"]["code"]) == (409, "audience_wider_than_target")
        assert bc.node.ledger.counts().entries == before


async def test_erasure_racing_a_taxii_sync_is_never_served_afterwards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TAXII index syncs from the ledger in two steps (read rows, then write the
    index). An erasure that runs to its end between the two must not leave the
    erased object in the index: the sync's write sees that the body is gone."""
    value = "victim.taxii-race@example.org"
    async with running_api(tmp_path, "BC", ("QC",)) as bc:
        created = await bc.submit(obs(value, "email-addr", tlp="GREEN"))
        target = bytes.fromhex(created["id"])
        loop = asyncio.get_running_loop()
        real_commit = TaxiiIndex._commit
        raced: list[int] = []

        def commit(self: TaxiiIndex, pending: list[Any], *args: Any) -> int:
            if not raced and any(p.entry_hash == target for p in pending):
                # In the sync's worker thread, after it read the ledger's rows.
                erase = bc.call("POST", f"/api/v1/observations/{created['id']}/erase",
                                scope="write", json_body={})
                status, _ = asyncio.run_coroutine_threadsafe(erase, loop).result(timeout=60)
                raced.append(status)
            return real_commit(self, pending, *args)

        monkeypatch.setattr(TaxiiIndex, "_commit", commit)
        first = await _taxii_objects(bc)
        assert raced == [202]
        assert value not in first and value not in await _taxii_objects(bc)
        status, _ = await bc.call("GET", f"/api/v1/observations/{created['id']}",
                                  scope="read")
        assert status == 410
        assert not files_holding(tmp_path / "bc", value.encode())
