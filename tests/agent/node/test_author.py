"""The node's author: own entries built, sealed and signed from drafts; nothing stored."""

from __future__ import annotations

import itertools

import pytest

from agent.node.author import Author
from agent.storage.types import MAX_APPEND_BATCH, OwnDraft
from protocol.entries import TLP, check_successor
from protocol.envelope import open_envelope
from protocol.errors import EncodingError, OversizeError
from protocol.payloads import decode_payload
from tests.agent._ledger_helpers import draft, identity, ip, observation

ME, PEER = identity(1), identity(2)


def _author() -> Author:
    return Author(ME, clock=lambda: 1_800_000_000.0, randbytes=bytes)


async def test_author_sign_chains_after_the_head_across_chunks() -> None:
    author = _author()
    first = await author.sign([draft(observation(ip(0)))], None)
    head = (first[0][0].seq, first[0][0].hash)
    rest = await author.sign([draft(observation(ip(i))) for i in range(1, 300)], head)
    entries = [e for e, _ in first + rest]
    assert [e.seq for e in entries] == list(range(1, 301))
    check_successor(None, entries[0])
    for before, after in itertools.pairwise(entries):
        check_successor((before.seq, before.hash), after)
    assert {e.ts for e in entries} == {1_800_000_000_000}
    assert all(e.origin == author.public_key == ME.public_key for e in entries)
    assert [r.value for _, r in rest[:2]] == [ip(1), ip(2)]


async def test_author_seals_encrypted_entries_to_recipients_and_itself() -> None:
    payload = observation("evil.example", "domain-name")
    [(entry, record)] = await _author().sign([draft(payload, TLP.RED, [PEER.public_key])], None)
    assert entry.audience is not None
    for reader in (ME, PEER):
        assert decode_payload(open_envelope(entry.body, entry.audience, reader)) == payload
    assert record.value == "evil.example"


async def test_author_refuses_bad_drafts_before_signing() -> None:
    author = _author()
    with pytest.raises(EncodingError, match="recipients"):
        await author.sign([draft(tlp=TLP.AMBER)], None)
    with pytest.raises(EncodingError, match="recipients"):
        await author.sign([OwnDraft(observation(), TLP.CLEAR, (PEER.public_key,))], None)
    with pytest.raises(OversizeError):
        await author.sign([draft()] * (MAX_APPEND_BATCH + 1), None)
