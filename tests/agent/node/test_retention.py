"""Retention with two real nodes (real keys, ledgers, TAXII indexes and APIs on
127.0.0.1), their clocks injected: an entry whose origin gave it a short retention
expires on both at the same instant, from the expiry signed in its header (the
receiving node's own, longer policy plays no part); afterwards it is not served,
listed, looked up or exported to TAXII, catch-up sends its header only, and the chains
verify with the expired count."""

from __future__ import annotations

from pathlib import Path

from agent.config.datadir import DataDir
from agent.config.settings import RetentionConfig, load_node_config, write_node_config
from agent.taxii.app import API_ROOT, COLLECTIONS
from protocol.entries import split_entry, verify_entry
from tests.agent._api_helpers import Api, make_data_dir, obs, running_api
from tests.agent.nodes import wait_for

T0 = 1_790_000_000.0  # seconds
HOUR_MS = 3_600_000
SHORT = "198.51.100.77"
LONG = "198.51.100.78"
MEDIA = "application/taxii+json;version=2.1"


def with_retention(root: Path, name: str, peer: str, rules: dict[str, dict[str, str]]) -> None:
    dd: DataDir = make_data_dir(root, name, (peer,))
    config = load_node_config(dd)
    write_node_config(dd, config.model_copy(
        update={"retention": RetentionConfig.model_validate(rules)}))


async def _taxii_text(api: Api) -> str:
    async with api.client.request(
            "GET", f"{API_ROOT}collections/{COLLECTIONS[0].id}/objects/",
            headers={"Accept": MEDIA,
                     "Authorization": f"Bearer {api.tokens['read']}"}) as resp:
        assert resp.status == 200
        return await resp.text()


async def _own_range(api: Api) -> list[bytes]:
    head = api.node.ledger.head(api.node.public_key)
    assert head is not None
    return [raw async for chunk in api.node.ledger.read_range(api.node.public_key, 1, head[0])
            for raw in chunk]


async def test_retention_expires_on_both_nodes_at_the_signed_instant(tmp_path: Path) -> None:
    now = [T0]

    def clock() -> float:
        return now[0]

    with_retention(tmp_path, "BC", "QC", {"observation": {"GREEN": "1h"}})
    with_retention(tmp_path, "QC", "BC", {"observation": {"GREEN": "100y"}})
    async with running_api(tmp_path, "BC", ("QC",), clock=clock) as bc, \
            running_api(tmp_path, "QC", ("BC",), clock=clock) as qc:
        short = await bc.submit(obs(SHORT, tlp="GREEN"))
        kept = await bc.submit(obs(LONG, tlp="CLEAR"))
        entries = [verify_entry(raw) for raw in await _own_range(bc)]
        assert [e.expires_ms for e in entries] == [
            int(T0 * 1000) + HOUR_MS, int(T0 * 1000) + 3 * 365 * 24 * HOUR_MS]
        await qc.node.ledger.ingest(entries)
        for api in (bc, qc):
            assert SHORT in await _taxii_text(api)
            status, _ = await api.call("GET", f"/api/v1/observations/{short['id']}",
                                       scope="read")
            assert status == 200

        # One millisecond before the signed instant nothing goes, on either node.
        now[0] = T0 + 3600 - 0.001
        assert [await bc.node.retention.sweep(), await qc.node.retention.sweep()] == [0, 0]
        now[0] = T0 + 3600
        assert [await bc.node.retention.sweep(), await qc.node.retention.sweep()] == [1, 1]
        assert [await bc.node.retention.sweep(), await qc.node.retention.sweep()] == [0, 0]

        for api in (bc, qc):
            status, body = await api.call("GET", f"/api/v1/observations/{short['id']}",
                                          scope="read")
            assert status == 404, body
            status, _ = await api.call("GET", f"/api/v1/observations/{kept['id']}",
                                       scope="read")
            assert status == 200
            status, listed = await api.call("GET", "/api/v1/observations", scope="read")
            assert status == 200 and SHORT not in str(listed) and LONG in str(listed)
            status, found = await api.call("GET", f"/api/v1/indicators/ipv4-addr/{SHORT}",
                                           scope="read")
            assert status == 200 and found["count"] == 0 and found["observations"] == []
            text = await _taxii_text(api)
            assert SHORT not in text and LONG in text
            report = await api.node.ledger.verify()
            assert report.ok and report.bodies["expired"] == 1, report
            assert report.bodies["present"] == 1
        # Catch-up from either node sends the expired entry header-only, same id.
        raws = await _own_range(bc)
        assert split_entry(raws[0])[1] is None and verify_entry(raws[0]).id == short["id"]
        assert split_entry(raws[1])[1] is not None
        qc_copy = [raw async for chunk in qc.node.ledger.read_range(bc.node.public_key, 1, 2)
                   for raw in chunk]
        assert split_entry(qc_copy[0])[1] is None and split_entry(qc_copy[1])[1] is not None


async def test_retention_sweeper_runs_on_start_and_takes_received_expired_bodies(
        tmp_path: Path) -> None:
    now = [T0]
    with_retention(tmp_path, "BC", "QC", {"observation": {"GREEN": "1h"}})
    async with running_api(tmp_path, "BC", ("QC",), clock=lambda: now[0]) as bc:
        await bc.submit(obs(SHORT, tlp="GREEN"))
        entries = [verify_entry(raw) for raw in await _own_range(bc)]
    # QC was down; it receives the entry after its expiry and starts late: the sweep
    # on start drops it before anyone can read it.
    now[0] = T0 + 7200
    async with running_api(tmp_path, "QC", ("BC",), clock=lambda: now[0]) as qc:
        await qc.node.ledger.ingest(entries)
        await qc.node.retention.sweep()
        status, _ = await qc.call("GET", f"/api/v1/observations/{entries[0].id}", scope="read")
        assert status == 404
    async with running_api(tmp_path, "BC", ("QC",), clock=lambda: now[0]) as bc:
        async def gone() -> bool:
            return (await bc.node.ledger.verify()).bodies.get("expired") == 1

        await wait_for(gone, timeout=5, what="the sweep on start")


async def test_retention_sweeper_wakes_on_a_commit_for_an_earlier_expiry(
        tmp_path: Path) -> None:
    """The sweeper sleeps toward its next expiry (or 60 s); an entry stored meanwhile
    that expires sooner is dropped at its own instant, not at that later wake-up."""
    now = [T0]
    with_retention(tmp_path, "BC", "QC", {"observation": {"GREEN": "1h"}})
    async with running_api(tmp_path, "BC", ("QC",), clock=lambda: now[0]) as bc:
        async def expired() -> int:
            return int((await bc.node.ledger.verify()).bodies.get("expired", 0))

        await bc.submit(obs(LONG, tlp="CLEAR"))  # the sweeper now sleeps 60 s (interval)
        short = await bc.submit(obs(SHORT, tlp="GREEN"))  # expires at T0 + 1h
        now[0] = T0 + 3600
        await bc.submit(obs("198.51.100.79", tlp="CLEAR"))  # any commit wakes it
        await wait_for(expired, timeout=20, what="the sweep at the new expiry", interval=0.1)
        status, _ = await bc.call("GET", f"/api/v1/observations/{short['id']}", scope="read")
        assert status == 404
