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
- The trust list in memory is the last valid ``peers.toml``: changes made through the
  API are written atomically (data-dir lock, temporary file, rename) and applied at
  once; changes made by hand or by the CLI are noticed by polling the file's stamp
  and applied once it has been stable for one poll interval. An invalid file is
  logged and ignored (the previous list stays in force).
- Audience names resolve against the trust list *and* this node's own name; this node
  is always a recipient of its own encrypted entries, so it can read them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from agent.config.datadir import DataDir, FileStamp, file_stamp, passphrase_from_env
from agent.config.settings import (
    NodeConfig,
    PeerEntry,
    TrustList,
    TrustListWatcher,
    edit_trust_list,
    load_node_config,
)
from agent.config.tokens import TokenStore
from agent.errors import (
    AlreadyRetractedError,
    ConfigError,
    NodeStoppingError,
    NotOwnEntryError,
    UnknownAudienceError,
    UnknownEntryError,
    UnknownForkError,
)
from agent.jsoncodec import dumps_bytes
from agent.metrics import Counter, Histogram, MetricFamily, Registry
from agent.node.author import Author
from agent.node.committer import MAX_QUEUED_ENTRIES, GroupCommitter
from agent.storage.ledger import (
    ForkRecord,
    Ledger,
    LedgerCounts,
    OwnDraft,
    Page,
    Subscription,
    VerifyReport,
)
from agent.storage.queries import canonical_indicator, format_ms, with_names
from agent.storage.types import PreparedObservation
from agent.workers.batch import BatchWorker
from protocol.entries import TLP, VerifiedEntry
from protocol.errors import EntraideError
from protocol.keys import Identity, PublicKey, b64url_encode
from protocol.payloads import Observation, Payload, Retraction, Sighting

__all__ = [
    "ENV_PASSPHRASE",
    "MAX_QUEUED_ENTRIES",
    "Node",
    "NullReplication",
    "PeerStatus",
    "PreparedSubmission",
    "Replication",
    "ReplicationFactory",
    "Submission",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ENV_PASSPHRASE = "ENTRAIDE_PASSPHRASE"
"""Own entries waiting for the committer before submitters are made to wait."""
DEFAULT_TRUST_POLL = 1.0


# --- replication interface ------------------------------------------------------------


@dataclass(frozen=True)
class PeerStatus:
    """What replication knows about one peer."""

    connected: bool = False
    last_seen_ms: int | None = None


@runtime_checkable
class Replication(Protocol):
    """What the node needs from the replicator (agent/peering/transport.py's ``Replicator``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, entries: Sequence[VerifiedEntry]) -> None:
        """New own entries, durably committed: push them to peers."""

    def update_trust(self, trust: TrustList) -> None:
        """The trust list changed: end sessions of removed peers, dial new ones."""

    def peer_status(self, key: PublicKey) -> PeerStatus: ...

    async def clear_fork(self, origin: PublicKey) -> None:
        """An admin cleared ``origin``'s fork in the ledger: replicate it again."""

    def metric_families(self) -> Iterable[MetricFamily]:
        """Replication metrics (entries in/out, bytes, duplicates, errors, per peer)."""


ReplicationFactory = Callable[["Node"], Replication]


class NullReplication:
    """No peers: the node works alone (tests, a node with replication disabled)."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def publish(self, entries: Sequence[VerifiedEntry]) -> None:
        return None

    def update_trust(self, trust: TrustList) -> None:
        return None

    def peer_status(self, key: PublicKey) -> PeerStatus:
        return PeerStatus()

    async def clear_fork(self, origin: PublicKey) -> None:
        return None

    def metric_families(self) -> Iterable[MetricFamily]:
        return ()


# --- submissions and the group committer ----------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One own entry to write: a payload, its TLP and its audience (peer names).

    ``audience`` None means: nobody in particular (CLEAR, GREEN), or, for AMBER and
    AMBER+STRICT, every member of the trust list now. RED needs explicit names.
    """

    payload: Payload
    tlp: TLP = TLP.GREEN
    audience: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PreparedSubmission:
    """A :class:`Submission` of an observation validated and encoded in the batch
    worker (agent/api/batch.py; :meth:`Node.prepare_batch`)."""

    payload: PreparedObservation
    tlp: TLP
    audience: tuple[str, ...] | None


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
        self._trust_poll_interval = trust_poll_interval
        self.metrics = registry or Registry()
        self._config: NodeConfig | None = None
        self._identity: Identity | None = None
        self._ledger: Ledger | None = None
        self._tokens: TokenStore | None = None
        self._trust = TrustList()
        self._names_by_text: tuple[TrustList, Identity | None, dict[str, str]] | None = None
        self._watcher: TrustListWatcher | None = None
        self._trust_lock = asyncio.Lock()
        self._trust_listeners: list[Callable[[], None]] = []
        self._committer: GroupCommitter | None = None
        self._batch_worker = batch_worker
        self._replication: Replication = NullReplication()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopped = False
        self._entries_out: Counter = self.metrics.counter(
            "entraide_local_entries_total", "Own entries committed (signed by this node).")
        self._commits: Histogram = self.metrics.histogram(
            "entraide_commit_entries", "Own entries per durable commit (group commit size).",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000))
        self._commit_submitters: Histogram = self.metrics.histogram(
            "entraide_commit_submissions", "Submissions coalesced into one durable commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self._trust_reloads = self.metrics.counter(
            "entraide_trust_reloads_total", "Trust-list changes applied, by source.",
            ("source",))
        self._trust_errors = self.metrics.counter(
            "entraide_trust_reload_errors_total", "Invalid peers.toml seen (change ignored).")
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
        self._identity = await asyncio.to_thread(self._load_identity)
        me = self._identity.public_key
        # Stamp first, list second: a change between the two is seen again, not missed.
        initial_stamp = await asyncio.to_thread(file_stamp, data_dir.peers_path)
        self._watcher = await asyncio.to_thread(
            TrustListWatcher, data_dir, own_key=me, own_name=self._config.name)
        self._trust = self._watcher.current
        self._tokens = TokenStore(data_dir)
        self._ledger = await Ledger.open(
            self._config.ledger_path(data_dir), identity=self._identity,
            is_trusted_origin=self._is_trusted, clock=self.clock)
        author = Author(self._identity, clock=self.clock, randbytes=self._randbytes)
        self._committer = GroupCommitter(self._ledger, author, self._committed)
        self._committer.start()
        if self._replication_factory is not None:
            self._replication = self._replication_factory(self)
        await self._replication.start()
        self._spawn(self._watch_trust(initial_stamp), "entraide-trust-watch")
        log.info("node %s started (%s), %d peers in the trust list",
                 self._config.name, me.fingerprint, len(self._trust))

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
    def ledger(self) -> Ledger:
        return _started(self._ledger)

    @property
    def tokens(self) -> TokenStore:
        return _started(self._tokens)

    @property
    def trust(self) -> TrustList:
        """The trust list in force now."""
        return self._trust

    @property
    def replication(self) -> Replication:
        return self._replication

    def _is_trusted(self, key: PublicKey) -> bool:
        return key in self._trust

    def name_of(self, key: PublicKey) -> str | None:
        """This node's name for its own key, the trust-list name of a peer, else None."""
        if self._identity is not None and key == self._identity.public_key:
            return self.name
        entry = self._trust.by_key(key)
        return None if entry is None else entry.name

    def name_of_text(self, key_text: str) -> str | None:
        """:meth:`name_of` for a key in text form (None if it does not parse)."""
        # Key texts are canonical (one text per key), so an exact match is the same as
        # parsing; parsing costs a point check (~60 us) and lists call this per item.
        return self.names_by_text().get(key_text) if isinstance(key_text, str) else None

    def names_by_text(self) -> dict[str, str]:
        """Key text -> name of this node and every peer in the trust list. The same
        object until the trust list changes (do not modify it)."""
        names = self._names_by_text
        if names is None or names[0] is not self._trust or names[1] is not self._identity:
            table = {p.key.text: p.name for p in self._trust}
            if self._identity is not None and self._config is not None:
                table[self._identity.public_key.text] = self._config.name
            names = self._names_by_text = (self._trust, self._identity, table)
        return names[2]

    def on_trust_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each change of the trust list (from peers.toml or the
        API); returns what removes it."""
        self._trust_listeners.append(listener)
        return lambda: self._trust_listeners.remove(listener)

    def key_of(self, name_or_key: str) -> PublicKey:
        """A peer's key from its name (exact, else ignoring case), this node's name, or
        a key text.

        Raises:
            UnknownAudienceError: none of these.
        """
        if name_or_key.startswith("ed25519:"):
            try:
                return PublicKey.from_text(name_or_key)
            except EntraideError as exc:
                raise UnknownAudienceError(f"bad key {name_or_key[:60]!r}: {exc}") from exc
        return self._resolve_name(name_or_key)

    def _resolve_name(self, name: str) -> PublicKey:
        entry = self._trust.by_name(name)
        if entry is not None:
            return entry.key
        if name == self.name or name.casefold() == self.name.casefold():
            return self.public_key
        folded = name.casefold()
        for peer in self._trust:
            if peer.name.casefold() == folded:
                return peer.key
        raise UnknownAudienceError(f"{name[:70]!r} is not a peer in the trust list "
                                   "nor this node's name")

    def audience_names(self, audience: Sequence[bytes] | None) -> list[str] | None:
        """Names (or key ids in hex) of an entry's audience, for display."""
        if audience is None:
            return None
        by_id = {p.key.key_id: p.name for p in self._trust}
        by_id[self.public_key.key_id] = self.name
        return [by_id.get(kid, kid.hex()) for kid in audience]

    def recipients(self, tlp: TLP, audience: Sequence[str] | None) -> tuple[PublicKey, ...]:
        """The recipients of an own entry (this node always among them when encrypted).

        Raises:
            UnknownAudienceError: an unknown name, RED without audience, an empty
                audience, or an audience on a CLEAR/GREEN entry.
        """
        tlp = TLP(tlp)
        if not tlp.encrypted:
            if audience:
                raise UnknownAudienceError(
                    f"an audience applies only to AMBER, AMBER+STRICT and RED, not {tlp.value}")
            return ()
        if audience is None:
            if tlp is TLP.RED:
                raise UnknownAudienceError("RED needs an explicit audience (peer names)")
            # AMBER without audience: every member known now, and this node.
            return (self.public_key, *(p.key for p in self._trust))
        if not audience:
            raise UnknownAudienceError("the audience is empty")
        keys = [self._resolve_name(name) for name in audience]
        return tuple(dict.fromkeys([self.public_key, *keys]))

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
        # A batch's items nearly all share a TLP and audience: resolve each pair once.
        resolved: dict[tuple[TLP, tuple[str, ...] | None], tuple[TLP, tuple[PublicKey, ...]]] = {}
        drafts = []
        for s in submissions:
            route = resolved.get((s.tlp, s.audience))
            if route is None:
                route = resolved[(s.tlp, s.audience)] = (
                    TLP(s.tlp), self.recipients(s.tlp, s.audience))
            drafts.append(OwnDraft(s.payload, *route))
        return await _started(self._committer).submit(drafts)

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
        """Retract one of this node's own entries. The retraction is sent with the
        target's TLP, to the target's audience members still known.

        Raises:
            UnknownEntryError: no entry with that id this node can read.
            NotOwnEntryError: the entry is another origin's.
            AlreadyRetractedError: it was already retracted.
        """
        entry = await self._readable_entry(entry_id)
        if entry.origin != self.public_key:
            raise NotOwnEntryError("only the origin that wrote an entry can retract it")
        current = await self.ledger.get_observation(entry.id)
        if current is not None and current.get("retracted"):
            raise AlreadyRetractedError(f"{entry.id} is already retracted")
        payload = Retraction(of=entry.id, reason=reason)
        recipients = self._same_audience(entry)
        draft = OwnDraft(payload, entry.tlp, recipients)
        (retraction,) = await _started(self._committer).submit([draft])
        return retraction

    async def add_sighting(self, of_id: str, *, count: int = 1, seen_at: datetime | None = None,
                           note: str | None = None, tlp: TLP = TLP.GREEN,
                           audience: Sequence[str] | None = None) -> VerifiedEntry:
        """Record that this node saw the indicator of entry ``of_id`` (any origin's).

        Raises:
            UnknownEntryError: no readable entry with that id.
            UnknownAudienceError: a bad audience.
            PayloadError/ValidationError: bad count, time or note.
        """
        entry = await self._readable_entry(of_id)
        payload = Sighting(of=entry.id, count=count, seen_at=seen_at, note=note)
        names = None if audience is None else tuple(audience)
        (sighting,) = await self.submit([Submission(payload, TLP(tlp), names)])
        return sighting

    async def _readable_entry(self, entry_id: str) -> VerifiedEntry:
        entry_id = entry_id.lower() if isinstance(entry_id, str) else ""
        if len(entry_id) != 64 or any(c not in "0123456789abcdef" for c in entry_id):
            raise UnknownEntryError(f"no entry {entry_id[:64]!r}")
        entry = await self.ledger.get_entry(entry_id)
        if entry is None or not self.can_read(entry):
            raise UnknownEntryError(f"no entry {entry_id}")
        return entry

    def can_read(self, entry: VerifiedEntry) -> bool:
        """True for plaintext entries and for envelopes sealed to this node."""
        return not entry.tlp.encrypted or self.public_key.key_id in (entry.audience or ())

    def _same_audience(self, entry: VerifiedEntry) -> tuple[PublicKey, ...]:
        if not entry.tlp.encrypted:
            return ()
        ids = set(entry.audience or ())
        return (self.public_key, *(p.key for p in self._trust if p.key.key_id in ids))

    def _committed(self, entries: list[VerifiedEntry], submissions: int) -> None:
        self._entries_out.inc(len(entries))
        self._commits.observe(len(entries))
        self._commit_submitters.observe(submissions)
        try:
            self._replication.publish(entries)
        except Exception:
            # Anti-entropy will carry them; a replication bug must not fail a commit.
            log.exception("replication did not take %d new entries", len(entries))

    # -- reading

    def decorate(self, observation: dict[str, Any]) -> dict[str, Any]:
        """Add ``origin_name`` to an observation dict from the ledger (in place)."""
        observation["origin_name"] = self.name_of_text(observation.get("origin", ""))
        return observation

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
        """
        if not isinstance(entry_id, str) or len(entry_id) != 64:
            raise UnknownEntryError("no such observation")
        result = await self.ledger.get_observation(entry_id.lower())
        if result is None:
            raise UnknownEntryError(f"no observation {entry_id}")
        entry = await self.ledger.get_entry(result["id"])
        result["audience"] = None if entry is None else self.audience_names(entry.audience)
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

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        """Follow new readable observations (see :class:`agent.storage.ledger.Subscription`)."""
        return self.ledger.subscribe(maxsize)

    async def verify_ledger(self) -> VerifyReport:
        return await self.ledger.verify()

    async def status(self) -> dict[str, Any]:
        """Name, key, fingerprint, peers (connected, last seen), ledger counts, forks."""
        counts: LedgerCounts = self.ledger.counts()
        forks = await self.ledger.forks()
        return {
            "name": self.name,
            "jurisdiction": self.config.jurisdiction,
            "key": self.public_key.text,
            "fingerprint": self.public_key.fingerprint,
            "peer_url": self.config.peer_url,
            "peers": self.peers(),
            "ledger": {
                "entries": counts.entries,
                "origins": counts.origins,
                "forked_origins": counts.forked_origins,
                "held_ahead_of_gaps": counts.held_ahead_of_gaps,
            },
            "forks": [{
                "origin": f.origin.text,
                "origin_name": self.name_of(f.origin),
                "seq": f.seq,
                "detected": format_ms(f.detected_ms),
                "cleared": None if f.cleared_ms is None else format_ms(f.cleared_ms),
            } for f in forks],
        }

    # -- forks

    def fork_json(self, record: ForkRecord) -> dict[str, Any]:
        """A fork record as the API shows it; ``proof`` (base64url) verifies alone."""
        return {
            "origin": record.origin.text,
            "origin_name": self.name_of(record.origin),
            "seq": record.seq,
            "detected": format_ms(record.detected_ms),
            "cleared": None if record.cleared_ms is None else format_ms(record.cleared_ms),
            "proof": b64url_encode(record.proof),
        }

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
        state = self._peer_status(peer.key)
        return {
            "name": peer.name,
            "jurisdiction": peer.jurisdiction,
            "key": peer.key.text,
            "fingerprint": peer.key.fingerprint,
            "url": peer.url,
            "connected": state.connected,
            "last_seen": None if state.last_seen_ms is None else format_ms(state.last_seen_ms),
            "forked": self._ledger is not None and self._ledger.is_forked(peer.key),
        }

    def _peer_status(self, key: PublicKey) -> PeerStatus:
        try:
            return self._replication.peer_status(key)
        except Exception:
            log.exception("replication peer_status failed")
            return PeerStatus()

    def peers(self) -> list[dict[str, Any]]:
        return [self.peer_json(p) for p in self._trust]

    def peer(self, name: str) -> PeerEntry:
        """Raises UnknownPeerError when no entry has that name."""
        from agent.errors import UnknownPeerError

        entry = self._trust.by_name(name)
        if entry is None:
            raise UnknownPeerError(f"no peer named {name[:70]!r} in the trust list")
        return entry

    async def add_peer(self, entry: PeerEntry) -> PeerEntry:
        """Add a peer to peers.toml (atomically) and apply it now.

        Raises:
            DuplicatePeerError: its name or key is already trusted, or it is this node.
            ConfigError: peers.toml is invalid (nothing changed).
        """
        await self._edit(lambda trust: trust.with_peer(
            entry, own_key=self.public_key, own_name=self.name))
        return entry

    async def remove_peer(self, name: str) -> PeerEntry:
        """Remove a peer from peers.toml (atomically) and apply it now: its sessions end
        and its later entries are refused.

        Raises:
            UnknownPeerError: no peer has that name.
        """
        removed = self.peer(name)
        await self._edit(lambda trust: trust.without(name))
        return removed

    async def _edit(self, change: Callable[[TrustList], TrustList]) -> None:
        async with self._trust_lock:
            new = await asyncio.to_thread(
                edit_trust_list, self.data_dir, change,
                own_key=self.public_key, own_name=self.name)
            self._apply_trust(new, "api")

    def _apply_trust(self, new: TrustList, source: str) -> None:
        if new == self._trust:
            return
        old = self._trust
        self._trust = new
        self._trust_reloads.inc(labels=(source,))
        for gone in old:
            if gone.key not in new and self._ledger is not None:
                self._ledger.drop_held(gone.key)
        try:
            self._replication.update_trust(new)
        except Exception:
            log.exception("replication did not take the new trust list")
        for listener in list(self._trust_listeners):
            try:
                listener()
            except Exception:
                log.exception("a trust-list listener failed")
        log.info("trust list now has %d peers (%s)", len(new), source)

    async def _watch_trust(self, initial: FileStamp | None) -> None:
        """Poll peers.toml; apply a change once the file has kept the same stamp for one
        interval, so an editor's in-place rewrite (truncate, then write) is never read
        half-way as an empty trust list."""
        watcher = self._watcher
        assert watcher is not None
        path = self.data_dir.peers_path
        settled = seen = initial
        while True:
            await asyncio.sleep(self._trust_poll_interval)
            try:
                stamp = await asyncio.to_thread(file_stamp, path)
            except OSError as exc:
                log.error("cannot stat %s: %s", path, exc)
                continue
            if stamp != seen:
                seen = stamp  # still changing: look again next time
                continue
            if stamp == settled:
                continue
            settled = stamp
            async with self._trust_lock:
                try:
                    new = await asyncio.to_thread(watcher.poll)
                except (ConfigError, OSError) as exc:
                    self._trust_errors.inc()
                    log.error("peers.toml changed but is invalid, keeping the previous "
                              "trust list: %s", exc)
                    continue
                if new is not None:
                    self._apply_trust(new, "file")

    # -- metrics

    def _collect(self) -> Iterable[MetricFamily]:
        families: list[MetricFamily] = []
        if self._ledger is not None and not self._stopped:
            counts = self._ledger.counts()
            families += [
                MetricFamily("entraide_ledger_entries", "Entries in the ledger (all origins).",
                             "gauge", (), {(): counts.entries}),
                MetricFamily("entraide_ledger_origins", "Origins with entries in the ledger.",
                             "gauge", (), {(): counts.origins}),
                MetricFamily("entraide_ledger_forked_origins",
                             "Origins quarantined after a fork.", "gauge", (),
                             {(): counts.forked_origins}),
                MetricFamily("entraide_ledger_held_entries",
                             "Entries waiting ahead of a gap.", "gauge", (),
                             {(): counts.held_ahead_of_gaps}),
            ]
        families.append(MetricFamily("entraide_trust_peers", "Peers in the trust list.",
                                     "gauge", (), {(): len(self._trust)}))
        connected: dict[tuple[str, ...], float] = {}
        for peer in self._trust:
            connected[(peer.name,)] = 1.0 if self._peer_status(peer.key).connected else 0.0
        families.append(MetricFamily("entraide_peer_connected",
                                     "1 when a session with the peer is up.", "gauge",
                                     ("peer",), connected))
        families.extend(self._replication.metric_families())
        return families


def _started(value: _T | None) -> _T:
    if value is None:
        raise NodeStoppingError("the node is not started")
    return value


def utc_now(clock: Callable[[], float]) -> datetime:
    """The clock's time as an aware UTC datetime."""
    return datetime.fromtimestamp(clock(), UTC)
