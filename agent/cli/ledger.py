"""``entraide ledger export FILE`` and ``entraide ledger import FILE``: backup and restore.

Both work on a stopped node: they open the ledger file themselves, and the ledger
admits one process at a time, so with the node running they stop at once with one
line saying so. The export format and what an import checks are
:mod:`agent.storage.maint`'s (every entry is verified from its bytes: the file is as
hostile as a peer).

An import is all or nothing: the whole file is read and verified first, without
storing anything; only a file that is complete (its trailer matches what was read)
and whose every entry and fork proof verifies is then stored. Entries of origins this
node does not trust, or that are already stored, are counted, not errors (the same
rules as replication).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from agent.cli.lang import _, localize_error
from agent.config.datadir import DataDir
from agent.config.settings import load_node_config, load_trust_list
from agent.errors import ConfigError, StorageError
from agent.storage.ledger import Ledger
from agent.storage.maint import import_file
from agent.storage.schema import lock_ledger
from agent.storage.types import ImportResult, IngestResult
from protocol.entries import ForkProof, VerifiedEntry
from protocol.keys import Identity

__all__ = ["export_command", "import_command"]


def export_command(args: argparse.Namespace, data_dir: DataDir) -> int:
    """Write every entry and fork proof of the ledger to ``args.file``.

    Raises:
        ConfigError: no node, or no ledger yet.
        StorageError: the ledger is in use (the node runs), or cannot be read, or the
            file cannot be written (no partial file is left).
    """
    counts = asyncio.run(_export(data_dir, Path(args.file), args.passphrase_env))
    if args.json:
        print(json.dumps(counts))
    else:
        print(_("Exported {entries} entries and {proofs} fork proofs to {file}").format(
            entries=counts["entries"], proofs=counts["fork_proofs"], file=args.file))
    return 0


def import_command(args: argparse.Namespace, data_dir: DataDir) -> int:
    """Verify the export ``args.file``, then store its entries in this node's ledger.

    Raises:
        StorageError: not an export, damaged, truncated, or an entry or proof that
            does not verify (nothing stored); the ledger is in use (the node runs).
    """
    result = asyncio.run(_import(data_dir, Path(args.file), args.passphrase_env))
    counts = _result_json(result)
    if args.json:
        print(json.dumps(counts))
    else:
        print(_("Imported {file}: {stored} entries stored, {duplicates} already here, "
                "{refused} refused (untrusted or forked origins), {forks} new forks").format(
            file=args.file, stored=result.stored, duplicates=result.duplicates,
            refused=result.refused, forks=result.forks))
    return 0


async def _export(data_dir: DataDir, file: Path, passphrase_env: str) -> dict[str, Any]:
    path = _ledger_path(data_dir)
    if not path.exists():
        raise ConfigError(_("{path}: no ledger yet (the node has never run)").format(
            path=path))
    identity = _claim(data_dir, path, passphrase_env, "export")
    ledger = await Ledger.open(path, identity=identity, is_trusted_origin=lambda _key: True)
    try:
        entries = await ledger.export_entries(file)
        proofs = len(await ledger.forks())
    finally:
        await ledger.close()
    return {"file": str(file), "entries": entries, "fork_proofs": proofs}


async def _import(data_dir: DataDir, file: Path, passphrase_env: str) -> ImportResult:
    path = _ledger_path(data_dir)
    identity = _claim(data_dir, path, passphrase_env, "import")
    checked = await import_file(file, _check_entries, _check_proof, batch_size=1000)
    if checked.invalid:
        raise StorageError(_("{file}: {invalid} of its {records} records do not verify "
                             "(first: {first}); nothing imported").format(
            file=file, invalid=checked.invalid, records=checked.records,
            first=checked.first_invalid))
    if not checked.complete:
        raise StorageError(_("{file} ends early or its trailer does not match what it "
                             "holds (truncated or damaged); nothing imported").format(
            file=file))
    trust = load_trust_list(data_dir)
    # A member's retired keys and this node's own earlier keys (a key rotation) still
    # author their chains (agent/node/keys.py).
    from agent.config.trust import previous_keys

    own = {r.key for r in previous_keys(data_dir)}
    ledger = await Ledger.open(path, identity=identity, is_trusted_origin=lambda k: (
        trust.trusted_until(k) != -1 or k in own))
    try:
        return await ledger.import_entries(file)
    finally:
        await ledger.close()


def _ledger_path(data_dir: DataDir) -> Path:
    data_dir.require_node()
    return load_node_config(data_dir).ledger_path(data_dir)


def _claim(data_dir: DataDir, path: Path, passphrase_env: str, verb: str) -> Identity:
    """This node's identity, once sure no process (a running node) holds the ledger."""
    try:
        os.close(lock_ledger(path))
    except StorageError as exc:
        raise StorageError(_("{error}; 'entraide ledger {verb}' needs the node stopped")
                           .format(error=localize_error(str(exc)), verb=verb)) from exc
    passphrase = os.environ.get(passphrase_env, "").encode() or None
    return data_dir.load_identity(passphrase)


async def _check_entries(entries: list[VerifiedEntry]) -> IngestResult:
    return IngestResult()  # the check pass stores nothing


async def _check_proof(proof: ForkProof) -> bool:
    return False


def _result_json(result: ImportResult) -> dict[str, Any]:
    return {"records": result.records, "stored": result.stored,
            "duplicates": result.duplicates, "refused": result.refused,
            "forks": result.forks, "invalid": result.invalid, "complete": result.complete}
