"""Backoff, dial loops and the one-session-per-pair registry (no gossip involved)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from agent.peering.dialer import Backoff, Dialer, DialTarget, peer_endpoint
from agent.peering.links import LinkRegistry, PeerLink
from protocol.keys import Identity
from protocol.session import CloseReason, Session


def _rand(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    backoff = Backoff(0.5, 30.0, _rand(1))
    delays = [backoff.next_delay() for _ in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30.0
    assert delays[-1] >= 15.0


def test_backoff_reset_starts_again_from_initial() -> None:
    backoff = Backoff(0.5, 30.0, _rand(2))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_backoff_jitter_differs_between_dialers() -> None:
    a = Backoff(1.0, 30.0, _rand(3))
    b = Backoff(1.0, 30.0, _rand(4))
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]


def test_backoff_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


def test_peer_endpoint_maps_http_to_ws_and_appends_path() -> None:
    assert peer_endpoint("http://127.0.0.1:8471") == "ws://127.0.0.1:8471/peer/v1"
    assert peer_endpoint("https://qc.example/") == "wss://qc.example/peer/v1"
    assert peer_endpoint("https://qc.example/base") == "wss://qc.example/base/peer/v1"
    assert peer_endpoint("http://h:1/peer/v1") == "ws://h:1/peer/v1"


def _target(seed: int, name: str = "P") -> DialTarget:
    return DialTarget(name, Identity(bytes([seed]) * 32).public_key, "http://127.0.0.1:1")


async def test_dialer_retries_failed_dials_with_growing_delays() -> None:
    attempts: list[float] = []
    enough = asyncio.Event()

    async def connect(target: DialTarget) -> bool:
        attempts.append(time.monotonic())
        if len(attempts) >= 4:
            enough.set()
        return False

    async def never(key):  # pragma: no cover - never connected here
        await asyncio.Event().wait()

    dialer = Dialer(connect, lambda key: False, never, initial=0.01, cap=0.08,
                    clock=time.monotonic, randbytes=_rand(5))
    dialer.update([_target(1)])
    await asyncio.wait_for(enough.wait(), 10)
    await dialer.stop()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Equal jitter: each gap is at least half its ceiling (0.005, 0.01, 0.02 ...).
    assert all(gap >= 0.004 for gap in gaps)
    assert len(dialer.targets()) == 0


async def test_dialer_waits_while_connected_and_stops_dialing_removed_peers() -> None:
    calls: list[str] = []
    connected = {"P": True}
    released = asyncio.Event()

    async def connect(target: DialTarget) -> bool:
        calls.append(target.name)
        await asyncio.sleep(0)
        return False

    async def wait_disconnected(key) -> None:
        await released.wait()
        connected["P"] = False

    target = _target(1)
    dialer = Dialer(connect, lambda key: connected["P"], wait_disconnected, initial=0.01,
                    cap=0.02, clock=time.monotonic, randbytes=_rand(6))
    dialer.update([target])
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert calls == []  # connected: no dial
    released.set()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert calls
    dialer.update([])  # removed from the trust list: its loop ends
    await asyncio.sleep(0.05)
    count = len(calls)
    await asyncio.sleep(0.1)
    assert len(calls) == count
    await dialer.stop()


def _established_pair(initiator: Identity, responder: Identity) -> tuple[Session, Session]:
    """Two sessions run through a full handshake in memory."""
    i = Session(initiator, initiator=True, is_trusted=lambda k: True,
                ephemeral_seed=random.randbytes(32))
    r = Session(responder, initiator=False, is_trusted=lambda k: True,
                ephemeral_seed=random.randbytes(32))
    (hello,) = i.start()
    r.receive(hello)
    (reply,) = r.frames_to_send()
    i.receive(reply)
    (finish,) = i.frames_to_send()
    r.receive(finish)
    return i, r


class _FakeWS:
    closed = False


def _links_for(me: Identity, peer: Identity) -> tuple[PeerLink, PeerLink]:
    """The two links ``me`` holds after a simultaneous dial with ``peer``."""
    mine_out, _ = _established_pair(me, peer)
    _, mine_in = _established_pair(peer, me)
    out = PeerLink(_FakeWS(), mine_out, outbound=True, peer=peer.public_key)  # type: ignore[arg-type]
    inn = PeerLink(_FakeWS(), mine_in, outbound=False, peer=peer.public_key)  # type: ignore[arg-type]
    return out, inn


@pytest.mark.parametrize("order", ["out-first", "in-first"])
async def test_registry_simultaneous_dial_keeps_the_lower_keys_connection(order: str) -> None:
    a, b = Identity(b"\x01" * 32), Identity(b"\x02" * 32)
    low, high = sorted([a, b], key=lambda i: i.public_key.raw)
    # On the low node, its outbound link must win; on the high node, its inbound one.
    for me, peer, expect_outbound in ((low, high, True), (high, low, False)):
        registry = LinkRegistry()
        out, inn = _links_for(me, peer)
        first, second = (out, inn) if order == "out-first" else (inn, out)
        assert registry.admit(first) is None
        loser = registry.admit(second)
        keep = registry.active(peer.public_key)
        assert keep is not None and keep.outbound is expect_outbound
        assert loser is not keep and loser in (out, inn)
        assert registry.discard(loser) is False
        assert registry.is_connected(peer.public_key)


async def test_registry_same_initiator_newer_link_replaces_stale_one() -> None:
    me, peer = Identity(b"\x03" * 32), Identity(b"\x04" * 32)
    registry = LinkRegistry()
    old = PeerLink(_FakeWS(), _established_pair(me, peer)[0], outbound=True,  # type: ignore[arg-type]
                   peer=peer.public_key)
    new = PeerLink(_FakeWS(), _established_pair(me, peer)[0], outbound=True,  # type: ignore[arg-type]
                   peer=peer.public_key)
    assert registry.admit(old) is None
    assert registry.admit(new) is old
    assert registry.active(peer.public_key) is new


async def test_registry_wait_disconnected_returns_when_active_link_goes() -> None:
    me, peer = Identity(b"\x05" * 32), Identity(b"\x06" * 32)
    registry = LinkRegistry()
    link = PeerLink(_FakeWS(), _established_pair(me, peer)[0], outbound=True,  # type: ignore[arg-type]
                    peer=peer.public_key)
    registry.add(link)
    registry.admit(link)
    waiter = asyncio.create_task(registry.wait_disconnected(peer.public_key))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert registry.discard(link) is True
    await asyncio.wait_for(waiter, 5)
    assert not registry.is_connected(peer.public_key)
    assert CloseReason.DUPLICATE_SESSION  # the reason the replicator sends the loser
