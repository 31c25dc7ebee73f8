"""The peer registry (agent/peering/registry.py): trust list and books, no sockets."""

from __future__ import annotations

from agent.peering.links import LinkRegistry
from agent.peering.registry import PeerRegistry, RateLimitedLog, TrustedPeer, read_trust
from protocol.keys import Identity

A, B = Identity(b"a" * 32).public_key, Identity(b"b" * 32).public_key


def _registry(trust: object) -> PeerRegistry:
    return PeerRegistry(trust, LinkRegistry(), clock=lambda: 10.0,  # type: ignore[arg-type]
                        wall_clock=lambda: 1_000.0)


def test_registry_reads_every_trust_shape() -> None:
    assert read_trust([("a", A.text, "http://a")]) == {A: TrustedPeer("a", A, "http://a")}
    assert read_trust(lambda: [TrustedPeer("b", B)]) == {B: TrustedPeer("b", B)}


def test_registry_replace_reports_removed_peers_and_renames_known_ones() -> None:
    current = [("a", A, "http://a"), ("b", B, None)]
    peers = _registry(lambda: current)
    peers.error(A, "idle")
    assert [t.name for t in peers.targets()] == ["a"]  # b has no URL: never dialled
    assert not peers.changed()
    current = [("alpha", A, None)]
    assert peers.changed()
    removed = peers.replace()
    assert removed == {B: TrustedPeer("b", B, None)}
    assert peers.is_trusted(A) and not peers.is_trusted(B)
    assert peers.state(A).name == "alpha" and peers.state(A).errors == {"idle": 1}
    assert list(peers.counters(None)) == ["alpha"]


def test_registry_status_of_a_peer_never_seen() -> None:
    peers = _registry([("a", A, None)])
    status = peers.peer_status(None, B)
    assert status.name == B.fingerprint and not status.connected and status.sessions == 0
    assert [s.name for s in peers.peer_status(None)] == ["a"]
    peers.handshake_failed("refused")
    families = {f.name: f for f in peers.metric_families(None)}
    assert families["entraide_peer_handshake_failures_total"].samples == {("refused",): 1.0}


def test_rate_limited_log_allows_one_line_per_key_per_interval() -> None:
    now = [0.0]
    limit = RateLimitedLog(60.0, lambda: now[0], cap=2)
    assert limit.allow("x") and not limit.allow("x")
    now[0] = 61.0
    assert limit.allow("x")
