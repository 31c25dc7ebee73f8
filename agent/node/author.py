"""The node's author: this node's own entries, built, sealed and signed from drafts.

Storage stores, the node authors. :class:`Author` is the one place that holds this
node's signing key for its own log: it turns :class:`~agent.storage.types.OwnDraft`
objects into signed :class:`~protocol.entries.VerifiedEntry` objects chained after a
given head, each with the index record the ledger writes beside it. The ledger's
:meth:`~agent.storage.ledger.Ledger.store_own` then stores them (or refuses them when
the head moved), and the group committer (agent/node/committer.py) ties the two together.

Invariants:
- Nothing is stored or shown here: entries signed and never stored are seen by no one,
  so signing another entry at the same seq later is no fork.
- AMBER, AMBER+STRICT and RED payloads are sealed to their recipients and to this node
  (so it can read its own entries); CLEAR and GREEN carry no recipients.
- All of a call's entries carry one timestamp (``clock`` read once per call).
- Every entry carries the expiry its payload earns under this node's retention policy
  (``protocol.retention.resolve``, docs/protocol.md §3), resolved here, once, and signed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from agent.storage.queries import IndexRecord, build_record
from agent.storage.types import MAX_APPEND_BATCH, Head, OwnDraft, PreparedObservation
from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.envelope import seal_envelope
from protocol.errors import EncodingError, OversizeError
from protocol.keys import Identity, PublicKey
from protocol.payloads import Payload, decode_payload, encode_payload_with_fields
from protocol.retention import DEFAULT_POLICY, RetentionPolicy, resolve

__all__ = ["Author", "Built"]

_SIGN_CHUNK = 128  # own entries signed between two turns of the event loop

Built = list[tuple[VerifiedEntry, IndexRecord]]
"""Signed entries, in chain order, each with its index record: what ``store_own`` takes."""


class Author:
    """Signs this node's entries.

    Args:
        identity: this node; its key signs every own entry.
        clock: seconds since the epoch (``time.time``); entries carry it in ms.
        randbytes: randomness for envelopes (``os.urandom``).
        retention: this node's policy (``[retention]``), for its own entries' expiry.
    """

    def __init__(self, identity: Identity, *, clock: Callable[[], float] = time.time,
                 randbytes: Callable[[int], bytes] = os.urandom,
                 retention: RetentionPolicy = DEFAULT_POLICY) -> None:
        self._identity = identity
        self._retention = retention
        self._me = identity.public_key
        self._clock = clock
        self._randbytes = randbytes

    @property
    def public_key(self) -> PublicKey:
        """The origin of every entry this author signs."""
        return self._me

    async def sign(self, drafts: Sequence[OwnDraft], head: Head | None) -> Built:
        """Sign ``drafts`` as this node's entries following ``head`` (None: the first).

        Signed on the loop's thread, a chunk at a time, yielding to the loop between
        chunks: in a worker thread every signature handed the GIL back and forth with
        the loop (each hand-over can wait out the 5 ms switch interval while the loop
        validates the next request), which cost more than the signing itself.

        Raises:
            PayloadError, EncodingError: a payload or draft that is not valid (bad
                payload bytes, recipients on a CLEAR/GREEN draft, none on an encrypted one).
            OversizeError: more than ``MAX_APPEND_BATCH`` drafts, or an entry over its cap.
        """
        drafts = list(drafts)
        if len(drafts) > MAX_APPEND_BATCH:
            raise OversizeError(f"at most {MAX_APPEND_BATCH} entries per append")
        built: Built = []
        now_ms = int(self._clock() * 1000)
        for at in range(0, len(drafts), _SIGN_CHUNK):
            if at:
                await asyncio.sleep(0)  # let the loop serve others between chunks
            part = self.build(drafts[at:at + _SIGN_CHUNK], head, now_ms)
            head = (part[-1][0].seq, part[-1][0].hash)
            built += part
        return built

    def build(self, drafts: Sequence[OwnDraft], head: Head | None, now_ms: int) -> Built:
        """Sign the drafts as a chain after ``head``, stamped ``now_ms``, at once.

        Raises:
            PayloadError, EncodingError, OversizeError: as :meth:`sign`.
        """
        out: Built = []
        seq, prev = (0, None) if head is None else head
        for draft in drafts:
            tlp = draft.tlp if type(draft.tlp) is TLP else TLP(draft.tlp)
            prepared: PreparedObservation | None = None
            model: Payload | None = None
            dumped = None
            if isinstance(draft.payload, PreparedObservation):
                prepared = draft.payload
                data = prepared.data
                expires = resolve("observation", tlp, prepared.type,
                                  _ms_of_text(prepared.fields.get("valid_until")), now_ms,
                                  self._retention)
            else:
                if isinstance(draft.payload, bytes | bytearray | memoryview):
                    data = bytes(draft.payload)
                    model = decode_payload(data)
                else:
                    model = draft.payload
                    data, dumped = encode_payload_with_fields(model)
                expires = _expiry(model, tlp, now_ms, self._retention)
            if tlp.encrypted:
                if not draft.recipients:
                    raise EncodingError(f"a {tlp.value} entry needs recipients")
                audience, body = seal_envelope(data, [*draft.recipients, self._me],
                                               self._randbytes)
            elif draft.recipients:
                raise EncodingError(f"a {tlp.value} entry has no recipients")
            else:
                audience, body = None, data
            entry = sign_entry(self._identity, seq=seq + 1, prev=prev, now_ms=now_ms,
                               tlp=tlp, audience=audience, body=body, expires_ms=expires)
            if prepared is not None:
                out.append((entry, prepared.record(entry.ts)))
            else:
                assert model is not None
                out.append((entry, build_record(model, entry.ts, dumped)))
            seq, prev = entry.seq, entry.hash
        return out


def _expiry(model: Payload, tlp: TLP, now_ms: int, policy: RetentionPolicy) -> int:
    """``expires_ms`` of an entry carrying ``model`` signed at ``now_ms``."""
    indicator = getattr(model, "type", None)
    until: Any = getattr(model, "valid_until", None)
    until_ms = None if not isinstance(until, datetime) else int(until.timestamp() * 1000)
    return resolve(model.kind, tlp, None if indicator is None else str(indicator),
                   until_ms, now_ms, policy)


def _ms_of_text(text: object) -> int | None:
    """Milliseconds of a payload's JSON instant (``...Z``), None when absent."""
    if not isinstance(text, str):
        return None
    return int(datetime.fromisoformat(text).timestamp() * 1000)
