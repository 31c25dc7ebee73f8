"""Ledger maintenance: full verification, export and import of entries.

These work on a *snapshot*: a connection inside one read transaction, so a verify or an
export running on a live node sees one consistent state while writes go on (WAL keeps
the snapshot's pages until it ends). The ledger wraps them (``Ledger.verify``,
``Ledger.export_entries``, ``Ledger.import_entries``).

Export format (this module is its definition)::

    "ENTRAIDE-LEDGER\\x02"
    record*  : kind (1 byte: "E" entry, "F" fork proof) || u32 length || bytes
    trailer  : "Z" || u32 16 || u64 entries || u64 fork proofs

An "E" record is an entry in wire form (docs/protocol.md §3), header-only when its
body was dropped. Version 1 files held protocol v1 entries and are refused by name.
Entries come in storage order, so each origin's chain is in chain order and an import
stores it without buffering. Import verifies every entry from its bytes: the file is
as hostile as a peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import struct
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import aiosqlite

from agent.errors import StorageError
from agent.storage.types import (
    BodyState,
    Head,
    ImportResult,
    IngestResult,
    VerifyProblem,
    VerifyReport,
)
from protocol.entries import (
    MAX_ENTRY_BYTES,
    ForkProof,
    VerifiedEntry,
    check_successor,
    decode_fork_proof,
    join_entry,
    verify_entry,
)
from protocol.errors import ChainError, EncodingError, EntraideError
from protocol.keys import PublicKey

__all__ = ["export_snapshot", "import_file", "verify_snapshot"]

CHUNK = 512
_MAGIC = b"ENTRAIDE-LEDGER\x02"
_V1_MAGIC = b"ENTRAIDE-LEDGER\x01"
_RECORD = struct.Struct(">cI")
_TRAILER = struct.Struct(">QQ")
_MAX_PROOF_BYTES = 2 * MAX_ENTRY_BYTES + 64


async def rows(conn: aiosqlite.Connection, sql: str, args: Sequence[Any] = ()) -> list[Any]:
    """All rows of a query; sqlite errors become StorageError."""
    try:
        return list(await conn.execute_fetchall(sql, args))
    except sqlite3.Error as exc:
        raise StorageError(f"ledger read failed: {exc}") from exc


# --- verify -----------------------------------------------------------------------


async def verify_snapshot(snap: aiosqlite.Connection) -> VerifyReport:
    """Re-check every stored entry from its bytes: signature, id, seq, chain and head.

    A header whose body was dropped (or never came) is checked as a chain member; a
    body that is there is checked against its header's hash. Counts the entries on the
    chains by body state (``VerifyReport.bodies``). Reports the first broken entry of
    each origin (origin, seq, what), every fork proof that no longer verifies, and
    entries not on any origin's chain. A database too damaged to read is reported as a
    problem with no origin.
    """
    problems: list[VerifyProblem] = []
    total = proofs = 0
    bodies = {state.value: 0 for state in BodyState}
    origins: list[Any] = []
    try:
        origins = await rows(snap, "SELECT origin_id, key, head_seq, head_hash FROM origins "
                                   "ORDER BY key")
        for origin_id, key_raw, head_seq, head_hash in origins:
            key = PublicKey(key_raw)
            head, problem, count = await _verify_origin(snap, origin_id, key, bodies)
            total += count
            if problem is None:
                problem = _check_head(key, head, head_seq, head_hash)
            if problem is not None:
                problems.append(problem)
        for key_raw, seq, proof in await rows(
                snap, "SELECT g.key, f.seq, f.proof FROM forks f JOIN origins g USING (origin_id)"):
            proofs += 1
            try:
                if not isinstance(proof, bytes):
                    raise EncodingError("not stored as bytes")
                decoded = decode_fork_proof(proof)
                if decoded.origin.raw != key_raw or decoded.seq != seq:
                    raise ChainError("the proof is not about its row's origin and seq")
            except EntraideError as exc:
                problems.append(VerifyProblem(PublicKey(key_raw), seq,
                                              f"fork proof does not verify: {exc}"))
        stored = (await rows(snap, "SELECT count(*) FROM entries"))[0][0]
        if stored != total and not problems:
            problems.append(VerifyProblem(None, None, f"{stored} entries stored, only "
                                          f"{total} on the origins' chains"))
    except StorageError as exc:
        problems.append(VerifyProblem(None, None, str(exc)))
    except EntraideError as exc:
        problems.append(VerifyProblem(None, None, f"damaged origins table: {exc}"))
    return VerifyReport(total, len(origins), proofs, tuple(problems), bodies)


async def _verify_origin(snap: aiosqlite.Connection, origin_id: int, key: PublicKey,
                         bodies: dict[str, int]
                         ) -> tuple[Head | None, VerifyProblem | None, int]:
    """Walk one origin's chain; the next chunk is read while this one is checked.
    Adds the body state of each entry that checks to ``bodies``."""
    head: Head | None = None
    total = 0
    sql = ("SELECT seq, hash, header, body, body_state FROM entries WHERE origin_id = ? "
           "AND seq > ? ORDER BY seq LIMIT ?")
    chunk = await rows(snap, sql, (origin_id, 0, CHUNK))
    while chunk:
        check = asyncio.ensure_future(asyncio.to_thread(_check_chain, key, chunk, head,
                                                        bodies))
        try:
            upcoming = await rows(snap, sql, (origin_id, chunk[-1][0], CHUNK))
        finally:
            head, problem, count = await check
        total += count
        if problem is not None:
            return head, problem, total
        chunk = upcoming
    return head, None, total


def _check_chain(key: PublicKey, chunk: list[Any], head: Head | None,
                 bodies: dict[str, int]) -> tuple[Head | None, VerifyProblem | None, int]:
    """Verify consecutive stored entries of one origin (runs in a worker thread)."""
    count = 0
    for seq, stored_hash, header, body, state in chunk:
        if isinstance(state, bytes):  # the snapshot reads text as bytes
            state = state.decode("ascii", "replace")
        if not isinstance(header, bytes) or not isinstance(body, bytes | None):
            return head, VerifyProblem(key, seq, "entry is not stored as bytes"), count
        if (body is not None) != (state == BodyState.PRESENT) or state not in bodies:
            return head, VerifyProblem(key, seq, f"body state {state!r} does not match "
                                       f"the stored body"), count
        try:
            entry = verify_entry(join_entry(header, body))
        except EntraideError as exc:
            return head, VerifyProblem(key, seq, f"entry bytes do not verify: {exc}"), count
        if entry.origin != key:
            return head, VerifyProblem(key, seq, "entry is signed by another origin"), count
        if entry.seq != seq:
            return head, VerifyProblem(key, seq, f"entry says seq {entry.seq}"), count
        if entry.hash != stored_hash:
            return head, VerifyProblem(key, seq, "stored id differs from the entry's hash"), count
        try:
            check_successor(head, entry)
        except ChainError as exc:
            return head, VerifyProblem(key, seq, f"chain broken: {exc}"), count
        head = (entry.seq, entry.hash)
        bodies[state] += 1
        count += 1
    return head, None, count


def _check_head(key: PublicKey, head: Head | None, head_seq: int,
                head_hash: bytes | None) -> VerifyProblem | None:
    seq, last = (0, None) if head is None else head
    if seq != head_seq:
        return VerifyProblem(key, seq, f"the chain ends at seq {seq} but the recorded head "
                             f"is seq {head_seq}")
    if last != head_hash:
        return VerifyProblem(key, seq, "the last entry is not the recorded head")
    return None


# --- export -----------------------------------------------------------------------


async def export_snapshot(snap: aiosqlite.Connection, path: str | os.PathLike[str]) -> int:
    """Write every entry and fork proof of the snapshot to ``path``; return the entry count.

    The file is written under a temporary name, fsynced, then renamed: a crash never
    leaves a half export under the final name.

    Raises:
        StorageError: the file cannot be written, or the database read failed.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        out = await asyncio.to_thread(open, tmp, "wb")
    except OSError as exc:
        raise StorageError(f"cannot write the export {target}: {exc}") from exc
    count = proofs = 0
    try:
        await asyncio.to_thread(out.write, _MAGIC)
        after = 0
        while chunk := await rows(snap, "SELECT entry_no, header, body FROM entries "
                                        "WHERE entry_no > ? ORDER BY entry_no LIMIT ?",
                                  (after, CHUNK)):
            raws = [join_entry(header, body) for _no, header, body in chunk]
            data = b"".join(_RECORD.pack(b"E", len(raw)) + raw for raw in raws)
            await asyncio.to_thread(out.write, data)
            count += len(chunk)
            after = chunk[-1][0]
        for (proof,) in await rows(snap, "SELECT proof FROM forks ORDER BY origin_id, seq"):
            await asyncio.to_thread(out.write, _RECORD.pack(b"F", len(proof)) + proof)
            proofs += 1
        trailer = _RECORD.pack(b"Z", _TRAILER.size) + _TRAILER.pack(count, proofs)
        await asyncio.to_thread(_finish, out, trailer)
        await asyncio.to_thread(os.replace, tmp, target)
    except OSError as exc:
        raise StorageError(f"cannot write the export {target}: {exc}") from exc
    finally:
        out.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
    return count


def _finish(out: BinaryIO, trailer: bytes) -> None:
    out.write(trailer)
    out.flush()
    os.fsync(out.fileno())


# --- import -----------------------------------------------------------------------


async def import_file(
    path: str | os.PathLike[str],
    ingest: Callable[[list[VerifiedEntry]], Awaitable[IngestResult]],
    ingest_fork_proof: Callable[[ForkProof], Awaitable[bool]],
    *,
    batch_size: int,
) -> ImportResult:
    """Verify the entries of an export and hand them to ``ingest`` in batches.

    Entries that do not verify are counted and never passed on. Fork proofs go to
    ``ingest_fork_proof`` after the entries before them (as they were stored).

    Raises:
        StorageError: not an export, a record header out of bounds (framing lost), or
            the file cannot be read.
    """
    source = Path(path)
    try:
        stream = await asyncio.to_thread(open, source, "rb")
    except OSError as exc:
        raise StorageError(f"cannot read the export {source}: {exc}") from exc
    tally = _ImportTally()
    pending: list[bytes] = []
    try:
        magic = await asyncio.to_thread(stream.read, len(_MAGIC))
        if magic == _V1_MAGIC:
            raise StorageError(f"{source} holds protocol v1 entries, which this version "
                               f"cannot read")
        if magic != _MAGIC:
            raise StorageError(f"{source} is not an Entraide ledger export")
        while True:
            kind, data = await asyncio.to_thread(_read_record, stream)
            if kind is None:
                break
            if kind == b"Z":
                tally.complete = _TRAILER.unpack(data) == (tally.entries, tally.proofs)
                break
            tally.records += 1
            if kind == b"E":
                tally.entries += 1
                pending.append(data)
                if len(pending) >= batch_size:
                    await tally.flush(pending, ingest)
                continue
            tally.proofs += 1
            if pending:
                await tally.flush(pending, ingest)
            try:
                proof = decode_fork_proof(data)
            except EntraideError as exc:
                tally.invalid_one(f"fork proof: {exc}")
                continue
            tally.forks += int(await ingest_fork_proof(proof))
        if pending:
            await tally.flush(pending, ingest)
    except OSError as exc:
        raise StorageError(f"cannot read the export {source}: {exc}") from exc
    finally:
        stream.close()
    return tally.result()


class _ImportTally:
    def __init__(self) -> None:
        self.records = self.entries = self.proofs = self.invalid = 0
        self.stored = self.duplicates = self.refused = self.forks = 0
        self.first_invalid: str | None = None
        self.complete = False

    def invalid_one(self, reason: str) -> None:
        self.invalid += 1
        self.first_invalid = self.first_invalid or reason

    async def flush(self, pending: list[bytes],
                    ingest: Callable[[list[VerifiedEntry]], Awaitable[IngestResult]]) -> None:
        checked = await asyncio.to_thread(_verify_all, list(pending))
        pending.clear()
        valid = [e for e in checked if isinstance(e, VerifiedEntry)]
        for reason in checked:
            if isinstance(reason, str):
                self.invalid_one(reason)
        if valid:
            result = await ingest(valid)
            self.stored += result.stored
            self.duplicates += result.duplicates
            self.refused += result.refused + result.dropped
            self.forks += result.forks

    def result(self) -> ImportResult:
        return ImportResult(self.records, self.invalid, self.first_invalid, self.stored,
                            self.duplicates, self.refused, self.forks, self.complete)


def _verify_all(raws: list[bytes]) -> list[VerifiedEntry | str]:
    out: list[VerifiedEntry | str] = []
    for raw in raws:
        try:
            out.append(verify_entry(raw))
        except EntraideError as exc:
            out.append(f"{type(exc).__name__}: {exc}")
    return out


def _read_record(stream: BinaryIO) -> tuple[bytes | None, bytes]:
    """The next record; (None, b"") at the end of the file or on a truncated record."""
    header = stream.read(_RECORD.size)
    if len(header) != _RECORD.size:
        return None, b""
    kind, length = _RECORD.unpack(header)
    bound = {b"E": MAX_ENTRY_BYTES, b"F": _MAX_PROOF_BYTES, b"Z": _TRAILER.size}.get(kind)
    if bound is None or length > bound or (kind == b"Z" and length != _TRAILER.size):
        raise StorageError(f"damaged export: bad record header {header.hex()}")
    data = stream.read(length)
    if len(data) != length:
        return None, b""
    return kind, data
