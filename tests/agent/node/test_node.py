"""The Node: life cycle, key loading, audiences, group commit, retractions, the live
trust list and the replication hooks. Real data dirs, real ledger files, real keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id
import pytest

from agent.config.datadir import DataDir, atomic_write
from agent.config.settings import (
    NodeConfig,
    PeerEntry,
    TrustList,
    create_node,
    edit_trust_list,
    load_trust_list,
    save_trust_list,
)
from agent.errors import (
    AlreadyRetractedError,
    ConfigError,
    DuplicatePeerError,
    NotOwnEntryError,
    StorageError,
    UnknownAudienceError,
    UnknownEntryError,
    UnknownForkError,
    UnknownPeerError,
)
from agent.metrics import MetricFamily, parse_text
from agent.node.author import Author
from agent.node.committer import GroupCommitter
from agent.node.node import Node, PeerStatus, Replication, Submission
from agent.storage.ledger import OwnDraft
from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.errors import EncodingError, PassphraseError
from protocol.keys import PublicKey
from protocol.payloads import Observation, encode_payload
from tests.agent._api_helpers import identity, ip, make_data_dir

WAIT = 20.0  # a guard against hanging, not a latency requirement


def observation(n: int = 1) -> Observation:
    return Observation(type="ipv4-addr", value=ip(n))


class FakeReplication:
    """Records what the node asks of replication."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.started = self.stopped = False
        self.published: list[VerifiedEntry] = []
        self.trust_updates: list[TrustList] = []
        self.cleared: list[PublicKey] = []

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def publish(self, entries: Sequence[VerifiedEntry]) -> None:
        self.published.extend(entries)

    def update_trust(self, trust: TrustList) -> None:
        self.trust_updates.append(trust)

    def peer_status(self, key: PublicKey) -> PeerStatus:
        return PeerStatus(connected=key == identity("ON").public_key, last_seen_ms=86_400_000)

    async def clear_fork(self, origin: PublicKey) -> None:
        self.cleared.append(origin)

    def metric_families(self) -> Iterable[MetricFamily]:
        return [MetricFamily("entraide_replication_entries_in_total", "Entries received.",
                             "counter", ("peer",), {("ON",): 3})]


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return make_data_dir(tmp_path, "QC", ("ON", "FED"))


async def wait_until(condition: Any) -> None:
    async def loop() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), WAIT)


# --- life cycle -------------------------------------------------------------------------


async def test_node_open_starts_and_stop_leaves_no_task_behind(data_dir: DataDir) -> None:
    before = asyncio.all_tasks()
    replications: list[FakeReplication] = []

    def factory(node: Node) -> Replication:
        replications.append(FakeReplication(node))
        return replications[0]

    async with Node.open(data_dir, replication=factory) as node:
        assert node.name == "QC" and node.public_key == identity("QC").public_key
        assert [p.name for p in node.trust] == ["ON", "FED"]
        assert replications[0].started
    assert replications[0].stopped
    assert asyncio.all_tasks() == before
    with pytest.raises(StorageError, match="closed"):
        await node.ledger.stream_position()


async def test_node_start_without_a_node_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="entraide init"):
        async with Node.open(tmp_path / "nothing"):
            pass


async def test_sealed_key_needs_the_passphrase_from_the_environment(tmp_path: Path) -> None:
    dd = DataDir(tmp_path / "sealed")
    create_node(dd, NodeConfig(name="QC"), identity("QC"), b"correct horse",
                opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
                memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN)
    with pytest.raises(ConfigError, match="ENTRAIDE_PASSPHRASE"):
        async with Node.open(dd, environ={}):
            pass
    with pytest.raises(PassphraseError):
        async with Node.open(dd, environ={"ENTRAIDE_PASSPHRASE": "wrong"}):
            pass
    async with Node.open(dd, environ={"ENTRAIDE_PASSPHRASE": "correct horse"}) as node:
        assert node.public_key == identity("QC").public_key


async def test_stop_commits_every_submission_already_accepted(data_dir: DataDir) -> None:
    node = Node(data_dir)
    await node.start()
    pending = [asyncio.ensure_future(node.submit_observations([observation(i)], TLP.GREEN))
               for i in range(20)]
    await asyncio.sleep(0)  # let them enqueue
    await node.stop()
    results = await asyncio.gather(*pending)
    assert sorted(e.seq for r in results for e in r) == list(range(1, 21))
    async with Node.open(data_dir) as again:
        assert again.ledger.counts().entries == 20


# --- audiences --------------------------------------------------------------------------


async def test_recipients_follow_the_tlp_rules(data_dir: DataDir) -> None:
    async with Node.open(data_dir) as node:
        me, on, fed = (identity(n).public_key for n in ("QC", "ON", "FED"))
        assert node.recipients(TLP.GREEN, None) == ()
        assert node.recipients(TLP.CLEAR, None) == ()
        assert set(node.recipients(TLP.AMBER, None)) == {me, on, fed}
        assert set(node.recipients(TLP.AMBER_STRICT, None)) == {me, on, fed}
        assert set(node.recipients(TLP.RED, ["ON"])) == {me, on}
        assert set(node.recipients(TLP.RED, ["on", "QC", "ON"])) == {me, on}
        for tlp, audience, fragment in ((TLP.RED, None, "explicit audience"),
                                        (TLP.RED, [], "empty"),
                                        (TLP.AMBER, ["ON", "XX"], "'XX'"),
                                        (TLP.GREEN, ["ON"], "only to AMBER")):
            with pytest.raises(UnknownAudienceError, match=fragment):
                node.recipients(tlp, audience)


async def test_submit_with_an_unknown_audience_writes_nothing(data_dir: DataDir) -> None:
    async with Node.open(data_dir) as node:
        with pytest.raises(UnknownAudienceError):
            await node.submit([Submission(observation(1)),
                               Submission(observation(2), TLP.RED, ("NOBODY",))])
        assert node.ledger.counts().entries == 0


async def test_amber_entry_is_readable_by_its_audience_only(data_dir: DataDir) -> None:
    async with Node.open(data_dir) as node:
        (entry,) = await node.submit_observations([observation()], TLP.RED, ["ON"])
        assert entry.audience is not None and len(entry.audience) == 2
        # Blinded ids in the header (docs/protocol.md §4): no real key id appears.
        real = {identity(n).public_key.key_id for n in ("ON", "QC", "FED")}
        assert not set(entry.audience) & real
        assert node.can_read(entry)
        assert sorted(node.audience_names(node.audience_of(entry)) or []) == ["ON", "QC"]
        shown = await node.get_observation(entry.id)
        assert shown["origin_name"] == "QC" and shown["verified"] is True


# --- group commit -----------------------------------------------------------------------


async def test_concurrent_submissions_share_commits_and_keep_their_order(
        data_dir: DataDir) -> None:
    async with Node.open(data_dir) as node:
        batches = [[observation(16 * k + i) for i in range(k % 3 + 1)] for k in range(16)]
        results = await asyncio.gather(
            *(node.submit_observations(b, TLP.GREEN) for b in batches))
        for batch, entries in zip(batches, results, strict=True):
            assert len(entries) == len(batch)
            assert [e.seq for e in entries] == list(range(entries[0].seq,
                                                          entries[0].seq + len(batch)))
        seqs = sorted(e.seq for r in results for e in r)
        assert seqs == list(range(1, len(seqs) + 1))
        samples = parse_text(node.metrics.render())
        commits = samples["entraide_commit_submissions_count"][()]
        assert samples["entraide_commit_submissions_sum"][()] == 16
        assert commits < 16  # coalesced: fewer fsyncs than submissions


async def test_one_bad_submission_does_not_fail_the_ones_grouped_with_it(
        data_dir: DataDir) -> None:
    async with Node.open(data_dir) as node:
        committed: list[int] = []
        committer = GroupCommitter(node.ledger, Author(identity("QC")),
                                    lambda entries, n: committed.append(n))
        committer.start()
        try:
            good = OwnDraft(observation(1), TLP.GREEN)
            bad = OwnDraft(observation(2), TLP.GREEN, (identity("ON").public_key,))
            results = await asyncio.gather(committer.submit([good]), committer.submit([bad]),
                                           committer.submit([good]), return_exceptions=True)
        finally:
            await committer.close()
        assert isinstance(results[1], EncodingError)
        assert [e.seq for r in (results[0], results[2]) for e in r] == [1, 2]  # type: ignore[union-attr]
        assert node.ledger.counts().entries == 2


class _GatedStore:
    """Wraps the author's sign and the ledger's store_own: records what is signed after
    which head, holds the first store until released, and fails it if asked to."""

    def __init__(self, node: Node, monkeypatch: pytest.MonkeyPatch, *, fail: bool) -> None:
        self.ledger = node.ledger
        self.real_store = self.ledger.store_own
        self.signed: list[tuple[Any, list[int]]] = []
        self.stores: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail = fail
        self.changed = asyncio.Condition()
        real_sign = Author.sign

        async def sign(author: Author, drafts: Any, head: Any) -> Any:
            return await self.sign_own(real_sign(author, drafts, head), head)

        monkeypatch.setattr(Author, "sign", sign)
        monkeypatch.setattr(self.ledger, "store_own", self.store_own)

    async def sign_own(self, signing: Any, head: Any) -> Any:
        built = await signing
        async with self.changed:
            self.signed.append((head, [e.seq for e, _ in built]))
            self.changed.notify_all()
        return built

    async def store_own(self, built: Any) -> Any:
        async with self.changed:
            self.stores.append([e.seq for e, _ in built])
            self.changed.notify_all()
        if len(self.stores) == 1:
            await self.release.wait()
            if self.fail:
                raise StorageError("ledger write failed: disk I/O error")
        return await self.real_store(built)

    async def until(self, check: Any) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(check), WAIT)

    async def two_rounds(self, node: Node) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
        """Submit observation 1, then 2 and 3 once 1 is being stored; return both
        submissions once the second round is signed (the first still held)."""
        first = asyncio.ensure_future(node.submit_observations([observation(1)], TLP.GREEN))
        await self.until(lambda: self.stores == [[1]])
        second = asyncio.ensure_future(
            node.submit_observations([observation(2), observation(3)], TLP.GREEN))
        await self.until(lambda: len(self.signed) == 2)
        assert self.signed[1][1] == [2, 3]
        return first, second


async def test_next_round_is_signed_while_the_previous_one_commits(
        data_dir: DataDir, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Node.open(data_dir) as node:
        gate = _GatedStore(node, monkeypatch, fail=False)
        first, second = await gate.two_rounds(node)  # round two chained after round one
        assert not first.done() and not second.done()  # nothing acknowledged before its commit
        assert node.ledger.head(node.public_key) is None  # round one not yet stored
        gate.release.set()
        (one,) = await asyncio.wait_for(first, WAIT)
        two, three = await asyncio.wait_for(second, WAIT)
        assert gate.signed[1][0] == (1, one.hash) and two.prev == one.hash
        assert [e.seq for e in (one, two, three)] == [1, 2, 3]
        assert gate.stores == [[1], [2, 3]]
        assert (await node.verify_ledger()).ok


async def test_a_failed_commit_drops_the_round_signed_after_it_and_signs_it_again(
        data_dir: DataDir, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Node.open(data_dir) as node:
        gate = _GatedStore(node, monkeypatch, fail=True)
        # Round two is signed after the entry that will not be stored.
        first, second = await gate.two_rounds(node)
        gate.release.set()
        with pytest.raises(StorageError):
            await asyncio.wait_for(first, WAIT)
        two, three = await asyncio.wait_for(second, WAIT)
        # Signed again after the stored head (none): no gap, no second entry at a seq.
        assert gate.signed[2] == (None, [1, 2])
        assert gate.stores == [[1], [1, 2]]
        assert (two.seq, two.prev, three.prev) == (1, None, two.hash)
        assert node.ledger.head(node.public_key) == (2, three.hash)
        assert node.ledger.counts().entries == 2
        assert (await node.verify_ledger()).ok
        (four,) = await node.submit_observations([observation(4)], TLP.GREEN)
        assert (four.seq, four.prev) == (3, three.hash)


# --- retractions and sightings ----------------------------------------------------------


def _signed_by_on(node: Node) -> VerifiedEntry:
    who = identity("ON")
    head = node.ledger.head(who.public_key)
    seq, prev = (0, None) if head is None else head
    return sign_entry(who, seq=seq + 1, prev=prev, now_ms=1_700_000_000_000, tlp=TLP.GREEN,
                      audience=None, body=encode_payload(observation(99)))


async def _remote_entry(node: Node) -> VerifiedEntry:
    entry = _signed_by_on(node)
    assert (await node.ledger.ingest([entry])).stored == 1
    return entry


async def test_retract_own_only_and_once(data_dir: DataDir) -> None:
    async with Node.open(data_dir) as node:
        (mine,) = await node.submit_observations([observation()], TLP.AMBER, ["FED"])
        theirs = await _remote_entry(node)
        retraction = await node.retract(mine.id, "false positive")
        assert retraction.seq == 2 and retraction.tlp is TLP.AMBER
        # same readers as the retracted entry (blinded afresh in each header)
        assert node.audience_of(retraction) == node.audience_of(mine)
        assert (await node.get_observation(mine.id))["retracted"] is True
        with pytest.raises(AlreadyRetractedError):
            await node.retract(mine.id)
        with pytest.raises(NotOwnEntryError):
            await node.retract(theirs.id)
        with pytest.raises(UnknownEntryError):
            await node.retract("0" * 64)
        assert node.ledger.counts().entries == 3


async def test_sighting_needs_a_readable_entry(data_dir: DataDir) -> None:
    async with Node.open(data_dir) as node:
        theirs = await _remote_entry(node)
        sighting = await node.add_sighting(theirs.id, count=2, note="seen")
        assert sighting.origin == node.public_key
        assert (await node.get_observation(theirs.id))["sightings"] == 1
        with pytest.raises(UnknownEntryError):
            await node.add_sighting("f" * 64)


# --- the trust list ---------------------------------------------------------------------


async def test_peers_added_and_removed_are_persisted_and_applied(data_dir: DataDir) -> None:
    fakes: list[FakeReplication] = []

    def factory(node: Node) -> Replication:
        fakes.append(FakeReplication(node))
        return fakes[-1]

    async with Node.open(data_dir, replication=factory) as node:
        ab = PeerEntry.build(name="AB", key=identity("AB").public_key.text)
        await node.add_peer(ab)
        assert load_trust_list(data_dir).by_name("AB") == ab
        assert identity("AB").public_key in node.trust
        assert fakes[0].trust_updates[-1] == node.trust
        with pytest.raises(DuplicatePeerError):
            await node.add_peer(ab)
        await node.remove_peer("ON")
        assert load_trust_list(data_dir).by_name("ON") is None
        assert identity("ON").public_key not in node.trust
        with pytest.raises(UnknownPeerError):
            await node.remove_peer("ON")
        # A removed peer's entries are refused from now on.
        result = await node.ledger.ingest([_signed_by_on(node)])
        assert (result.stored, result.refused) == (0, 1)


async def test_node_clear_fork_lifts_the_quarantine_in_ledger_and_replication(
        data_dir: DataDir) -> None:
    fakes: list[FakeReplication] = []

    def factory(node: Node) -> Replication:
        fakes.append(FakeReplication(node))
        return fakes[-1]

    on = identity("ON").public_key
    async with Node.open(data_dir, replication=factory) as node:
        with pytest.raises(UnknownForkError):
            await node.clear_fork(on)
        first = await _remote_entry(node)
        twin = sign_entry(identity("ON"), seq=1, prev=None, now_ms=first.ts + 1, tlp=TLP.GREEN,
                          audience=None, body=encode_payload(observation(98)))
        assert (await node.ledger.ingest([twin])).forks == 1
        [listed] = await node.forks()
        assert listed["origin_name"] == "ON" and listed["cleared"] is None
        record = await node.clear_fork(on)
        assert record["seq"] == 1 and record["cleared"] is not None
        assert record["proof"] == listed["proof"]
        assert not node.ledger.is_forked(on) and fakes[0].cleared == [on]
        assert (await node.ledger.ingest([_signed_by_on(node)])).stored == 1


async def test_trust_list_changes_on_disk_are_picked_up(data_dir: DataDir) -> None:
    async with Node.open(data_dir, trust_poll_interval=0.01) as node:
        entry = PeerEntry.build(name="BC", key=identity("BC").public_key.text)
        await asyncio.to_thread(edit_trust_list, data_dir, lambda t: t.with_peer(entry))
        await wait_until(lambda: identity("BC").public_key in node.trust)
        # An invalid file is ignored: the last valid list stays in force.
        atomic_write(data_dir.peers_path, b"[[peer]]\nname = 'broken'\n")
        await wait_until(lambda: parse_text(node.metrics.render())
                         ["entraide_trust_reload_errors_total"][()] >= 1)
        assert [p.name for p in node.trust] == ["ON", "FED", "BC"]
        # ... and said loudly until fixed (issue 17: a removal with a typo did not apply,
        # silently): the status names the problem and a gauge says the file is invalid.
        status = await node.status()
        assert status["trust_file"]["valid"] is False
        assert "peers.toml" in status["trust_file"]["error"]
        assert parse_text(node.metrics.render())["entraide_trust_file_valid"][()] == 0
        # A valid file again: applied whole, and the alarm goes.
        await asyncio.to_thread(save_trust_list, data_dir, node.trust.without("BC"))
        await wait_until(lambda: identity("BC").public_key not in node.trust)
        assert (await node.status())["trust_file"] == {"valid": True, "error": None}
        assert parse_text(node.metrics.render())["entraide_trust_file_valid"][()] == 1


# --- status and replication hooks -------------------------------------------------------


async def test_status_and_metrics_include_replication_state(data_dir: DataDir) -> None:
    async with Node.open(data_dir, replication=FakeReplication) as node:
        entries = await node.submit_observations([observation(1), observation(2)], TLP.GREEN)
        assert node.replication.published == entries  # type: ignore[attr-defined]
        status = await node.status()
        assert status["ledger"]["entries"] == 2
        assert {p["name"]: (p["connected"], p["last_seen"]) for p in status["peers"]} == {
            "ON": (True, "1970-01-02T00:00:00Z"), "FED": (False, "1970-01-02T00:00:00Z")}
        samples = parse_text(node.metrics.render())
        assert samples["entraide_peer_connected"] == {(("peer", "ON"),): 1,
                                                      (("peer", "FED"),): 0}
        assert samples["entraide_replication_entries_in_total"][(("peer", "ON"),)] == 3


async def test_node_uses_the_clock_it_is_given(data_dir: DataDir) -> None:
    async with Node.open(data_dir, clock=lambda: 1_800_000_000.5) as node:
        (entry,) = await node.submit_observations([observation()], TLP.CLEAR)
        assert entry.ts == 1_800_000_000_500


def test_submission_defaults_to_green_without_audience() -> None:
    submission = Submission(observation())
    assert (submission.tlp, submission.audience) == (TLP.GREEN, None)

