"""The restore guard's rules, driven by hand: which peers must be heard, the grace
period, the own head it waits for, and the marker it deletes (the real processes are
in tests/e2e/test_restore.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config.settings import PeerEntry, TrustList
from agent.errors import RestoringError
from agent.node.restore import RestoreGuard
from agent.storage.backup import RESTORED_MARKER
from agent.storage.types import Head
from protocol.keys import PublicKey
from tests.agent._api_helpers import identity

ME = identity("me").public_key
ON = identity("on").public_key
FED = identity("fed").public_key


class Fake:
    """Replication, ledger head and clock under the test's control."""

    def __init__(self) -> None:
        self.heard: dict[PublicKey, int] = {}
        self.own = 3
        self.now = 100.0

    def heads_heard(self, origin: PublicKey) -> dict[PublicKey, int]:
        assert origin == ME
        return dict(self.heard)

    def head(self, origin: PublicKey) -> Head | None:
        return (self.own, b"h" * 32) if self.own else None


def guard(root: Path, fake: Fake, trust: TrustList) -> RestoreGuard:
    names = {ON: "ON", FED: "FED"}
    return RestoreGuard(root, ME, fake.head, lambda: fake,  # type: ignore[arg-type,return-value]
                        lambda: trust, names.get, grace=30.0, clock=lambda: fake.now)


TRUST = TrustList([PeerEntry(name="ON", key=ON, url="http://127.0.0.1:1"),
                   PeerEntry(name="FED", key=FED, url="http://127.0.0.1:2")])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / RESTORED_MARKER).write_text(json.dumps({"restored_ms": 1_700_000_000_000}))
    return tmp_path


def test_restore_guard_without_marker_is_open(tmp_path: Path) -> None:
    g = guard(tmp_path, Fake(), TRUST)
    g.check()
    assert g.status() is None and g.poll()


def test_restore_guard_waits_for_every_dialled_peer_and_the_own_head(root: Path) -> None:
    fake = Fake()
    g = guard(root, fake, TRUST)
    with pytest.raises(RestoringError, match=r"restored.*restauré"):
        g.check()
    assert not g.poll()
    fake.heard = {ON: 7}
    assert not g.poll()  # FED not heard yet
    fake.heard = {FED: 5}  # ON's session ended: what it said still counts
    assert not g.poll()  # both heard, own head 3 < 7
    status = g.status()
    assert status is not None and status["peers_seq"] == 7 and status["own_seq"] == 3
    assert status["peers_heard"] == ["FED", "ON"] and status["restored"] is not None
    fake.own = 7
    assert g.poll()
    g.check()
    assert g.status() is None and not (root / RESTORED_MARKER).exists()


def test_restore_guard_gives_a_down_peer_the_grace_period_only(root: Path) -> None:
    fake = Fake()
    g = guard(root, fake, TRUST)
    fake.heard = {ON: 3}
    assert not g.poll()
    fake.now += 29.0
    assert not g.poll()
    fake.now += 1.0
    assert g.poll()


def test_restore_guard_never_opens_below_a_peer_head_even_after_grace(root: Path) -> None:
    fake = Fake()
    g = guard(root, fake, TRUST)
    fake.heard = {ON: 9}
    fake.now += 3600
    assert not g.poll() and not g.poll()
    with pytest.raises(RestoringError):
        g.check()


def test_restore_guard_with_an_empty_trust_list_opens_at_once(root: Path) -> None:
    assert guard(root, Fake(), TrustList()).poll()
