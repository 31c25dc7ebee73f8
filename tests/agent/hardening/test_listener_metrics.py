"""The listener-limit figures the alert rules read (deploy/prometheus): open descriptors
against the open-file limit, and refused-handshake log lines the rate limiter held back
(issue 17: a flood must show on a dashboard, not only in a log it no longer floods)."""

from __future__ import annotations

import resource
from pathlib import Path

from agent.metrics import MetricFamily
from agent.peering.limits import AcceptErrorLog, open_fds
from agent.peering.links import LinkRegistry
from agent.peering.registry import PeerRegistry


def _values(families: list[MetricFamily]) -> dict[str, float]:
    return {f.name: v for f in families for v in f.samples.values()}


def test_open_fds_and_limit_are_exported(tmp_path: Path) -> None:
    before = open_fds()
    assert before > 0
    files = [(tmp_path / f"f{i}").open("w") for i in range(5)]
    try:
        values = _values(AcceptErrorLog().metric_families())
        assert values["entraide_process_open_fds"] >= before + 5
    finally:
        for f in files:
            f.close()
    assert values["entraide_process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert values["entraide_listener_accept_errors_total"] == 0


def test_suppressed_refusal_log_lines_are_counted() -> None:
    peers = PeerRegistry(lambda: [], LinkRegistry(), clock=lambda: 10.0,
                         wall_clock=lambda: 1_000.0)

    def suppressed() -> float:
        return _values(peers.metric_families(None))["entraide_peer_log_lines_suppressed_total"]

    assert suppressed() == 0
    assert peers.refusal_log.allow(("127.0.0.2", "refused"))
    for _ in range(25):  # the same address and kind within the minute
        assert not peers.refusal_log.allow(("127.0.0.2", "refused"))
    assert suppressed() == 25
