"""Chain-authenticated runs: one signature check per origin per run (docs/protocol.md §3).

An origin's entries form a hash chain: each header's ``prev`` is the BLAKE2b-256 of the
previous header, signature included. So a contiguous run ``e_1 .. e_n`` of one origin
that starts right after a head this node already verified is authenticated by

- every entry's encoding, fields and body (as :func:`protocol.entries.verify_entry`
  checks them, minus the signature);
- ``e_1`` extending the verified head (``check_successor``), ``e_{i+1}`` extending ``e_i``;
- one valid signature, on the newest entry ``e_n``.

A changed byte anywhere in the run changes a body hash (refused against its header), a
header hash (the next ``prev`` no longer matches) or the newest header (its signature
fails). Finding a second header with the same BLAKE2b-256 is as hard as forging the
signature. Catch-up and bulk ingest pay one Ed25519 check per origin per run instead of
one per entry; live gossip of single entries still verifies each one.

Invariants:
- :func:`verify_run` gives all of the run or nothing: no entry of a run leaves this
  module before the newest one's signature verified. On any error the caller may fall
  back to per-entry verification, which keeps the valid prefix (nothing here stores).
- A fork proof is never built from an unchecked signature: :func:`fork_in_run` verifies
  the conflicting entry in full (signature included) before it pairs it with the held one.
- Pure: bytes in, values or exceptions out; no I/O, no clock.

An intermediate header whose own signature is wrong, inside a run whose newest header
is validly signed, can only come from the origin itself (no one else can sign the
successor that commits to its hash). Such a run is accepted: the origin endorsed that
header by signing its successor. It cannot serve as fork evidence (see above).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

from protocol.entries import (
    ForkProof,
    VerifiedEntry,
    _chain_member,
    _check_signature,
    check_successor,
    detect_fork,
    verify_entry,
)
from protocol.errors import ChainError, EncodingError, EntraideError, OversizeError

__all__ = ["MAX_RUN_ENTRIES", "fork_in_run", "verify_batch", "verify_run"]

MAX_RUN_ENTRIES = 65_536
"""Largest run checked at once: the widest WANT range (docs/protocol.md §8)."""


def verify_run(raws: Sequence[bytes], head: tuple[int, bytes] | None) -> tuple[VerifiedEntry, ...]:
    """Verify a contiguous run of one origin's entries with one signature check.

    Args:
        raws: the run in wire form ``encode([header, body])``, oldest first; bodies may
            be nil (header-only entries are chain members, §3).
        head: ``(seq, hash)`` of the origin's newest entry this node already verified
            and stored, or None when it holds none (the run then starts at seq 1).

    Returns:
        The run's entries, verified, in order; ``()`` for an empty run.

    Raises:
        OversizeError: more than ``MAX_RUN_ENTRIES`` entries, or an entry over its caps.
        EncodingError: an entry that is not canonical or whose body does not match
            its header.
        ChainError: entries of more than one origin, a gap, or a link (to ``head`` or
            between two entries) that does not hold.
        BadSignatureError: the newest entry's signature does not verify; the whole run
            is refused.
    """
    if len(raws) > MAX_RUN_ENTRIES:
        raise OversizeError(f"a run holds at most {MAX_RUN_ENTRIES} entries")
    if not raws:
        return ()
    entries: list[VerifiedEntry] = []
    link = head
    origin = None
    for raw in raws:
        entry = _chain_member(raw)
        if origin is None:
            origin = entry.origin
        elif entry.origin != origin:
            raise ChainError("a run holds the entries of one origin")
        check_successor(link, entry)
        link = (entry.seq, entry.hash)
        entries.append(entry)
    _check_signature(entries[-1])
    return tuple(entries)


def verify_batch(raws: Sequence[bytes]) -> list[VerifiedEntry | None]:
    """Verify a received batch run by run: one signature check per origin per run.

    The batch is cut into runs: the entries of one origin in batch order whose seqs
    follow each other (``seq`` one more than the run's last), at most
    ``MAX_RUN_ENTRIES`` each. Each run is checked as :func:`verify_run` checks one,
    linked to its own first entry's ``prev`` instead of a stored head (the ledger
    checks the link to the stored head when it stores them, §3): every entry's
    encoding and body, the hash links inside the run, and the signature of its newest
    entry. A run of one entry (live gossip) is therefore its own signature check, as
    :func:`protocol.entries.verify_entry` does.

    Returns:
        One verdict per raw entry, in order: the entry, verified, or None. An entry
        that does not decode is None on its own (it belongs to no run: its origin and
        seq are unknown); a run whose hash links break or whose newest signature fails
        is None whole (the peer that sent it gets every entry of it counted invalid).
        Never raises for hostile input.
    """
    decoded: list[VerifiedEntry | None] = []
    open_runs: dict[bytes, list[int]] = {}
    runs: list[list[int]] = []
    for index, raw in enumerate(raws):
        try:
            entry = _chain_member(raw)
        except EntraideError:
            decoded.append(None)
            continue
        decoded.append(entry)
        key = entry.origin.raw
        run = open_runs.get(key)
        last = None if run is None else decoded[run[-1]]
        if (run is not None and last is not None and last.seq + 1 == entry.seq
                and len(run) < MAX_RUN_ENTRIES):
            run.append(index)
        else:
            open_runs[key] = [index]
            runs.append(open_runs[key])
    out: list[VerifiedEntry | None] = [None] * len(decoded)
    for run in runs:
        chain = [e for i in run if (e := decoded[i]) is not None]  # all decoded
        try:
            for older, newer in pairwise(chain):
                check_successor((older.seq, older.hash), newer)
            _check_signature(chain[-1])
        except EntraideError:
            continue  # refused whole
        for i, entry in zip(run, chain, strict=True):
            out[i] = entry
    return out


def fork_in_run(held: Callable[[int], VerifiedEntry | None],
                raws: Sequence[bytes]) -> ForkProof | None:
    """The first fork between a run from a peer and the entries this node holds.

    Use it when :func:`verify_run` refused a run with a ``ChainError``, or on any run
    that overlaps the held chain: the run's entries are compared by header hash with
    ``held(seq)`` (the stored entry of that seq of the run's origin, or None), and the
    first one that differs is verified in full, signature included, before it makes a
    proof. A differing entry whose own signature fails is no evidence and is skipped.

    Entries that do not decode are skipped: they prove nothing.

    Raises:
        OversizeError: more than ``MAX_RUN_ENTRIES`` entries.
    """
    if len(raws) > MAX_RUN_ENTRIES:
        raise OversizeError(f"a run holds at most {MAX_RUN_ENTRIES} entries")
    for raw in raws:
        try:
            candidate = _chain_member(raw)
        except EncodingError:
            continue  # not an entry: no evidence of anything
        mine = held(candidate.seq)
        if mine is None or mine.origin != candidate.origin or candidate.hash == mine.hash:
            continue
        try:
            checked = verify_entry(raw)
        except EntraideError:
            continue
        proof = detect_fork(mine, checked)
        if proof is not None:
            return proof
    return None
