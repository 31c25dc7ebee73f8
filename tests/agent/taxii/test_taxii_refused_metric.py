"""``entraide_taxii_refused_objects``: the TAXII index's objects kept but not served
because they speak for another member, on /metrics. Counted on a slow timer (and only
when the index changed), never at scrape time: a count scans the index."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import agent.taxii.app as taxii_app
from agent.storage.taxii_index import TaxiiIndex
from protocol.payloads import StixObject
from protocol.stix import identity_id
from tests.agent._api_helpers import Api, identity, running_api
from tests.agent._ledger_helpers import chain, open_ledger

ON, FED = identity("ON"), identity("FED")
T0, T1 = "2024-01-01T00:00:00.000Z", "2024-06-01T00:00:00.000Z"
X = "indicator--5f3c0a1e-8d5e-4d2b-9a61-0b7e6f1c2a10"
WAIT = 20.0  # a guard against hanging, not a latency requirement


def indicator(modified: str = T0, **extra: Any) -> dict[str, Any]:
    return {"type": "indicator", "spec_version": "2.1", "id": X, "created": T0,
            "modified": modified, "name": "C2", "pattern": "[ipv4-addr:value = '192.0.2.1']",
            "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z", **extra}


async def refused_metric(api: Api) -> float | None:
    status, text = await api.call("GET", "/metrics", scope="read")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith("entraide_taxii_refused_objects "):
            return float(line.split()[1])
    return None


async def metric_becomes(api: Api, value: float) -> None:
    async with asyncio.timeout(WAIT):
        while await refused_metric(api) != value:
            await asyncio.sleep(0.02)


async def test_taxii_refused_objects_metric_counts_what_the_index_does_not_serve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taxii_app, "REFUSED_COUNT_S", 0.05)
    async with running_api(tmp_path) as api:
        # ON publishes X; FED revokes it (not its object: kept, never served).
        on = chain(ON, 1, ts=1_700_000_000_000,
                   payload=lambda _s: StixObject.from_object(indicator()))
        fed = chain(FED, 1, ts=1_700_000_100_000,
                    payload=lambda _s: StixObject.from_object(indicator(T1, revoked=True)))
        await api.node.ledger.ingest(on)
        await api.node.ledger.ingest(fed)
        assert await refused_metric(api) is None  # no TAXII index open yet
        status, _ = await api.call("GET", "/taxii2/entraide/collections/federation/objects/",
                                   scope="read",
                                   headers={"Accept": "application/taxii+json;version=2.1"})
        assert status == 200
        await metric_becomes(api, 1.0)

        # FED then speaks in ON's name: refused too.
        spoken = {**indicator(), "id": "indicator--5f3c0a1e-8d5e-4d2b-9a61-0b7e6f1c2a11",
                  "created_by_ref": identity_id(ON.public_key.text)}
        more = chain(FED, 1, start=(fed[-1].seq, fed[-1].hash), ts=1_700_000_200_000,
                     payload=lambda _s: StixObject.from_object(spoken))
        await api.node.ledger.ingest(more)
        status, _ = await api.call("GET", "/taxii2/entraide/collections/federation/objects/",
                                   scope="read",
                                   headers={"Accept": "application/taxii+json;version=2.1"})
        assert status == 200
        await metric_becomes(api, 2.0)


async def test_taxii_refused_count_scans_only_when_the_index_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = identity("QC")
    ledger = await open_ledger(tmp_path / "ledger.sqlite3", me)
    index = await TaxiiIndex.open(tmp_path / "taxii.sqlite3", tmp_path / "ledger.sqlite3",
                                  me.public_key, lambda _o: (None, None), lambda: 1.8e9)
    try:
        await ledger.ingest(chain(ON, 1, ts=1_700_000_000_000, payload=lambda _s:
                                  StixObject.from_object(indicator())))
        await index.sync()
        assert index.refused_rows is None  # not counted yet
        assert await index.count_refused() == 0
        scans = [0]
        unserved = index._owners.unserved

        def counted(db: Any) -> int:
            scans[0] += 1
            return unserved(db)

        monkeypatch.setattr(index._owners, "unserved", counted)
        assert await index.count_refused() == 0 and scans[0] == 0  # nothing changed
        await ledger.ingest(chain(FED, 1, ts=1_700_000_100_000, payload=lambda _s:
                                  StixObject.from_object(indicator(T1, revoked=True))))
        await index.sync()
        assert await index.count_refused() == 1 and scans[0] == 1
        assert index.refused_rows == 1
    finally:
        await index.close()
        await ledger.close()
