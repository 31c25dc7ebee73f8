"""TAXII Add Objects (§5.5): a posted envelope becomes this node's signed entries.

Each object is judged on its own: an invalid one is listed in the status resource's
``failures`` with the reason, and the rest of the envelope still goes in. An object
whose (id, version) the read-write collection already holds, or that appears twice in
the envelope, succeeds without creating anything. The others are signed and durably
committed through the node's group committer (in batches of at most
``MAX_APPEND_BATCH``) before the status answers ``complete``.

Invariants:
- Posts are serialised (one lock per node app), so two concurrent posts of the same
  object cannot both create it.
- The status lists every object of the envelope exactly once, in order:
  ``total_count == success_count + failure_count`` and ``pending_count`` is 0.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import StorageError
from agent.ledger import MAX_APPEND_BATCH
from agent.node import Node, Submission, UnknownAudienceError
from agent.taxii_http import TaxiiError
from agent.taxii_index import Collection, TaxiiIndex
from protocol.entries import TLP
from protocol.errors import EntraideError, PayloadError
from protocol.payloads import Observation, Payload
from protocol.stix import format_ms, format_us, import_object, parse_timestamp

__all__ = ["DEFAULT_TLP", "MAX_OBJECTS", "PostResult", "add_objects", "parse_envelope"]

MAX_OBJECTS = MAX_APPEND_BATCH
"""Objects in one envelope (more: 413)."""
DEFAULT_TLP = TLP.GREEN
"""TLP of a posted object that carries no TLP marking."""


def parse_envelope(data: bytes) -> list[Any]:
    """The ``objects`` of a posted envelope (a STIX bundle is accepted too).

    Raises:
        TaxiiError: 400 not UTF-8 JSON; 422 not an envelope; 413 too many objects.
    """
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TaxiiError(400, "Bad Request", f"the body is not UTF-8 JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise TaxiiError(422, "Unprocessable Entity", "the body must be a TAXII envelope: "
                                                      '{"objects": [...]}')
    objects = envelope.get("objects", [])
    if not isinstance(objects, list):
        raise TaxiiError(422, "Unprocessable Entity", "'objects' must be a list")
    if len(objects) > MAX_OBJECTS:
        raise TaxiiError(413, "Request Entity Too Large",
                         f"an envelope holds at most {MAX_OBJECTS} objects, not {len(objects)}")
    return objects


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
    position: int
    stix_id: str
    version: str | None
    version_us: int | None
    submission: Submission | None = None
    message: str | None = None


def _detail(stix_id: str, version: str, message: str | None) -> dict[str, str]:
    detail = {"id": stix_id, "version": version}
    if message:
        detail["message"] = message
    return detail


async def add_objects(node: Node, index: TaxiiIndex, objects: Sequence[Any],
                      lock: asyncio.Lock, clock: Callable[[], float]) -> PostResult:
    """Add the objects of an envelope to the node's read-write collection.

    Returns the status resource (``complete``).

    Raises:
        StorageError: the index cannot be read (nothing was written).
    """
    request_us = int(clock() * 1_000_000)
    result = PostResult(str(uuid.uuid4()), format_us(request_us, taxii=True))
    # Checking and mapping thousands of objects is CPU work: keep it off the event loop.
    outcome, items = await asyncio.to_thread(_judge, objects)
    async with lock:
        await index.sync()
        versioned = [(i.stix_id, i.version_us) for i in items if i.version_us is not None]
        present = await index.present(Collection.OWN, versioned)
        fresh: list[_Item] = []
        seen: set[tuple[str, int]] = set()
        for item in items:
            key = None if item.version_us is None else (item.stix_id, item.version_us)
            if key is not None and key in present:
                outcome[item.position] = (True, _detail(
                    item.stix_id, item.version or "", "already in the collection"))
            elif key is not None and key in seen:
                outcome[item.position] = (True, _detail(
                    item.stix_id, item.version or "", "duplicate within the envelope"))
            else:
                if key is not None:
                    seen.add(key)
                fresh.append(item)
        stored: dict[bytes, Payload] = {}
        for start in range(0, len(fresh), MAX_APPEND_BATCH):
            batch = fresh[start:start + MAX_APPEND_BATCH]
            try:
                entries = await node.submit([i.submission for i in batch if i.submission])
            except (UnknownAudienceError, PayloadError, StorageError, EntraideError) as exc:
                for item in batch:
                    outcome[item.position] = (False, _detail(
                        item.stix_id, item.version or "", f"not stored: {exc}"))
                continue
            for item, entry in zip(batch, entries, strict=True):
                note = f"entry {entry.id}" + (f"; {item.message}" if item.message else "")
                outcome[item.position] = (True, _detail(
                    item.stix_id, item.version or format_ms(entry.ts), note))
                if item.submission is not None:
                    stored[entry.hash] = item.submission.payload
        # The index renders these entries from the payloads in hand, not read back.
        await index.sync(stored)
    for position in range(len(objects)):
        ok, detail = outcome[position]
        (result.successes if ok else result.failures).append(detail)
    return result


def _judge(objects: Sequence[Any]) -> tuple[dict[int, tuple[bool, dict[str, str]]], list[_Item]]:
    """Check and map every object: refusals by position, and the items to store."""
    outcome: dict[int, tuple[bool, dict[str, str]]] = {}
    items: list[_Item] = []
    for position, obj in enumerate(objects):
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
                stix_id, version or "", "TLP:RED needs an explicit audience, which TAXII "
                "cannot carry; share it through POST /api/v1/observations with 'audience'"))
            continue
        message = None
        if isinstance(imported.payload, Observation):
            message = "shared as an Entraide observation"
            if imported.dropped:
                message += "; not kept: " + ", ".join(imported.dropped)
        items.append(_Item(position, imported.stix_id, imported.version,
                           None if imported.version is None
                           else parse_timestamp(imported.version),
                           Submission(imported.payload, tlp), message))
    return outcome, items
