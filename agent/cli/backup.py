"""``entraide backup FILE`` and ``entraide restore FILE``: a whole node in one archive.

``backup`` works while the node runs (SQLite's online backup reads a snapshot; the node
keeps writing); ``restore`` needs the node stopped and a new or empty data dir, unless
``--force`` moves the old one aside. The archive format and its checks are
:mod:`agent.storage.backup`'s. A restored node carries a ``restored`` marker: see
docs/operations.md, "Back up and restore", for why it must catch up its own chain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.lang import _
from agent.config.datadir import DataDir
from agent.storage.backup import create_backup, restore_backup

__all__ = ["backup_command", "restore_command"]


def backup_command(args: argparse.Namespace, data_dir: DataDir) -> int:
    """Write the node in ``data_dir`` to the archive ``args.file``.

    Raises:
        ConfigError, StorageError, OSError: see :func:`create_backup` (no file is left).
    """
    manifest = create_backup(data_dir, Path(args.file))
    if args.json:
        print(json.dumps({"file": args.file, **manifest.model_dump(mode="json")}))
    else:
        size = sum(m.size for m in manifest.members)
        print(_("Backed up node {name} ({fingerprint}) to {file}: {files} files, {size} "
                "bytes, ledger schema {schema}").format(
            name=manifest.node.name, fingerprint=manifest.node.fingerprint, file=args.file,
            files=len(manifest.members), size=size, schema=manifest.schema_version))
    return 0


def restore_command(args: argparse.Namespace, data_dir: DataDir) -> int:
    """Restore the archive ``args.file`` into ``data_dir`` (new or empty, or ``--force``).

    Raises:
        NodeExistsError, StorageError, ConfigError, OSError: see :func:`restore_backup`;
            the data dir is left as it was.
    """
    result = restore_backup(Path(args.file), data_dir, force=args.force)
    node = result.manifest.node
    if args.json:
        print(json.dumps({"data_dir": str(result.data_dir), "node": node.model_dump(),
                          "schema_version": result.manifest.schema_version,
                          "created_ms": result.manifest.created_ms,
                          "moved_aside": None if result.moved_aside is None
                          else str(result.moved_aside)}))
        return 0
    if result.moved_aside is not None:
        print(_("Moved the previous data dir to {dir}").format(dir=result.moved_aside))
    print(_("Restored node {name} ({fingerprint}) into {dir}. If this node signed entries "
            "after the backup, read docs/operations.md, 'Back up and restore', before it "
            "signs again.").format(name=node.name, fingerprint=node.fingerprint,
                                   dir=result.data_dir))
    return 0
