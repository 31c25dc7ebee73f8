"""Backups of a whole node: one archive file, taken while the node runs, restored whole.

An archive is an uncompressed tar file (docs/operations.md, "Back up and restore")::

    manifest.json           first: format, versions, node name and key, every member's
                            size and SHA-256
    entraide.toml           the configuration, as stored
    peers.toml              the trust list, as stored
    tokens.toml             the API token hashes, as stored (when the node has tokens)
    node.key                the key file exactly as stored: a sealed key stays sealed
    node.pub                the public key
    ledger.sqlite3          the ledger, a consistent copy (SQLite's online backup)
    taxii.sqlite3           the TAXII index, a consistent copy (when the node has one)

Invariants:
- A backup never blocks the node's writer for long: the databases are WAL files, and
  SQLite's backup API copies a reader's snapshot while the writer goes on appending to
  the WAL. The node does not need to be stopped, and its ledger lock is not taken.
- The archive is written to a temporary file (mode 0600) beside ``FILE``, fsynced and
  renamed over it: a reader sees no archive or a whole one.
- A restore trusts nothing in the archive until it is checked: only the members above,
  regular files of bounded sizes, each once, in the manifest and matching its SHA-256.
  Everything is unpacked and checked in a staging directory beside the data dir, and only
  then moved into place (one rename); on any error the data dir is untouched.
- A restored data dir holds a ``restored`` marker (:data:`RESTORED_MARKER`): the backup
  is a point in time, and a node whose own chain went further after it must learn its
  own latest entries from its peers before it signs again (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import __version__
from agent.config.datadir import DataDir, read_bounded
from agent.config.settings import load_node_config
from agent.errors import ConfigError, NodeExistsError, StorageError
from agent.storage.schema import SCHEMA_VERSION, lock_ledger, schema_version

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RESTORED_MARKER",
    "BackupManifest",
    "Member",
    "NodeInfo",
    "RestoreResult",
    "create_backup",
    "read_manifest",
    "restore_backup",
    "taxii_index_path",
]

FORMAT = "entraide-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RESTORED_MARKER = "restored"
"""The file a restore leaves in the data dir (JSON: when, from which backup)."""

_KIB = 1024
_MAX_MANIFEST_BYTES = 64 * _KIB
_MAX_CONFIG_BYTES = 1024 * _KIB
_MAX_KEY_BYTES = 4 * _KIB
_MAX_DATABASE_BYTES = 1 << 40  # 1 TiB: far above any ledger, still a bound
_CHUNK = 1024 * _KIB

# Every member an archive may hold: its largest size and whether a node needs it.
_MEMBERS: dict[str, tuple[int, bool]] = {
    "entraide.toml": (_MAX_CONFIG_BYTES, True),
    "peers.toml": (_MAX_CONFIG_BYTES, True),
    "tokens.toml": (_MAX_CONFIG_BYTES, False),
    "node.key": (_MAX_KEY_BYTES, True),
    "node.pub": (_MAX_KEY_BYTES, True),
    "ledger.sqlite3": (_MAX_DATABASE_BYTES, True),
    "taxii.sqlite3": (_MAX_DATABASE_BYTES, False),
}
_CONFIG_FILES = ("entraide.toml", "peers.toml", "tokens.toml", "node.key", "node.pub")
_PRIVATE = {"tokens.toml", "node.key", "ledger.sqlite3", "taxii.sqlite3"}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Member(_Model):
    """One file of the archive."""

    name: str = Field(max_length=32)
    size: int = Field(ge=0, le=_MAX_DATABASE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class NodeInfo(_Model):
    """Who the backed-up node is."""

    name: str = Field(min_length=1, max_length=32)
    key: str = Field(max_length=100)
    fingerprint: str = Field(max_length=200)


class BackupManifest(_Model):
    """``manifest.json``: what the archive holds and what wrote it."""

    format: Literal["entraide-backup"]
    format_version: Literal[1]
    software: str = Field(max_length=64)
    created_ms: int = Field(ge=0)
    schema_version: int = Field(ge=1, le=1_000_000)
    node: NodeInfo
    ledger_path: str = Field(min_length=1, max_length=4096)
    members: tuple[Member, ...] = Field(max_length=len(_MEMBERS))


@dataclass(frozen=True)
class RestoreResult:
    """What a restore put in place."""

    manifest: BackupManifest
    data_dir: Path
    moved_aside: Path | None
    """Where the data dir that was there went (``--force``), else None."""


def taxii_index_path(ledger_path: Path) -> Path:
    """The TAXII index beside the ledger (agent/taxii/app.py opens it there)."""
    return ledger_path.with_name(ledger_path.stem + ".taxii.sqlite3")


# --- backup ------------------------------------------------------------------------


def create_backup(data_dir: DataDir, out: Path, *, now_ms: int | None = None) -> BackupManifest:
    """Write a backup of the node in ``data_dir`` to ``out`` (replaced if it exists).

    Works whether the node runs or not; takes no lock the node holds. Blocking: call it
    from a thread or a command, not the event loop.

    Raises:
        ConfigError: no node in ``data_dir``, or its configuration does not load.
        StorageError: the ledger is missing or cannot be read or copied.
        OSError: ``out`` cannot be written (no partial file is left).
    """
    data_dir.require_node()
    config = load_node_config(data_dir)
    ledger = config.ledger_path(data_dir)
    if not ledger.exists():
        raise StorageError(f"{ledger}: no ledger yet (run the node once before a backup)")
    key = data_dir.public_key()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".entraide-backup-", dir=out.parent) as tmp:
        stage = Path(tmp)
        with data_dir.lock():  # no CLI or admin-API edit half-way through the copies
            files = {name: read_bounded(data_dir.root / name, _MEMBERS[name][0])
                     for name in _CONFIG_FILES if (data_dir.root / name).exists()}
        for name, data in files.items():
            (stage / name).write_bytes(data)
        version = _copy_database(ledger, stage / "ledger.sqlite3")
        taxii = taxii_index_path(ledger)
        if taxii.exists():
            _copy_database(taxii, stage / "taxii.sqlite3", ledger=False)
        members = tuple(_describe(stage / name) for name in _MEMBERS if (stage / name).exists())
        manifest = BackupManifest(
            format=FORMAT, format_version=FORMAT_VERSION, software=__version__,
            created_ms=int(time.time() * 1000) if now_ms is None else now_ms,
            schema_version=version,
            node=NodeInfo(name=config.name, key=key.text, fingerprint=key.fingerprint),
            ledger_path=config.storage.path, members=members)
        _write_archive(out, manifest, stage)
    return manifest


def _copy_database(source: Path, target: Path, *, ledger: bool = True) -> int:
    """A consistent copy of the SQLite file ``source``; returns its schema version.

    SQLite's backup API reads one snapshot (a WAL reader), so the node's writer is not
    blocked; the copy is checked (``quick_check``) before it is archived."""
    try:
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                check = dst.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    raise StorageError(f"{source}: the copy fails SQLite's check: {check}")
                version = schema_version(dst) if ledger else 0
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot copy {source}: {exc}") from exc
    if ledger and version < 1:
        raise StorageError(f"{source}: not an Entraide ledger (no schema version)")
    os.chmod(target, 0o600)
    return version


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(path: Path) -> Member:
    return Member(name=path.name, size=path.stat().st_size, sha256=_sha256(path))


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600 if name in _PRIVATE else 0o644
    info.mtime = 0
    return info


def _write_archive(out: Path, manifest: BackupManifest, stage: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                body = manifest.model_dump_json(indent=2).encode()
                tar.addfile(_tar_info(MANIFEST, len(body)), io.BytesIO(body))
                for member in manifest.members:
                    with open(stage / member.name, "rb") as data:
                        tar.addfile(_tar_info(member.name, member.size), data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- restore -----------------------------------------------------------------------


def read_manifest(archive: Path) -> BackupManifest:
    """The manifest of ``archive``, checked; nothing else is read or trusted.

    Raises:
        StorageError: not an Entraide backup, or a manifest that does not check.
    """
    with _open_tar(archive) as tar:
        return _manifest(archive, tar)


def restore_backup(archive: Path, data_dir: DataDir, *, force: bool = False,
                   now_ms: int | None = None) -> RestoreResult:
    """Restore the node in ``archive`` into ``data_dir`` (which must be new or empty).

    Every member is checked against the manifest in a staging directory beside the data
    dir; only then is the staging directory renamed to the data dir. With ``force``, a
    data dir that holds something (a node) is first renamed aside
    (``<dir>.before-restore-<ms>``), never deleted; its node must be stopped.

    Raises:
        NodeExistsError: the data dir is not empty and ``force`` is not given.
        StorageError: a damaged, truncated or tampered archive, or not a backup, or a
            ledger newer than this software; the node in ``data_dir`` runs (``force``).
        OSError: staging or moving fails. In every case the data dir is left as it was.
    """
    root = data_dir.root
    occupied = root.exists() and (not root.is_dir() or any(root.iterdir()))
    if occupied and not force:
        what = "holds a node" if data_dir.has_node() else "is not empty"
        raise NodeExistsError(f"{root} {what}; restore into a new or empty data dir, "
                              "or pass --force to move it aside first (node stopped)")
    when = int(time.time() * 1000) if now_ms is None else now_ms
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{root.name}.restore-", dir=root.parent))
    try:
        manifest = _unpack(archive, stage)
        _check_staged(stage, manifest)
        marker = {"restored_ms": when, "backup_created_ms": manifest.created_ms,
                  "archive_sha256": _sha256(archive)}
        (stage / RESTORED_MARKER).write_text(json.dumps(marker) + "\n")
        with _node_stopped(data_dir, occupied):
            aside = None
            if occupied:
                aside = root.with_name(f"{root.name}.before-restore-{when}")
                os.rename(root, aside)
            elif root.exists():
                root.rmdir()
            os.rename(stage, root)
    except (ConfigError, StorageError) as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise type(exc)(f"{exc}; nothing restored") from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return RestoreResult(manifest, root, aside)


@contextlib.contextmanager
def _node_stopped(data_dir: DataDir, occupied: bool) -> Iterator[None]:
    """Hold the existing ledger's lock (refusing a running node) while it is moved."""
    if not occupied or not data_dir.has_node():
        yield
        return
    try:
        ledger = load_node_config(data_dir).ledger_path(data_dir)
    except ConfigError:
        ledger = data_dir.ledger_path
    try:
        fd = lock_ledger(ledger)
    except StorageError as exc:
        raise StorageError(f"{exc}; 'entraide restore' needs the node stopped") from exc
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(archive, mode="r:")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, EOFError) as exc:
        raise StorageError(f"{archive}: not an Entraide backup (not a tar file)") from exc
    try:
        yield tar
    except (tarfile.TarError, EOFError) as exc:
        raise StorageError(f"{archive}: damaged or truncated ({exc})") from exc
    finally:
        tar.close()


def _manifest(archive: Path, tar: tarfile.TarFile) -> BackupManifest:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg() \
            or first.size > _MAX_MANIFEST_BYTES:
        raise StorageError(f"{archive}: not an Entraide backup (no manifest first)")
    body = _read_all(tar, first, _MAX_MANIFEST_BYTES)
    try:
        manifest = BackupManifest.model_validate_json(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "manifest"
        raise StorageError(f"{archive}: manifest: {where}: {problem['msg']}") from exc
    names = [m.name for m in manifest.members]
    unknown = [n for n in names if n not in _MEMBERS]
    if unknown or len(set(names)) != len(names):
        raise StorageError(f"{archive}: manifest lists unknown or repeated members")
    missing = [n for n, (_, needed) in _MEMBERS.items() if needed and n not in names]
    if missing:
        raise StorageError(f"{archive}: manifest lacks {', '.join(missing)}")
    for member in manifest.members:
        if member.size > _MEMBERS[member.name][0]:
            raise StorageError(f"{archive}: {member.name} is larger than allowed")
    if manifest.schema_version > SCHEMA_VERSION:
        raise StorageError(
            f"{archive}: its ledger is at schema {manifest.schema_version}, newer than this "
            f"Entraide's {SCHEMA_VERSION}: restore it with a newer release")
    return manifest


def _read_all(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    reader = tar.extractfile(info)
    if reader is None:
        raise tarfile.TarError(f"{info.name}: not a regular file")
    data = reader.read(limit + 1)
    if len(data) != info.size or len(data) > limit:
        raise tarfile.TarError(f"{info.name}: size does not match its header")
    return data


def _unpack(archive: Path, stage: Path) -> BackupManifest:
    """Check ``archive`` member by member against its manifest, writing into ``stage``."""
    with _open_tar(archive) as tar:
        manifest = _manifest(archive, tar)
        expected = {m.name: m for m in manifest.members}
        seen: set[str] = set()
        while (info := tar.next()) is not None:
            member = expected.get(info.name)
            if member is None or info.name in seen or not info.isreg():
                raise StorageError(f"{archive}: unexpected member {info.name[:64]!r}")
            if info.size != member.size:
                raise StorageError(f"{archive}: {info.name} is not the size the manifest "
                                   "gives (damaged or tampered)")
            seen.add(info.name)
            reader = tar.extractfile(info)
            if reader is None:
                raise StorageError(f"{archive}: {info.name} is not a regular file")
            if _copy_hashed(reader, stage / info.name, member.size) != member.sha256:
                raise StorageError(f"{archive}: {info.name} does not match its SHA-256 in the "
                                   "manifest (damaged or tampered)")
        if seen != set(expected):
            raise StorageError(f"{archive}: ends early: {', '.join(sorted(set(expected) - seen))} "
                               "missing (truncated)")
    return manifest


def _copy_hashed(reader: IO[bytes], target: Path, size: int) -> str:
    digest = hashlib.sha256()
    copied = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := reader.read(min(_CHUNK, size - copied + 1)):
            copied += len(chunk)
            if copied > size:
                raise StorageError(f"{target.name}: longer than the manifest says")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if copied != size:
        raise StorageError(f"{target.name}: shorter than the manifest says (truncated)")
    return digest.hexdigest()


def _check_staged(stage: Path, manifest: BackupManifest) -> None:
    """The staged files make a node: config loads, key matches, ledger is a ledger."""
    staged = DataDir(stage)
    os.chmod(stage, 0o700)
    for name in ("entraide.toml", "peers.toml", "node.pub"):
        os.chmod(stage / name, 0o644)
    config = load_node_config(staged)
    if config.name != manifest.node.name or config.storage.path != manifest.ledger_path:
        raise StorageError("the backup's entraide.toml does not match its manifest")
    key = staged.public_key()
    if key.text != manifest.node.key:
        raise StorageError("the backup's node key does not match its manifest")
    ledger = config.ledger_path(staged)
    try:
        inside = ledger.resolve().relative_to(stage.resolve())
    except ValueError:
        raise ConfigError(
            f"the backup's ledger path {manifest.ledger_path!r} is outside the data dir; "
            "restore supports ledgers kept inside it") from None
    ledger.parent.mkdir(parents=True, exist_ok=True)
    if Path(inside) != Path("ledger.sqlite3"):
        os.rename(stage / "ledger.sqlite3", ledger)
    if (stage / "taxii.sqlite3").exists():
        os.rename(stage / "taxii.sqlite3", taxii_index_path(ledger))
    try:
        conn = sqlite3.connect(ledger.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            version = schema_version(conn)
            check = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"the backup's ledger does not open: {exc}") from exc
    if version != manifest.schema_version or check is None or check[0] != "ok":
        raise StorageError("the backup's ledger does not match its manifest or fails "
                           "SQLite's check")
