"""Personal-data indicator types against a real node and API: AMBER when no TLP is
given (an explicit TLP is taken as given), a shorter default retention signed in the
header, and the value never in the node's log, its metrics or an error body."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from protocol.entries import TLP, verify_entry
from protocol.indicators import shown_value
from tests.agent._api_helpers import obs, running_api

VICTIM = "jeanne.victime@example.org"
BAD = "jeanne.victime.example.org"  # not an address: its error must not quote it
DAY_MS = 86_400_000


async def test_personal_data_defaults_to_amber_and_never_shows_the_value(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_api(tmp_path, "QC", ("ON",)) as qc:
        implicit = await qc.submit(obs(VICTIM, "email-addr"))
        explicit = await qc.submit(obs(VICTIM, "email-addr", tlp="GREEN"))
        plain = await qc.submit(obs("203.0.113.9"))
        status, batch = await qc.call("POST", "/api/v1/observations", scope="write",
                                      json_body={"observations": [obs(VICTIM, "email-addr")]})
        assert status == 201, batch
        entries = {}
        for item_id in (implicit["id"], explicit["id"], plain["id"], batch["ids"][0]):
            raw = await qc.node.ledger.get_entry(item_id)
            assert raw is not None
            entries[item_id] = raw
        assert entries[implicit["id"]].tlp is TLP.AMBER
        assert entries[batch["ids"][0]].tlp is TLP.AMBER
        assert entries[explicit["id"]].tlp is TLP.GREEN
        assert entries[plain["id"]].tlp is TLP.GREEN
        # Shorter retention: 180 days for personal data, 3 years for other GREEN data.
        e = entries[explicit["id"]]
        assert e.expires_ms == e.ts + 180 * DAY_MS
        p = entries[plain["id"]]
        assert p.expires_ms == p.ts + 3 * 365 * DAY_MS
        assert verify_entry(e.raw).expires_ms == e.expires_ms

        status, error = await qc.call("POST", "/api/v1/observations", scope="write",
                                      json_body=obs(BAD, "email-addr"))
        assert status == 422
        assert BAD not in str(error) and "victime" not in str(error)
        assert shown_value("email-addr", BAD) in str(error)
        status, found = await qc.call("GET", f"/api/v1/indicators/email-addr/{VICTIM}",
                                      scope="read")
        assert status == 200 and found["count"] == 3
        status, metrics = await qc.call("GET", "/metrics", scope="admin")
        assert status == 200 and "victime" not in str(metrics)
    # The node's own loggers at DEBUG (entraide run keeps aiosqlite at INFO and has no
    # access log: agent/daemon.py).
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if not r.name.startswith(("aiosqlite", "aiohttp.access")))
    assert logged and "victime" not in logged


def test_personal_data_shown_value_redacts_only_personal_types() -> None:
    assert shown_value("email-addr", VICTIM).startswith("<redacted sha256:")
    assert VICTIM not in shown_value("email-addr", VICTIM)
    assert shown_value("email-addr", VICTIM) == shown_value("email-addr", VICTIM)
    assert shown_value("ipv4-addr", "203.0.113.9") == "'203.0.113.9'"
