"""TAXII Add Objects (§5.5): a posted envelope becomes this node's signed entries.

Each object is judged on its own: an invalid one is listed in the status resource's
``failures`` with the reason, and the rest of the envelope still goes in. An object
whose (id, version) the read-write collection already holds, or that appears twice in
the envelope, succeeds without creating anything. The others are signed and durably
committed through the node's group committer before the status answers ``complete``.
A full disk is no object's fault: the post answers 507 ``storage_full`` instead
(:class:`DiskFullDuringPost`, agent/taxii/app.py), each object stored whole or not at all.

Judging (checking, mapping, rendering the object served) is CPU work, done off the
event loop by a :class:`Judge`: in a worker thread, and for a large envelope, when the
host has a core to spare, also in the TAXII judge process (a pipe worker,
agent/workers/pipe.py, started by agent/workers/supervisor.py; its job is :func:`main`),
chunk by chunk. Storing then
starts with the first chunk judged and takes, in each commit, every chunk judged
meanwhile, so judging the rest overlaps signing and committing. Entries are created in
the envelope's order either way.

Invariants:
- Posts are serialised (one lock per node app), so two concurrent posts of the same
  object cannot both create it.
- The status lists every object of the envelope exactly once, in order:
  ``total_count == success_count + failure_count`` and ``pending_count`` is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import secrets
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import StorageError, StorageFullError, UnknownAudienceError
from agent.i18n import N_
from agent.node.node import Node, Submission
from agent.storage.ledger import MAX_APPEND_BATCH
from agent.storage.taxii_index import Collection, KnownObject, TaxiiIndex
from agent.taxii.http import TaxiiError
from agent.workers.gcsettings import settle_heap
from agent.workers.pipe import PipeWorker, WorkerFailed, serve
from protocol.entries import TLP, VerifiedEntry
from protocol.errors import EntraideError, PayloadError
from protocol.payloads import MAX_STIX_JSON_BYTES, Observation, StixObject
from protocol.stix import (
    ObjectText,
    format_ms,
    format_us,
    import_object,
    observation_text,
    parse_timestamp,
)

__all__ = ["CHUNK", "COMMAND", "DEFAULT_TLP", "MAX_OBJECTS", "PARALLEL_MIN",
           "DiskFullDuringPost", "Judge", "PostResult", "add_objects", "main", "parse_envelope"]

log = logging.getLogger(__name__)

MAX_OBJECTS = MAX_APPEND_BATCH
"""Objects in one envelope (more: 413)."""
DEFAULT_TLP = TLP.GREEN
"""TLP of a posted object that carries no TLP marking."""
PARALLEL_MIN = 400
"""Envelopes of at least this many objects are judged on two cores."""
CHUNK = 200
"""Objects per chunk judged in the worker process (the first chunk, judged in a thread
while the process starts on the next ones, is half that)."""
COMMAND = (sys.executable, "-c", "from agent.taxii.post import main; main()")
"""The TAXII judge process's command line (agent/workers/supervisor.py starts it)."""


# Why protocol/stix*.py refuses an object (a failure's message in a status), here so
# ``scripts/i18n`` puts them in the catalog; each spells the text its raise site formats.
STIX_TEMPLATES = (
    N_("object_json: {reason}"),
    N_("'type' must be a STIX type name (3-250 of a-z, 0-9, '-')"),
    N_("'id' must be '{type}--' followed by an RFC 4122 UUID"),
    N_("{where} must be a STIX id (<type>--<uuid>)"),
    N_("modified is earlier than created"),
    N_("a {type} needs '{key}' (STIX 2.1)"),
    N_("an indicator needs '{key}' (a non-empty string)"),
    N_("{key} must be precise to the millisecond (e.g. 2024-01-01T00:00:00.000Z), as "
       "STIX 2.1 requires"),
    N_("{what} must be a STIX timestamp like 2026-01-02T03:04:05.000Z"),
    N_("valid_until must be later than valid_from"),
    N_("invalid STIX pattern: {reason}"),
    N_("confidence must be an integer from 0 to 100"),
    N_("revoked must be true or false"),
    N_("labels must be a non-empty list of non-empty strings"),
    # protocol/stix_pattern.py's reasons (the {reason} of "invalid STIX pattern"), and
    # the phrases they quote (what was expected; localize() translates them inside).
    N_("a pattern is a string"),
    N_("it is empty"),
    N_("it is over {limit} characters"),
    N_("unexpected character {char} at offset {at}"),
    N_("unexpected {token} at offset {at}"),
    N_("nested deeper than {depth} levels"),
    N_("expected {text}, found {got}"),
    N_("expected {what}, found the end"),
    N_("expected '[' or '(' to start an observation expression, found {token}"),
    N_("expected a comparison operator, found {token}"),
    N_("expected an object type (e.g. ipv4-addr), found {token}"),
    N_("expected a property name, found {token}"),
    N_("expected a value after {op}, found {token}"),
    N_("{what} needs a positive integer"),
    N_("{what} needs a positive number"),
    N_("{what} needs a t'YYYY-MM-DDTHH:MM:SSZ' timestamp"),
    N_("{op} needs a string"),
    N_("object type is over 250 characters"),
    N_("a list index is a non-negative integer or '*', not {token}"),
    N_("a quoted property name must be 1 to 250 characters"),
    N_("a number after {what}"),
    N_("a t'...' timestamp after {what}"),
    N_("a value after {op}"),
    N_("a comparison operator"),
    N_("an object path"),
    N_("a list index"),
    N_("a property name"),
    N_("the end"),
)


def parse_envelope(data: bytes) -> list[Any]:
    """The ``objects`` of a posted envelope (a STIX bundle is accepted too).

    Raises:
        TaxiiError: 400 not UTF-8 JSON; 422 not an envelope (a bare object, ``{}``,
            no objects); 413 too many objects, or an object over the size one entry
            carries (``MAX_STIX_JSON_BYTES``: a size limit, said so, not "invalid").
    """
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TaxiiError(400, "Bad Request", N_("the body is not UTF-8 JSON: {reason}").format(
            reason=exc)) from None
    if not isinstance(envelope, dict):
        raise TaxiiError(422, "Unprocessable Entity", N_(
            'the body must be a TAXII envelope: {"objects": [...]}'))
    if "objects" not in envelope:
        if "type" in envelope and envelope.get("type") != "bundle":
            raise TaxiiError(422, "Unprocessable Entity", N_(
                "the body is a bare STIX object; post it inside a TAXII envelope: "
                '{"objects": [<the object>]}'))
        raise TaxiiError(422, "Unprocessable Entity", N_(
            """the envelope has no 'objects': post {"objects": [...]}"""))
    objects = envelope["objects"]
    if not isinstance(objects, list):
        raise TaxiiError(422, "Unprocessable Entity", N_("'objects' must be a list"))
    if not objects:
        raise TaxiiError(422, "Unprocessable Entity",
                         N_("the envelope's 'objects' list is empty"))
    if len(objects) > MAX_OBJECTS:
        raise TaxiiError(413, "Request Entity Too Large",
                         N_("an envelope holds at most {max} objects, not {n}").format(
                             max=MAX_OBJECTS, n=len(objects)))
    if len(data) > MAX_STIX_JSON_BYTES:  # else no object can be over the limit
        _check_sizes(objects)
    return objects


def _check_sizes(objects: Sequence[Any]) -> None:
    """413 for the first object larger than one entry carries.

    The whole envelope is refused rather than that object listed among the failures:
    a size limit is not a fault of the object, and a client that only checks the
    status code would otherwise miss that part of its collection did not go in.
    """
    for obj in objects:
        try:
            size = len(json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
                       .encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError):
            continue  # not JSON-able as given: judged (and refused) with its reason
        if size > MAX_STIX_JSON_BYTES:
            stix_id = obj.get("id") if isinstance(obj, dict) else None
            name = stix_id[:120] if isinstance(stix_id, str) else "an object"
            raise TaxiiError(
                413, "Request Entity Too Large",
                N_("too large: {name} is {size} KiB as JSON; one object holds at most "
                   "{max} KiB. Nothing of this envelope was stored; post it without that "
                   "object").format(name=name, size=size // 1024,
                                    max=MAX_STIX_JSON_BYTES // 1024))


class DiskFullDuringPost(StorageFullError):
    """The disk holding the ledger was full during a post: ``created`` of its objects
    were stored before it filled (each whole, with its entries), the rest were not.
    Posting the envelope again once space is freed stores the rest; the others are
    then reported as already in the collection."""

    def __init__(self, created: int) -> None:
        super().__init__()
        self.created = created


@dataclass
class PostResult:
    """The status resource of one post (TAXII 2.1 §4.3.1)."""

    id: str
    request_timestamp: str
    successes: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id, "status": "complete", "request_timestamp": self.request_timestamp,
            "total_count": len(self.successes) + len(self.failures),
            "success_count": len(self.successes), "failure_count": len(self.failures),
            "pending_count": 0,
        }
        if self.successes:
            doc["successes"] = self.successes
        if self.failures:
            doc["failures"] = self.failures
        return doc


@dataclass
class _Item:
    """One object to store: its entries (the object as posted, and maybe the
    observation derived from it), each with its rendered text when known."""

    position: int
    stix_id: str
    version: str | None
    version_us: int | None
    submissions: tuple[Submission, ...] = ()
    dropped: str | None = None
    """None: stored as posted only; else also shared as an observation, which does not
    hold these properties (comma-separated; empty: it holds them all)."""
    texts: tuple[ObjectText | None, ...] = ()  # rendered but for the entry id and seq
    spec_version: str = "2.1"


def _detail(stix_id: str, version: str, message: str | None) -> dict[str, str]:
    detail = {"id": stix_id, "version": version}
    if message:
        detail["message"] = message
    return detail



_Judged = tuple[dict[int, tuple[bool, dict[str, str]]], list[_Item]]


class Judge:
    """Judges envelopes: in a worker thread, and large ones also in the judge process.

    The process is only worth it when a core is idle: on a busy host it competes with
    the node's own thread and slows the post down (see docs/benchmarks.md, taxii). So
    an envelope goes to it only when ``spare_core()`` says the host has a core to spare.
    The process is started by the first envelope that would use it, which is judged
    in the thread meanwhile. A chunk the process fails is judged in the thread; the
    supervisor's policy (agent/workers/policy.py) says when the process is started
    again or given up.

    Args:
        worker: the judge process (a pipe worker running :data:`COMMAND`), owned by
            the supervisor; None for a judge that only ever uses the thread.
        spare_core: whether the host has a core to spare now (default: this process
            may use two cores or more, and the 1-minute load average, this node's own
            work included, leaves at least half of one idle).
    """

    def __init__(self, worker: PipeWorker | None = None, *,
                 spare_core: Callable[[], bool] | None = None) -> None:
        self.worker = worker
        self._spare_core = spare_core or _spare_core

    def judge(self, objects: Sequence[Any], origin: str) -> list[Awaitable[_Judged]]:
        """The verdicts on ``objects`` to be stored as entries of ``origin`` (key text),
        chunk by chunk in envelope order (positions are the objects' indexes in
        ``objects``); the chunks are being judged already."""
        if (self.worker is None or len(objects) < PARALLEL_MIN or not self._spare_core()
                or not self.worker.usable()):
            return [asyncio.ensure_future(asyncio.to_thread(_judge, objects, 0, origin, False))]
        first = CHUNK // 2
        parts: list[Awaitable[_Judged]] = [
            asyncio.ensure_future(asyncio.to_thread(_judge, objects[:first], 0, origin, False))]
        for at in range(first, len(objects), CHUNK):
            parts.append(asyncio.ensure_future(
                self._in_process(self.worker, objects[at:at + CHUNK], at, origin)))
        return parts

    async def ready(self) -> bool:
        """Start the worker process if need be and wait until it takes chunks.

        Returns False when there is none or it cannot start (envelopes are then judged
        in the thread only).
        """
        return self.worker is not None and await self.worker.ready()

    async def _in_process(self, worker: PipeWorker, objects: Sequence[Any], offset: int,
                          origin: str) -> _Judged:
        try:
            return await worker.call([list(objects), offset, origin], _unpickle)
        except (WorkerFailed, ValueError, TypeError, OverflowError):
            # The process failed, or the chunk does not go on the wire (an integer over
            # 64 bits, a lone surrogate): the thread judges it, as it would all.
            return await asyncio.to_thread(_judge, objects, offset, origin, False)


def _spare_core() -> bool:
    cores = len(os.sched_getaffinity(0))
    try:
        load = os.getloadavg()[0]  # this node's own work included
    except OSError:
        return False
    return cores >= 2 and load <= cores - 0.5


# --- the judge process ---------------------------------------------------------------


def main() -> None:
    """The TAXII judge process: answers ``[objects, offset, origin]`` with the verdicts
    of :func:`_judge` (rendering included), pickled.

    Pickled because the items hold validated payload models: rebuilding them from
    plain data in the node would cost what the process saves. The process is this
    node's own code, started by the node, holding no key, as the process pool that
    judged before it (which pickled too); the node unpickles only what its own child
    wrote on its own pipe.
    """
    _warm_up()
    settle_heap()  # imports done: later collections skip them (agent/workers/gcsettings.py)
    serve(_handle)


def _handle(body: Any) -> bytes:
    objects, offset, origin = body
    return pickle.dumps(_judge(objects, offset, origin, True), pickle.HIGHEST_PROTOCOL)


def _unpickle(reply: Any) -> _Judged:
    if not isinstance(reply, bytes):
        raise TypeError(f"not a judged chunk: {type(reply).__name__}")
    judged = pickle.loads(reply)  # our own child's reply (see main())
    if not isinstance(judged, tuple) or len(judged) != 2:
        raise ValueError("not a judged chunk")
    return judged


def _warm_up() -> None:
    """Run in the new worker process, so its imports are done before the first chunk."""
    with contextlib.suppress(PayloadError):  # refused, as expected: the validators loaded
        import_object({})


async def add_objects(node: Node, index: TaxiiIndex, objects: Sequence[Any],
                      lock: asyncio.Lock, clock: Callable[[], float],
                      judge: Judge | None = None) -> PostResult:
    """Add the objects of an envelope to the node's read-write collection.

    ``judge`` judges the objects (default: a worker thread only).

    Returns the status resource (``complete``).

    Raises:
        DiskFullDuringPost: the disk holding the ledger is full (what was stored before
            stays stored, each object whole).
        StorageError: the index cannot be read (what was stored before stays stored).
    """
    request_us = int(clock() * 1_000_000)
    result = PostResult(str(uuid.uuid4()), format_us(request_us, taxii=True))
    parts = (judge or Judge()).judge(objects, node.public_key.text)
    outcome: dict[int, tuple[bool, dict[str, str]]] = {}
    stored: dict[bytes, KnownObject] = {}
    try:
        async with lock:
            await index.sync()
            try:
                await _store(node, index, parts, outcome, stored)
            except StorageFullError as exc:
                raise DiskFullDuringPost(len({(k.stix_id, k.version)
                                              for k in stored.values()})) from exc
            # The index takes these entries as rendered here, not read back.
            await index.sync(stored)
    finally:
        for part in parts:
            if isinstance(part, asyncio.Future) and not part.done():
                part.cancel()
    for position in range(len(objects)):
        ok, detail = outcome[position]
        (result.successes if ok else result.failures).append(detail)
    return result


async def _store(node: Node, index: TaxiiIndex, parts: Sequence[Awaitable[_Judged]],
                 outcome: dict[int, tuple[bool, dict[str, str]]],
                 stored: dict[bytes, KnownObject]) -> None:
    """Submit the fresh items of each judged chunk, in order, one submission at a time:
    each takes every item judged while the one before was being committed. Fills
    ``outcome`` and ``stored`` (what was stored, by entry hash).

    Raises:
        StorageFullError: a submission found the disk full (it stored nothing; those
            before it stay stored, each object whole).
    """
    seen: set[tuple[str, int]] = set()
    ready: list[_Item] = []
    waiting = [asyncio.ensure_future(part) for part in parts]
    next_part: asyncio.Future[_Judged] | None = waiting.pop(0) if waiting else None
    committing: tuple[list[_Item], asyncio.Task[list[VerifiedEntry]]] | None = None
    try:
        while True:
            if committing is None and ready:
                batch, ready = _batch(ready)
                committing = (batch, asyncio.create_task(node.submit(
                    [s for i in batch for s in i.submissions])))
            pending: list[asyncio.Future[Any]] = [
                f for f in (next_part, committing[1] if committing else None) if f is not None]
            if not pending:
                return
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if committing is not None and committing[1].done():
                _settle(committing, outcome, stored)
                committing = None
            if next_part is not None and next_part.done():
                verdicts, items = next_part.result()
                next_part = waiting.pop(0) if waiting else None
                outcome.update(verdicts)
                ready += await _fresh(index, items, seen, outcome)
    finally:
        if committing is not None:  # failing midway: the commit goes on (the node's)
            committing[1].add_done_callback(lambda task: task.cancelled() or task.exception())


def _batch(ready: list[_Item]) -> tuple[list[_Item], list[_Item]]:
    """The first items whose entries fit one submission, and the rest."""
    count = 0
    for n, item in enumerate(ready):
        count += len(item.submissions)
        if count > MAX_APPEND_BATCH:
            return ready[:max(n, 1)], ready[max(n, 1):]
    return ready, []


async def _fresh(index: TaxiiIndex, items: list[_Item], seen: set[tuple[str, int]],
                 outcome: dict[int, tuple[bool, dict[str, str]]]) -> list[_Item]:
    """The items to store: not already in the collection, not earlier in the envelope."""
    versioned = [(i.stix_id, i.version_us) for i in items if i.version_us is not None]
    present = await index.present(Collection.OWN, versioned)
    signer = index.own_key
    foreign = await index.foreign(signer, [
        (i.stix_id, _carried_json(i)) for i in items])
    fresh: list[_Item] = []
    for item, claim in zip(items, foreign, strict=True):
        key = None if item.version_us is None else (item.stix_id, item.version_us)
        if claim is not None:
            outcome[item.position] = (False, _detail(
                item.stix_id, item.version or "", _refusal(item, *claim)))
        elif key is not None and key in present:
            outcome[item.position] = (True, _detail(
                item.stix_id, item.version or "", N_("already in the collection")))
        elif key is not None and key in seen:
            outcome[item.position] = (True, _detail(
                item.stix_id, item.version or "", N_("duplicate within the envelope")))
        else:
            if key is not None:
                seen.add(key)
            fresh.append(item)
    return fresh


def _carried_json(item: _Item) -> str:
    payload = item.submissions[0].payload  # the object as posted comes first
    return payload.object_json if isinstance(payload, StixObject) else "{}"


def _refusal(item: _Item, other: str, prop: str) -> str:
    """Why an object that speaks for another member is refused (agent/storage/
    taxii_owners.py refuses it in the index too)."""
    tlp = item.submissions[0].tlp
    if prop in ("id", "extensions") and tlp.encrypted:
        return N_("refused: this is {other}'s TLP:{tlp} object (from the federation "
                  "collection); shared again under this node's name it would reach members "
                  "its author did not choose. It stays as its author shared it").format(
            other=other, tlp=tlp.value)
    if prop == "id":
        return N_("refused: this id was first published by {other}; a member cannot "
                  "publish a version of another member's object (give your own object a "
                  "new id)").format(other=other)
    return N_("refused: its {prop} names {other}; a member publishes only in its own "
              "name").format(prop=prop, other=other)


def _settle(committing: tuple[list[_Item], asyncio.Task[list[VerifiedEntry]]],
            outcome: dict[int, tuple[bool, dict[str, str]]],
            stored: dict[bytes, KnownObject]) -> None:
    batch, task = committing
    try:
        entries = task.result()
    except StorageFullError:
        raise  # the whole post is a 507, not one failure per object (agent/taxii/app.py)
    except (UnknownAudienceError, PayloadError, StorageError, EntraideError) as exc:
        for item in batch:
            outcome[item.position] = (False, _detail(
                item.stix_id, item.version or "", N_("not stored: {error}").format(error=exc)))
        return
    at = 0
    for item in batch:
        mine = entries[at:at + len(item.submissions)]
        at += len(item.submissions)
        named = mine[-1]  # the observation when there is one: what the API shows
        if item.dropped is None:
            note = N_("entry {id}").format(id=named.id)
        elif not item.dropped:
            note = N_("entry {id}; also shared as an Entraide observation").format(id=named.id)
        else:
            note = N_("entry {id}; also shared as an Entraide observation (the observation "
                      "does not hold: {dropped}; the object keeps them)").format(
                id=named.id, dropped=item.dropped)
        outcome[item.position] = (True, _detail(
            item.stix_id, item.version or format_ms(named.ts), note))
        for submission, text, entry in zip(item.submissions, item.texts, mine, strict=True):
            stored[entry.hash] = KnownObject(
                submission.payload, None if text is None else text.fill(entry.id, entry.seq),
                item.stix_id, item.version, item.spec_version)


def _judge(objects: Sequence[Any], offset: int, origin: str, render: bool) -> _Judged:
    """Check and map every object: refusals by position (``offset`` + index), and the
    items to store as entries of ``origin``. With ``render``, each observation's object
    is rendered too (in the worker process: off the node's critical path; in the
    node's thread that would only add the template's cost, so the index renders it).
    Runs in the worker process too."""
    outcome: dict[int, tuple[bool, dict[str, str]]] = {}
    items: list[_Item] = []
    marker = secrets.token_hex(16)
    for position, obj in enumerate(objects, offset):
        stix_id = obj.get("id") if isinstance(obj, dict) else None
        stix_id = stix_id if isinstance(stix_id, str) else ""
        version = obj.get("modified", obj.get("created")) if isinstance(obj, dict) else None
        version = version if isinstance(version, str) else None
        try:
            imported = import_object(obj)
        except PayloadError as exc:
            outcome[position] = (False, _detail(stix_id, version or "", str(exc)))
            continue
        tlp = imported.tlp or DEFAULT_TLP
        if tlp is TLP.RED:
            outcome[position] = (False, _detail(
                stix_id, version or "", N_(
                    "TLP:RED needs an explicit audience, which TAXII cannot carry; share it "
                    "through POST /api/v1/observations with 'audience'")))
            continue
        dropped = None
        payload = imported.payload
        version_us = None if imported.version is None else parse_timestamp(imported.version)
        if isinstance(payload, Observation):
            # The object is stored exactly as posted, and served: TAXII gives back what
            # it was given. The observation derived from it follows as its own entry,
            # for lookups, the API and MISP; it has the object's id and version, so the
            # index serves the object, never that rendering (taxii_index.py, in_all).
            carried = StixObject.from_object(obj)
            submissions: tuple[Submission, ...] = (Submission(carried, tlp),
                                                   Submission(payload, tlp))
            texts: tuple[ObjectText | None, ...] = (
                ObjectText((carried.object_json,), ()),
                observation_text(payload, origin, tlp, marker) if render else None)
            dropped = ", ".join(imported.dropped)
            spec_version = "2.1"
        else:
            assert isinstance(payload, StixObject)  # import_object makes nothing else
            submissions = (Submission(payload, tlp),)
            texts = (ObjectText((payload.object_json,), ()),)
            spec_version = str(obj.get("spec_version", "2.1"))
        items.append(_Item(position, imported.stix_id, imported.version, version_us,
                           submissions, dropped, texts, spec_version))
    return outcome, items
