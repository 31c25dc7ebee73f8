"""The data dir: where a node's files live, and how they are written and read.

Layout (docs/operations.md, "Files")::

    <data-dir>/            0700
      entraide.toml        0644  node name, jurisdiction, listeners, gossip, log, storage
      peers.toml           0644  the trust list ([[peer]] tables)
      tokens.toml          0600  API token hashes
      node.key             0600  the Ed25519 seed, plain or sealed with a passphrase
      node.pub             0644  the public key text, so commands that only need it
                                 (id, peers add) never ask for the passphrase
      ledger.sqlite3             the ledger (written by the storage layer)
      .lock                0600  advisory lock held while a command edits a file

Invariants:
- Every file this module writes is replaced atomically (temporary file in the same
  directory, fsync, rename, fsync of the directory): a reader, such as the running
  daemon watching peers.toml, sees the old file or the new one, never a torn one.
- ``node.key`` is published with a hard link, so it is never overwritten.
- Every read is bounded in size.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError, NodeExistsError
from protocol.errors import KeyFormatError
from protocol.keys import (
    DEFAULT_KDF,
    Identity,
    PublicKey,
    decode_key_file,
    encode_key_file,
    key_file_is_sealed,
)

__all__ = [
    "DEFAULT_DATA_DIR",
    "ENV_HOME",
    "DataDir",
    "FileStamp",
    "atomic_write",
    "file_stamp",
    "passphrase_from_env",
    "read_bounded",
    "resolve_data_dir",
    "take_passphrase_from_env",
]

ENV_HOME = "ENTRAIDE_HOME"
DEFAULT_DATA_DIR = "entraide-data"
_MAX_KEY_FILE_BYTES = 4096


def resolve_data_dir(
    arg: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Path:
    """The data dir: ``arg`` (``--data-dir``), else ``$ENTRAIDE_HOME``, else
    ``./entraide-data``. Empty values count as unset. Nothing is checked on disk."""
    env = os.environ if environ is None else environ
    if arg is not None and os.fspath(arg) != "":
        return Path(arg)
    home = env.get(ENV_HOME, "")
    return Path(home) if home else Path(DEFAULT_DATA_DIR)


def passphrase_from_env(var: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The passphrase held in environment variable ``var``, as UTF-8 bytes.

    The passphrase is passed by variable name, never on the command line, so it
    does not show in ``ps`` or shell history.

    Raises:
        ConfigError: the variable is unset or empty.
    """
    env = os.environ if environ is None else environ
    value = env.get(var, "")
    if not value:
        raise ConfigError(f"environment variable {var} is unset or empty (passphrase expected)")
    return value.encode("utf-8")


def take_passphrase_from_env(var: str, *, required: bool) -> bytes | None:
    """:func:`passphrase_from_env`, then the variable deleted from this process's
    environment, so no process started later (helper processes, hooks) inherits it and
    ``/proc/PID/environ`` no longer shows it. Unset and not ``required``: None.

    Raises:
        ConfigError: ``required`` and the variable is unset or empty.
    """
    if not required and not os.environ.get(var):
        os.environ.pop(var, None)
        return None
    try:
        return passphrase_from_env(var)
    finally:
        os.environ.pop(var, None)


@dataclass(frozen=True)
class FileStamp:
    """What changes when a file is replaced or rewritten; compare two to detect a change."""

    mtime_ns: int
    ctime_ns: int
    size: int
    inode: int
    device: int


def file_stamp(path: Path) -> FileStamp | None:
    """The file's current stamp, or None when it does not exist.

    Raises:
        OSError: other than the file not existing.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """Read a whole file of at most ``max_bytes``.

    Raises:
        ConfigError: the file is larger.
        OSError: it cannot be read (FileNotFoundError included).
    """
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes} bytes")
    return data


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix.

    The data is written to a temporary file in the same directory, fsynced, then
    renamed over ``path`` (or, with ``exclusive``, hard-linked to it, which fails if
    ``path`` exists); the directory is fsynced so the rename survives power loss.

    Raises:
        FileExistsError: ``exclusive`` and ``path`` already exists (nothing written).
        OSError: any other I/O failure (the temporary file is removed).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class DataDir:
    """A node's data dir and the paths of its files (see the module docstring)."""

    root: Path

    CONFIG_FILE = "entraide.toml"
    PEERS_FILE = "peers.toml"
    TOKENS_FILE = "tokens.toml"
    KEY_FILE = "node.key"
    PUB_FILE = "node.pub"
    LEDGER_FILE = "ledger.sqlite3"
    LOCK_FILE = ".lock"

    @property
    def config_path(self) -> Path:
        return self.root / self.CONFIG_FILE

    @property
    def peers_path(self) -> Path:
        return self.root / self.PEERS_FILE

    @property
    def tokens_path(self) -> Path:
        return self.root / self.TOKENS_FILE

    @property
    def key_path(self) -> Path:
        return self.root / self.KEY_FILE

    @property
    def pub_path(self) -> Path:
        return self.root / self.PUB_FILE

    @property
    def ledger_path(self) -> Path:
        return self.root / self.LEDGER_FILE

    def has_node(self) -> bool:
        """True when a node was initialised here (its ``node.key`` exists)."""
        return self.key_path.exists()

    def require_node(self) -> None:
        """Raises ConfigError, with the way out, when no node was initialised here."""
        if not self.has_node() or not self.config_path.exists():
            raise ConfigError(
                f"no Entraide node in {self.root} (run 'entraide init --name NAME' "
                "or pass --data-dir / set ENTRAIDE_HOME)"
            )

    def create(self) -> None:
        """Create the directory (and parents) if needed and make it private (0700).

        Raises:
            ConfigError: the path exists and is not a directory.
            OSError: it cannot be created or its mode set.
        """
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root}: exists and is not a directory")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the data dir's advisory lock (blocking) while editing its files.

        CLI commands and the daemon's admin API both take it around a
        read-modify-write, so concurrent edits of peers.toml or tokens.toml do not
        lose each other's changes. Not reentrant: never nest it. Blocking: call it
        from a thread, not the event loop.
        """
        fd = os.open(self.root / self.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # --- identity ------------------------------------------------------------------

    def write_identity(
        self,
        identity: Identity,
        passphrase: bytes | None = None,
        *,
        randbytes: Callable[[int], bytes] = os.urandom,
        opslimit: int = DEFAULT_KDF.opslimit,
        memlimit: int = DEFAULT_KDF.memlimit,
    ) -> None:
        """Write ``node.pub`` then ``node.key`` (0600, sealed if ``passphrase``).

        ``opslimit``/``memlimit`` are argon2id's costs (tests pass cheap ones).

        Raises:
            NodeExistsError: ``node.key`` already exists (it is never overwritten).
            OSError: on I/O failure.
        """
        if passphrase is None:
            data = encode_key_file(identity)
        else:
            data = encode_key_file(
                identity, passphrase, salt=randbytes(16), nonce=randbytes(24),
                opslimit=opslimit, memlimit=memlimit,
            )
        if self.has_node():
            raise NodeExistsError(f"{self.key_path}: a node already exists here")
        atomic_write(self.pub_path, (identity.public_key.text + "\n").encode("ascii"))
        try:
            atomic_write(self.key_path, data, mode=0o600, exclusive=True)
        except FileExistsError as exc:
            raise NodeExistsError(f"{self.key_path}: a node already exists here") from exc

    def key_is_sealed(self) -> bool:
        """True when ``node.key`` is sealed with a passphrase.

        Raises:
            ConfigError: node.key is missing or unreadable.
        """
        return key_file_is_sealed(self._read_key_file())

    def public_key(self) -> PublicKey:
        """This node's public key, from ``node.pub`` (no passphrase needed), or from a
        plain ``node.key`` when ``node.pub`` is missing.

        Raises:
            ConfigError: neither gives a key, or they disagree.
        """
        data = self._read_key_file()
        from_key = None if key_file_is_sealed(data) else self._decode(data, None).public_key
        try:
            text = read_bounded(self.pub_path, _MAX_KEY_FILE_BYTES).decode("ascii").strip()
        except FileNotFoundError:
            if from_key is None:
                raise ConfigError(
                    f"{self.pub_path}: missing, and node.key is sealed (run "
                    "'entraide id --passphrase-env VAR' to check the key)"
                ) from None
            return from_key
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.pub_path}: unreadable: {exc}") from exc
        try:
            key = PublicKey.from_text(text)
        except KeyFormatError as exc:
            raise ConfigError(f"{self.pub_path}: {exc}") from exc
        if from_key is not None and from_key != key:
            raise ConfigError(f"{self.pub_path}: does not match node.key")
        return key

    def load_identity(self, passphrase: bytes | None = None) -> Identity:
        """Open ``node.key`` (checking it is private and matches ``node.pub``).

        Raises:
            ConfigError: missing, readable by group or others, damaged, or not
                matching node.pub.
            PassphraseError: sealed, and the passphrase is missing or wrong.
        """
        data = self._read_key_file()
        identity = self._decode(data, passphrase)
        if self.pub_path.exists() and self.public_key() != identity.public_key:
            raise ConfigError(f"{self.pub_path}: does not match node.key")
        return identity

    def _read_key_file(self) -> bytes:
        try:
            st = os.stat(self.key_path)
            if st.st_mode & 0o077:
                # As ssh does: a secret key others can read is refused, not used.
                raise ConfigError(
                    f"{self.key_path}: readable by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {self.key_path}'"
                )
            return read_bounded(self.key_path, _MAX_KEY_FILE_BYTES)
        except FileNotFoundError:
            raise ConfigError(
                f"{self.key_path}: missing (run 'entraide init --name NAME' first)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{self.key_path}: unreadable: {exc.strerror}") from exc

    def _decode(self, data: bytes, passphrase: bytes | None) -> Identity:
        try:
            return decode_key_file(data, passphrase)
        except KeyFormatError as exc:
            raise ConfigError(f"{self.key_path}: {exc}") from exc
