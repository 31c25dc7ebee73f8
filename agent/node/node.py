"""The node: one object that owns a data dir's identity, ledger, trust list, tokens and
replication, and offers the high-level operations the local API calls.

Life cycle::

    async with Node.open(data_dir) as node:     # or: node = Node(...); await node.start()
        entries = await node.submit_observations([obs], TLP.AMBER, ["ON"])
        ...                                      # node.stop() on exit

Invariants:
- Every background task (trust-list watcher, group committer, replication) is owned by
  the node and awaited by :meth:`Node.stop`; ``stop`` first lets every submission
  already accepted reach the disk, so an acknowledged entry is never lost to shutdown.
- Own entries are written by one *group committer* (agent/node/committer.py): concurrent
  submissions that arrive while a commit is in flight are signed and committed
  together in the next single transaction (one fsync), then each caller gets its own
  entries back, in order. A submission is acknowledged only after that durable commit.
- The trust list, and the names, keys and audiences resolved against it, live in
  :class:`agent.node.membership.Membership` (its invariants are there); the JSON views
  of the node's state in :mod:`agent.node.views`; what the node needs from replication
  in :mod:`agent.node.replication`. The node delegates to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from agent.config.datadir import DataDir, passphrase_from_env
from agent.config.settings import NodeConfig, PeerEntry, TrustList, load_node_config
from agent.config.tokens import TokenStore
from agent.errors import (
    ConfigError,
    NodeStoppingError,
    UnknownEntryError,
    UnknownForkError,
)
from agent.jsoncodec import dumps_bytes
from agent.metrics import MetricFamily, Registry
from agent.node import about, views
from agent.node.aid import NodeAid
from agent.node.author import Author
from agent.node.committer import MAX_QUEUED_ENTRIES, CommitMetrics, GroupCommitter
from agent.node.erasure import NodeErasure
from agent.node.fanout import ObservationFanout, ObservationFeed
from agent.node.keys import KeyRotation
from agent.node.membership import Membership
from agent.node.replication import (
    NullReplication,
    PeerState,
    PeerStatus,
    Replication,
)
from agent.node.restore import RestoreGuard
from agent.node.retention import Sweeper
from agent.node.submission import PreparedSubmission, Submission, drafts
from agent.storage.ledger import (
    ForkRecord,
    Ledger,
    OwnDraft,
    Page,
    VerifyReport,
)
from agent.storage.queries import canonical_indicator, with_names
from agent.workers.batch import BatchWorker
from protocol.entries import TLP, VerifiedEntry
from protocol.envelope import envelope_audience, is_recipient
from protocol.errors import EntraideError
from protocol.keys import Identity, PublicKey
from protocol.payloads import Observation, Payload

__all__ = [
    "ENV_PASSPHRASE",
    "MAX_QUEUED_ENTRIES",
    "Node",
    "NullReplication",
    "PeerState",
    "PeerStatus",
    "PreparedSubmission",
    "Replication",
    "ReplicationFactory",
    "Submission",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ReplicationFactory = Callable[["Node"], Replication]
"""Builds the replicator from the started node (``Node(replication=...)``)."""

ENV_PASSPHRASE = "ENTRAIDE_PASSPHRASE"
"""The environment variable holding the passphrase of a sealed ``node.key``."""
DEFAULT_TRUST_POLL = 1.0


# --- the node -------------------------------------------------------------------------


class Node:
    """A running Entraide node (everything but the HTTP listeners).

    Args:
        data_dir: the node's data dir (``DataDir`` or a path).
        clock: seconds since the epoch; entries carry it in ms.
        randbytes: randomness for envelopes.
        passphrase: for a sealed ``node.key``; default: ``$ENTRAIDE_PASSPHRASE``.
        environ: environment to read the passphrase from (default ``os.environ``).
        replication: builds the replicator from the started node (``None``: no peers).
        trust_poll_interval: seconds between checks of ``peers.toml``.
        registry: metrics registry (a new one by default).
        batch_worker: validates large observation batches in a worker process
            (agent/workers/batch.py; the supervisor's, which owns it: the node does not
            close it); default None: every batch is validated in-process.
    """

    def __init__(
        self,
        data_dir: DataDir | str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
        passphrase: bytes | None = None,
        environ: Mapping[str, str] | None = None,
        replication: ReplicationFactory | None = None,
        trust_poll_interval: float = DEFAULT_TRUST_POLL,
        registry: Registry | None = None,
        batch_worker: BatchWorker | None = None,
    ) -> None:
        self.data_dir = data_dir if isinstance(data_dir, DataDir) else DataDir(Path(data_dir))
        self.clock = clock
        self._randbytes = randbytes
        self._passphrase = passphrase
        self._environ = environ
        self._replication_factory = replication
        self.metrics = registry or Registry()
        self._config: NodeConfig | None = None
        self._identity: Identity | None = None
        self._ledger: Ledger | None = None
        self._tokens: TokenStore | None = None
        self._committer: GroupCommitter | None = None
        self.restore: RestoreGuard | None = None  # set on start (agent/node/restore.py)
        self.keys = KeyRotation(self)  # key rotation, both sides (agent/node/keys.py)
        self._batch_worker = batch_worker
        self._replication: Replication = NullReplication()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopped = False
        self._commit_metrics = CommitMetrics(self.metrics)
        self.members = Membership(self.data_dir, self.metrics, self._trust_applied,
                                  poll_interval=trust_poll_interval)
        self.aid = NodeAid(self, self.metrics)  # mutual aid (agent/node/aid.py)
        # expired bodies dropped on a timer (agent/node/retention.py)
        self.retention = Sweeper(lambda: self.ledger,
                                 lambda: self.config.ledger_path(self.data_dir), self.clock,
                                 self.metrics)
        self.erasure = NodeErasure(self, self.metrics)  # erasure (agent/node/erasure.py)
        # new observations to the stream's subscribers (agent/node/fanout.py)
        self._fanout = ObservationFanout(lambda: self.ledger, self.decorate)
        self.metrics.add_collector(self._collect)

    # -- life cycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, data_dir: DataDir | str | os.PathLike[str],
                   **options: Any) -> AsyncIterator[Node]:
        """Start a node for the ``async with`` block and stop it on exit."""
        node = cls(data_dir, **options)
        await node.start()
        try:
            yield node
        finally:
            await node.stop()

    async def start(self) -> None:
        """Load config and key, open the ledger, start the watcher, committer, replication.

        Raises:
            ConfigError: no node here, a bad entraide.toml or peers.toml, a bad key file.
            PassphraseError: the key is sealed and the passphrase is missing or wrong.
            StorageError: the ledger cannot be opened (in use, newer schema, ...).
        """
        if self._started:
            raise RuntimeError("a node starts once")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        data_dir = self.data_dir
        await asyncio.to_thread(data_dir.require_node)
        self._config = await asyncio.to_thread(load_node_config, data_dir)
        await self.keys.promote()  # a rotation signed in the previous run
        self._identity = await asyncio.to_thread(self._load_identity)
        me = self._identity.public_key
        self.members.know_self(me, self._config.name)
        initial_stamp = await self.members.start()
        self._tokens = TokenStore(data_dir)
        self._ledger = await Ledger.open(
            self._config.ledger_path(data_dir), identity=self._identity,
            is_trusted_origin=self._is_trusted, clock=self.clock,
            trusted_until=self.keys.trusted_until)
        author = Author(self._identity, clock=self.clock, randbytes=self._randbytes,
                        retention=self._config.retention.policy())
        self.restore = RestoreGuard(data_dir.root, me, self._ledger.head, lambda: self._replication,
                                    lambda: self.members.trust, self.name_of)
        self._committer = GroupCommitter(self._ledger, author, self._committed,
                                         gate=self.keys.gate)
        self._committer.start()
        if self._replication_factory is not None:
            self._replication = self._replication_factory(self)
        await self._replication.start()
        self._spawn(self.restore.run(), "entraide-restore-guard")
        self._spawn(self.keys.watch(), "entraide-key-watch")
        self._spawn(self.members.watch(initial_stamp), "entraide-trust-watch")
        self._spawn(self.aid.watch(), "entraide-aid-watch")
        self._spawn(self.retention.run(), "entraide-retention-sweep")
        self._spawn(self.erasure.watch(), "entraide-erasure-watch")
        log.info("node %s started (%s), %d peers in the trust list",
                 self._config.name, me.fingerprint, len(self.trust))

    def _load_identity(self) -> Identity:
        passphrase = self._passphrase
        if passphrase is None and self.data_dir.key_is_sealed():
            try:
                passphrase = passphrase_from_env(ENV_PASSPHRASE, self._environ)
            except ConfigError as exc:
                raise ConfigError(f"{self.data_dir.key_path} is sealed with a passphrase: "
                                  f"set {ENV_PASSPHRASE}") from exc
        return self.data_dir.load_identity(passphrase)

    async def stop(self) -> None:
        """Stop in order: watcher, committer (queued submissions are committed first),
        replication, ledger. Idempotent; safe after a failed :meth:`start`."""
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._fanout.close()
        if self._committer is not None:
            await self._committer.close()
        try:
            await self._replication.stop()
        except Exception:
            log.exception("replication did not stop cleanly")
        if self._ledger is not None:
            await self._ledger.close()
        self.metrics.remove_collector(self._collect)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the node is

    @property
    def config(self) -> NodeConfig:
        return _started(self._config)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def identity(self) -> Identity:
        return _started(self._identity)

    @property
    def public_key(self) -> PublicKey:
        return self.identity.public_key

    @property
    def ledger_path(self) -> Path:
        """The ledger's file (the TAXII index lives beside it)."""
        return self.config.ledger_path(self.data_dir)

    @property
    def ledger(self) -> Ledger:
        return _started(self._ledger)

    @property
    def tokens(self) -> TokenStore:
        return _started(self._tokens)

    @property
    def trust(self) -> TrustList:
        """The trust list in force now."""
        return self.members.trust

    @property
    def replication(self) -> Replication:
        return self._replication

    def _is_trusted(self, key: PublicKey) -> bool:
        return self.keys.trusts(key)

    # Who is who: answered by self.members (agent/node/membership.py has the contracts).

    def name_of(self, key: PublicKey) -> str | None:
        """This node's name for its own key, the trust-list name of a peer, else None."""
        return self.members.name_of(key)

    def name_of_text(self, key_text: str) -> str | None:
        return self.members.name_of_text(key_text)

    def names_by_text(self) -> dict[str, str]:
        return self.members.names_by_text()

    def on_trust_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        return self.members.on_change(listener)

    def key_of(self, name_or_key: str) -> PublicKey:
        """Raises UnknownAudienceError for neither a known name nor a key text."""
        return self.members.key_of(name_or_key)

    def audience_names(self, audience: Sequence[bytes] | None) -> list[str] | None:
        return self.members.audience_names(audience)

    def recipients(self, tlp: TLP, audience: Sequence[str] | None) -> tuple[PublicKey, ...]:
        """Raises UnknownAudienceError (see :meth:`Membership.recipients`)."""
        return self.members.recipients(tlp, audience)

    # -- writing

    async def submit(self, submissions: Sequence[Submission | PreparedSubmission]
                     ) -> list[VerifiedEntry]:
        """Sign and durably commit own entries, in order; one transaction per round.

        All or nothing: audiences are resolved before anything is written, and the
        submission is committed in one transaction.

        Raises:
            UnknownAudienceError: a bad audience (nothing written).
            OversizeError: more than ``MAX_APPEND_BATCH`` entries.
            StorageError: the write failed or the node is stopping.
        """
        return await _started(self._committer).submit(drafts(submissions, self.recipients))

    async def submit_sealed(self, payload: Payload, tlp: TLP,
                            recipients: tuple[PublicKey, ...]) -> VerifiedEntry:
        """Sign and durably commit one own entry sealed to ``recipients`` (keys): a reply
        that follows another entry's audience (agent/node/aid.py).

        Raises:
            StorageError: the write failed or the node is stopping.
        """
        (entry,) = await _started(self._committer).submit([OwnDraft(payload, TLP(tlp),
                                                                    recipients)])
        return entry

    async def prepare_batch(self, body: bytes) -> list[PreparedSubmission] | None:
        """A large ``{"observations": [...]}`` request body parsed, validated and encoded
        in the batch worker (agent/workers/batch.py), ready for :meth:`submit`.

        Returns:
            None when there is no worker, the body is small, the worker is not
            running, or the body is not a valid batch: the caller validates it
            in-process (and reports why).
        """
        if self._batch_worker is None:
            return None
        prepared = await self._batch_worker.prepare(body)
        if prepared is None:
            return None
        tlps = TLP._value2member_map_
        return [PreparedSubmission(p, tlps[tlp], audience)  # type: ignore[arg-type]
                for p, tlp, audience in prepared]

    async def submit_observations(self, observations: Sequence[Observation], tlp: TLP,
                                  audience: Sequence[str] | None = None) -> list[VerifiedEntry]:
        """Submit observations sharing one TLP and audience. See :meth:`submit`."""
        names = None if audience is None else tuple(audience)
        return await self.submit([Submission(o, TLP(tlp), names) for o in observations])

    async def retract(self, entry_id: str, reason: str | None = None) -> VerifiedEntry:
        """Retract one of this node's own entries (agent/node/about.py has the rules)."""
        return await about.retract(self, entry_id, reason)

    async def add_sighting(self, of_id: str, *, count: int = 1, seen_at: datetime | None = None,
                           note: str | None = None, tlp: TLP | None = None,
                           audience: Sequence[str] | None = None) -> VerifiedEntry:
        """Record a sighting of entry ``of_id`` (agent/node/about.py has the rules)."""
        return await about.add_sighting(self, of_id, count=count, seen_at=seen_at, note=note,
                                        tlp=tlp, audience=audience)

    async def submit_drafts(self, drafts: Sequence[OwnDraft]) -> list[VerifiedEntry]:
        """Sign and commit ready drafts through the group committer (acknowledged once
        durable)."""
        return await _started(self._committer).submit(list(drafts))

    async def readable_entry(self, entry_id: str) -> VerifiedEntry:
        """The entry ``entry_id`` when this node can read it.

        Raises:
            UnknownEntryError: no such entry readable here.
        """
        entry_id = entry_id.lower() if isinstance(entry_id, str) else ""
        if len(entry_id) != 64 or any(c not in "0123456789abcdef" for c in entry_id):
            raise UnknownEntryError(f"no entry {entry_id[:64]!r}")
        entry = await self.ledger.get_entry(entry_id)
        if entry is None or not self.can_read(entry):
            raise UnknownEntryError(f"no entry {entry_id}")
        return entry

    def can_read(self, entry: VerifiedEntry) -> bool:
        """True for plaintext entries and for envelopes sealed to this node (the
        header's audience is blinded: one X25519 tells, docs/protocol.md §4)."""
        if not entry.tlp.encrypted:
            return True
        return (entry.body is not None and entry.audience is not None
                and is_recipient(entry.body, entry.audience, _started(self._identity)))

    def audience_of(self, entry: VerifiedEntry) -> tuple[bytes, ...] | None:
        """The real key ids of an encrypted entry's audience, read inside its envelope
        (the header carries blinded ids, docs/protocol.md §4): None for a plaintext
        entry, ``()`` for one this node cannot open (not a recipient, body gone)."""
        if not entry.tlp.encrypted:
            return None
        if entry.body is None or entry.audience is None:
            return ()
        try:
            ids, _ = envelope_audience(entry.body, entry.audience, _started(self._identity))
        except EntraideError:
            return ()
        return ids

    def _committed(self, entries: list[VerifiedEntry], submissions: int) -> None:
        self._commit_metrics.committed(len(entries), submissions)
        try:
            self._replication.publish(entries)
        except Exception:
            # Anti-entropy will carry them; a replication bug must not fail a commit.
            log.exception("replication did not take %d new entries", len(entries))

    # -- reading

    def decorate(self, observation: dict[str, Any]) -> dict[str, Any]:
        """Add ``origin_name`` to an observation dict from the ledger (in place)."""
        return views.decorate(self, observation)

    async def list_observations(self, **filters: Any) -> Page:
        """The ledger's list with ``origin_name`` on every item."""
        page = await self.ledger.list_observations(**filters)
        for item in page.items:
            self.decorate(item)
        return page

    async def get_observation(self, entry_id: str) -> dict[str, Any]:
        """One readable observation with ``origin_name``, ``audience`` (names) and
        ``verified`` (its bytes re-checked now).

        Raises:
            UnknownEntryError: unknown, not an observation, or not readable here.
            ErasedError: its origin erased it (only the header is kept).
        """
        if not isinstance(entry_id, str) or len(entry_id) != 64:
            raise UnknownEntryError("no such observation")
        result = await self.ledger.get_observation(entry_id.lower())
        if result is None:
            await self.erasure.check_erased(entry_id.lower())  # 410 once erased
            raise UnknownEntryError(f"no observation {entry_id}")
        entry = await self.ledger.get_entry(result["id"])
        result["audience"] = None if entry is None else self.audience_names(
            self.audience_of(entry))
        return self.decorate(result)

    async def indicator(self, type: str, value: str) -> dict[str, Any]:
        """Everything known about one indicator; ``origins`` as names where known.

        Raises:
            PayloadError: unknown type or invalid value.
        """
        return with_names(await self.ledger.indicator(type, value), self.name_of_text)

    async def indicator_json(self, type: str, value: str) -> bytes:
        """:meth:`indicator` as the API's JSON, answered in-process (the fall-back of
        the read lane's readers, agent/workers/read_lane.py, which answer the same bytes).

        Raises:
            PayloadError: unknown type or invalid value.
        """
        canonical = canonical_indicator(type, value)
        return dumps_bytes(await self.indicator(*canonical))

    def subscribe(self, maxsize: int = 16_384) -> ObservationFeed:
        """Follow new readable observations: a bounded feed shared-encoded with every
        other subscriber's (:class:`agent.node.fanout.ObservationFeed`; close it when done).

        Raises:
            StorageError: too many subscribers, or the node is stopping.
        """
        return self._fanout.subscribe(maxsize)

    async def verify_ledger(self) -> VerifyReport:
        return await self.ledger.verify()

    async def status(self) -> dict[str, Any]:
        """Name, key, fingerprint, peers (connected, last seen), ledger counts, forks
        (:func:`agent.node.views.status`)."""
        return await views.status(self)

    # -- forks

    def fork_json(self, record: ForkRecord) -> dict[str, Any]:
        """A fork record as the API shows it; ``proof`` (base64url) verifies alone."""
        return views.fork_json(self, record)

    async def forks(self) -> list[dict[str, Any]]:
        """Every fork the ledger recorded, oldest first (:meth:`fork_json`)."""
        return [self.fork_json(r) for r in await self.ledger.forks()]

    async def clear_fork(self, origin: PublicKey) -> dict[str, Any]:
        """Lift ``origin``'s quarantine after a fork (an admin's decision): the ledger
        accepts its entries again, then replication requests them from the head on.
        The proofs stay as evidence; the same conflict seen again quarantines nothing.
        Idempotent.

        Returns:
            The origin's latest fork record (:meth:`fork_json`), now cleared.

        Raises:
            UnknownForkError: the ledger holds no fork proof for ``origin``.
            StorageError: the ledger write failed (nothing changed).
        """
        if not any(r.origin == origin for r in await self.ledger.forks()):
            raise UnknownForkError(f"no fork recorded for origin {origin.text}")
        if await self.ledger.clear_fork(origin):
            log.warning("fork of origin %s (%s) cleared by an admin: its entries are "
                        "accepted again", self.name_of(origin) or "?", origin.text)
        try:
            await self._replication.clear_fork(origin)
        except Exception:
            log.exception("replication did not take the cleared fork")
        records = [r for r in await self.ledger.forks() if r.origin == origin]
        return self.fork_json(records[-1])

    # -- the trust list

    def peer_json(self, peer: PeerEntry) -> dict[str, Any]:
        """A trust-list entry with its fingerprint and replication state."""
        return views.peer_json(self, peer)

    def peers(self) -> list[dict[str, Any]]:
        return [self.peer_json(p) for p in self.members.trust]

    def peer(self, name: str) -> PeerEntry:
        """Raises UnknownPeerError when no entry has that name."""
        return self.members.peer(name)

    async def add_peer(self, entry: PeerEntry) -> PeerEntry:
        """Trust ``entry`` now (:meth:`Membership.add_peer`)."""
        return await self.members.add_peer(entry)

    async def remove_peer(self, name: str) -> PeerEntry:
        """Stop trusting ``name`` now: its sessions end and its later entries are
        refused (:meth:`Membership.remove_peer`)."""
        return await self.members.remove_peer(name)

    def _trust_applied(self, old: TrustList, new: TrustList) -> None:
        # Membership's hook, run before the listeners: a removed peer's held entries
        # go, and replication ends its sessions.
        for gone in old:
            if gone.key not in new and self._ledger is not None:
                self._ledger.drop_held(gone.key)
        try:
            self._replication.update_trust(new)
        except Exception:
            log.exception("replication did not take the new trust list")

    # -- metrics

    def _collect(self) -> Iterable[MetricFamily]:
        families: list[MetricFamily] = []
        if self._ledger is not None and not self._stopped:
            families += views.ledger_families(self._ledger.counts())
        families += views.trust_families(self.members.trust, self._replication,
                                         self.members.file_error)
        families.extend(self._replication.metric_families())
        return families


def _started(value: _T | None) -> _T:
    if value is None:
        raise NodeStoppingError("the node is not started")
    return value
