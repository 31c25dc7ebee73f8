"""A node's configuration files: ``entraide.toml`` and the trust list ``peers.toml``.

Both are TOML, read with ``tomllib`` and checked by frozen pydantic models that
forbid unknown keys and coerce nothing (``port = "8470"`` is refused). Every
problem surfaces as one ``ConfigError`` line naming the file and the field.

Trust-list invariants (checked on every load and every edit):
- names match ``protocol.cards.NAME_PATTERN`` and are unique ignoring case ("ON" and
  "on" would be two readings of one audience name);
- keys are unique;
- the node's own key and own name are not in its own list;
- at most :data:`MAX_PEERS` entries.

peers.toml is edited in place by the CLI and the admin API while the daemon runs:
edits go through :func:`edit_trust_list` (data-dir lock, atomic replace, the file's
leading comment kept) and the daemon notices them with :class:`TrustListWatcher`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from agent.config.datadir import DataDir, FileStamp, atomic_write, file_stamp, read_bounded
from agent.errors import ConfigError, DuplicatePeerError, NodeExistsError, UnknownPeerError
from protocol.cards import PeerCard, validate_peer_name, validate_peer_url
from protocol.errors import KeyFormatError
from protocol.keys import DEFAULT_KDF, Identity, PublicKey

__all__ = [
    "MAX_PEERS",
    "ApiConfig",
    "GossipConfig",
    "LogConfig",
    "NodeConfig",
    "PeerEntry",
    "PeerListenerConfig",
    "StorageConfig",
    "TrustList",
    "TrustListWatcher",
    "create_node",
    "edit_trust_list",
    "load_node_config",
    "load_trust_list",
    "parse_node_config",
    "save_trust_list",
    "write_node_config",
]

MAX_PEERS = 1000
_MAX_CONFIG_BYTES = 256 * 1024
_MAX_PEERS_BYTES = 4 * 1024 * 1024
_MAX_JURISDICTION_CHARS = 100

_PEERS_HEADER = """\
# Entraide trust list: the peers this node accepts entries from and dials.
# Edit with 'entraide peers add|remove' (or by hand); a running node applies changes live.
# Each [[peer]] has a name (letters, digits, _ and -), a key (ed25519:...), an optional
# jurisdiction and an optional url (a member without url is trusted but not dialled).
"""

_CONFIG_HEADER = """\
# Entraide node configuration (see docs/operations.md).
# [api]: local HTTP API listener. [peer]: peer listener; public_url is the base URL other
# nodes dial (it goes on this node's peer card). [gossip], [log], [storage]: tuning.
"""


# --- field types -------------------------------------------------------------------


def _parse_key(value: Any) -> PublicKey:
    if isinstance(value, PublicKey):
        return value
    if not isinstance(value, str):
        raise ValueError("a key is a string 'ed25519:<base64url>'")
    try:
        return PublicKey.from_text(value)
    except KeyFormatError as exc:
        raise ValueError(str(exc)) from exc


KeyField = Annotated[
    PublicKey,
    PlainValidator(_parse_key),
    PlainSerializer(lambda key: key.text, return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^ed25519:[A-Za-z0-9_-]{43}$"}),
]
"""A public key written as its text form in TOML and JSON."""


def _check(fn: Callable[[str], str], value: str) -> str:
    try:
        return fn(value)
    except KeyFormatError as exc:
        raise ValueError(str(exc)) from exc


def _check_jurisdiction(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip() or len(value) > _MAX_JURISDICTION_CHARS:
        raise ValueError(f"jurisdiction must be 1 to {_MAX_JURISDICTION_CHARS} characters")
    if not value.isprintable():
        raise ValueError("jurisdiction contains control characters")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- entraide.toml -----------------------------------------------------------------

Port = Annotated[int, Field(ge=1, le=65535)]
Host = Annotated[str, Field(min_length=1, max_length=253)]


class ApiConfig(_Model):
    """The local HTTP API listener (loopback by default: tools on this host only)."""

    host: Host = "127.0.0.1"
    port: Port = 8470
    readers: int | None = Field(None, ge=0, le=64)
    """Read-lane processes that answer indicator lookups on the connections they own
    (agent/workers/read_lane.py); 0: none; default: 2 on a host with two cores or more."""


class PeerListenerConfig(_Model):
    """The peer listener, and the base URL other nodes dial (put on the peer card)."""

    host: Host = "0.0.0.0"
    port: Port = 8471
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check(validate_peer_url, value)


class GossipConfig(_Model):
    """Replication tuning (docs/protocol.md, "Gossip")."""

    beacon_interval_ms: int = Field(5000, ge=100, le=3_600_000)
    """How often the broadcast tree's root announces a round (docs/protocol.md §8)."""
    ihave_timeout_ms: int = Field(300, ge=10, le=60_000)
    """How long an announced entry may be missing before it is requested."""
    lazy_delay_ms: int = Field(50, ge=0, le=60_000)
    anti_entropy_interval_ms: int = Field(2000, ge=50, le=3_600_000)
    max_batch_entries: int = Field(256, ge=1, le=4096)
    max_pending_per_peer: int = Field(4096, ge=16, le=1_000_000)
    """Entries held per peer while waiting for a gap to fill (beyond: dropped, re-asked)."""
    max_send_queue: int = Field(1024, ge=16, le=1_000_000)
    """Frames queued for one peer before backpressure applies."""


class LogConfig(_Model):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class StorageConfig(_Model):
    """Ledger storage; ``path`` is relative to the data dir unless absolute."""

    path: str = Field(DataDir.LEDGER_FILE, min_length=1, max_length=4096)
    ingest_batch_max: int = Field(512, ge=1, le=65_536)
    ingest_flush_ms: int = Field(5, ge=0, le=10_000)


class NodeConfig(_Model):
    """``<data-dir>/entraide.toml``."""

    name: str
    jurisdiction: str | None = None
    api: ApiConfig = ApiConfig()
    peer: PeerListenerConfig = PeerListenerConfig()
    gossip: GossipConfig = GossipConfig()
    log: LogConfig = LogConfig()
    storage: StorageConfig = StorageConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check(validate_peer_name, value)

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, value: str | None) -> str | None:
        return _check_jurisdiction(value)

    @property
    def peer_url(self) -> str:
        """The base URL peers dial: ``peer.public_url``, else ``http://<host>:<port>``
        where a wildcard host (0.0.0.0, ::) becomes 127.0.0.1."""
        if self.peer.public_url is not None:
            return self.peer.public_url
        host = self.peer.host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return f"http://{host}:{self.peer.port}"
        if ip.is_unspecified:
            return f"http://127.0.0.1:{self.peer.port}"
        shown = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"http://{shown}:{self.peer.port}"

    def ledger_path(self, data_dir: DataDir) -> Path:
        """Where the ledger lives (``storage.path`` resolved against the data dir)."""
        return data_dir.root / self.storage.path


def load_node_config(data_dir: DataDir) -> NodeConfig:
    """Read and check ``entraide.toml``.

    Raises:
        ConfigError: missing, unreadable, not TOML, or not a valid configuration.
    """
    path = data_dir.config_path
    return _validate(NodeConfig, path, _load_toml(path, _MAX_CONFIG_BYTES))


def parse_node_config(data: Mapping[str, Any]) -> NodeConfig:
    """Check a configuration given as a mapping (the shape of entraide.toml).

    Raises:
        ConfigError: one line naming the first bad field.
    """
    return _validate(NodeConfig, None, dict(data))


def write_node_config(data_dir: DataDir, config: NodeConfig) -> None:
    """Write ``entraide.toml`` atomically, with an explanatory header.

    Raises:
        OSError: on I/O failure.
    """
    body = tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
    atomic_write(data_dir.config_path, (_CONFIG_HEADER + "\n" + body).encode("utf-8"))


# --- peers.toml ---------------------------------------------------------------------


class PeerEntry(_Model):
    """One ``[[peer]]`` of the trust list."""

    name: str
    jurisdiction: str | None = None
    key: KeyField
    url: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check(validate_peer_name, value)

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, value: str | None) -> str | None:
        return _check_jurisdiction(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check(validate_peer_url, value)

    @classmethod
    def from_card(cls, card: PeerCard, jurisdiction: str | None = None) -> PeerEntry:
        """The entry a peer card describes.

        Raises:
            ConfigError: a bad jurisdiction.
        """
        return _validate(
            cls, None, {"name": card.name, "key": card.key, "url": card.url,
                        "jurisdiction": jurisdiction},
        )

    @classmethod
    def build(
        cls, *, name: str, key: str, url: str | None = None, jurisdiction: str | None = None
    ) -> PeerEntry:
        """An entry from text fields (CLI, API).

        Raises:
            ConfigError: any field is invalid (one line naming it).
        """
        return _validate(
            cls, None, {"name": name, "key": key, "url": url, "jurisdiction": jurisdiction}
        )


class _TrustFile(_Model):
    peer: list[PeerEntry] = Field(default_factory=list, max_length=MAX_PEERS)


class TrustList:
    """An immutable, checked trust list. Edits return a new list.

    Raises (on construction):
        DuplicatePeerError: two entries share a name (ignoring case), a key or a key
            id, or an entry is this node (``own_key`` / ``own_name``).
        ConfigError: more than :data:`MAX_PEERS` entries.
    """

    __slots__ = ("_by_key", "_by_name", "_peers")

    def __init__(
        self,
        peers: tuple[PeerEntry, ...] | list[PeerEntry] = (),
        *,
        own_key: PublicKey | None = None,
        own_name: str | None = None,
    ) -> None:
        if len(peers) > MAX_PEERS:
            raise ConfigError(f"trust list over {MAX_PEERS} peers")
        by_name: dict[str, PeerEntry] = {}
        folded: dict[str, str] = {}
        by_key: dict[PublicKey, PeerEntry] = {}
        # Audiences and the gossip wire name members by 8-byte key id: two keys with
        # one id (2^-64 by chance, or crafted) would make a recipient ambiguous.
        by_key_id: dict[bytes, str] = {} if own_key is None else {own_key.key_id: "this node"}
        for entry in peers:
            if own_key is not None and entry.key == own_key:
                raise DuplicatePeerError(
                    f"peer {entry.name!r} has this node's own key; a node does not trust itself"
                )
            if own_name is not None and entry.name.casefold() == own_name.casefold():
                raise DuplicatePeerError(f"peer name {entry.name!r} is this node's own name")
            if entry.name.casefold() in folded:
                other = folded[entry.name.casefold()]
                raise DuplicatePeerError(
                    f"peer name {entry.name!r} is already in the trust list"
                    if other == entry.name
                    else f"peer name {entry.name!r} clashes with {other!r} "
                    "(names are compared ignoring case)"
                )
            if entry.key in by_key:
                raise DuplicatePeerError(
                    f"key of peer {entry.name!r} is already trusted as {by_key[entry.key].name!r}"
                )
            if entry.key.key_id in by_key_id:
                raise DuplicatePeerError(
                    f"key of peer {entry.name!r} has the same key id as "
                    f"{by_key_id[entry.key.key_id]!r}; one of them must change keys"
                )
            by_key_id[entry.key.key_id] = entry.name
            folded[entry.name.casefold()] = entry.name
            by_name[entry.name] = entry
            by_key[entry.key] = entry
        self._peers = tuple(peers)
        self._by_name = by_name
        self._by_key = by_key

    @property
    def peers(self) -> tuple[PeerEntry, ...]:
        """Entries in file order."""
        return self._peers

    def by_name(self, name: str) -> PeerEntry | None:
        """The entry with exactly this name, or None."""
        return self._by_name.get(name)

    def by_key(self, key: PublicKey) -> PeerEntry | None:
        """The entry with this key, or None."""
        return self._by_key.get(key)

    def with_peer(
        self, entry: PeerEntry, *, own_key: PublicKey | None = None, own_name: str | None = None
    ) -> TrustList:
        """A new list with ``entry`` appended.

        Raises:
            DuplicatePeerError: its name or key is already present, or it is this node.
        """
        return TrustList((*self._peers, entry), own_key=own_key, own_name=own_name)

    def without(self, name: str) -> TrustList:
        """A new list without the entry named ``name`` (exact name).

        Raises:
            UnknownPeerError: no entry has that name.
        """
        if name not in self._by_name:
            raise UnknownPeerError(f"no peer named {name!r} in the trust list")
        return TrustList(tuple(p for p in self._peers if p.name != name))

    def __iter__(self) -> Iterator[PeerEntry]:
        return iter(self._peers)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, PublicKey):
            return item in self._by_key
        return isinstance(item, str) and item in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrustList) and self._peers == other._peers

    def __hash__(self) -> int:
        return hash(self._peers)

    def __repr__(self) -> str:
        return f"TrustList({[p.name for p in self._peers]!r})"


def load_trust_list(
    data_dir: DataDir, *, own_key: PublicKey | None = None, own_name: str | None = None
) -> TrustList:
    """Read and check ``peers.toml``; a missing file is an empty list.

    Raises:
        ConfigError (or DuplicatePeerError): unreadable, not TOML, a bad entry,
            a duplicate, or this node itself; the message names the file.
    """
    path = data_dir.peers_path
    if not path.exists():
        return TrustList()
    doc = _validate(_TrustFile, path, _load_toml(path, _MAX_PEERS_BYTES))
    try:
        return TrustList(doc.peer, own_key=own_key, own_name=own_name)
    except ConfigError as exc:
        raise type(exc)(f"{path.name}: {exc}") from exc


def save_trust_list(data_dir: DataDir, trust: TrustList) -> None:
    """Replace ``peers.toml`` atomically, keeping the comment block at its top.

    Call within ``data_dir.lock()`` when the list was read from the file (or use
    :func:`edit_trust_list`).

    Raises:
        OSError: on I/O failure.
    """
    path = data_dir.peers_path
    header = _PEERS_HEADER
    # No readable old file: keep the default header.
    with contextlib.suppress(OSError, ConfigError, UnicodeDecodeError):
        header = _leading_comments(read_bounded(path, _MAX_PEERS_BYTES).decode("utf-8")) or header
    body = ""
    if len(trust):
        body = "\n" + tomli_w.dumps(
            {"peer": [p.model_dump(mode="json", exclude_none=True) for p in trust]}
        )
    atomic_write(path, (header + body).encode("utf-8"))


def edit_trust_list(
    data_dir: DataDir,
    change: Callable[[TrustList], TrustList],
    *,
    own_key: PublicKey | None = None,
    own_name: str | None = None,
) -> TrustList:
    """Read-modify-write ``peers.toml`` under the data-dir lock; return the new list.

    Blocking (file lock, fsync): run it in a thread from async code.

    Raises:
        ConfigError and subclasses: the current file is invalid, or ``change``
            refuses (DuplicatePeerError, UnknownPeerError); the file is then unchanged.
        OSError: on I/O failure.
    """
    with data_dir.lock():
        current = load_trust_list(data_dir, own_key=own_key, own_name=own_name)
        new = change(current)
        # Re-check against this node: ``change`` may have built the list without it.
        new = TrustList(new.peers, own_key=own_key, own_name=own_name)
        save_trust_list(data_dir, new)
    return new


class TrustListWatcher:
    """Notices changes to ``peers.toml`` made by the CLI or by hand while the daemon runs.

    ``poll()`` is cheap (one ``stat``) when nothing changed; the daemon calls it on a
    timer and applies the list it returns.

    Raises (on construction):
        ConfigError: peers.toml is invalid at start (the daemon should refuse to start).
    """

    def __init__(
        self, data_dir: DataDir, *, own_key: PublicKey | None = None, own_name: str | None = None
    ) -> None:
        self._data_dir = data_dir
        self._own_key = own_key
        self._own_name = own_name
        self._stamp: FileStamp | None = file_stamp(data_dir.peers_path)
        self._current = load_trust_list(data_dir, own_key=own_key, own_name=own_name)

    @property
    def current(self) -> TrustList:
        """The last valid list read."""
        return self._current

    def poll(self) -> TrustList | None:
        """The new list if the file changed since the last poll, else None.

        Raises:
            ConfigError: the file changed and is now invalid; ``current`` stays the
                last valid list and the same error is not raised again until the
                file changes once more.
        """
        stamp = file_stamp(self._data_dir.peers_path)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        new = load_trust_list(self._data_dir, own_key=self._own_key, own_name=self._own_name)
        if new == self._current:
            return None
        self._current = new
        return new


# --- node creation -----------------------------------------------------------------


def create_node(
    data_dir: DataDir,
    config: NodeConfig,
    identity: Identity,
    passphrase: bytes | None = None,
    *,
    opslimit: int = DEFAULT_KDF.opslimit,
    memlimit: int = DEFAULT_KDF.memlimit,
) -> None:
    """Initialise a node: the directory (0700), entraide.toml, an empty peers.toml
    (an existing one is kept), node.pub, and node.key last.

    ``node.key`` is what makes a node exist, and it is written last and never
    overwritten, so an init that failed half-way can simply be run again.

    Raises:
        NodeExistsError: ``node.key`` already exists; nothing is changed.
        ConfigError: the path is not a directory.
        OSError: on I/O failure.
    """
    data_dir.create()
    with data_dir.lock():
        if data_dir.has_node():
            raise NodeExistsError(
                f"{data_dir.root}: a node already exists here (node.key); refusing to overwrite it"
            )
        write_node_config(data_dir, config)
        if not data_dir.peers_path.exists():
            atomic_write(data_dir.peers_path, _PEERS_HEADER.encode("utf-8"))
        data_dir.write_identity(identity, passphrase, opslimit=opslimit, memlimit=memlimit)


# --- helpers -----------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _load_toml(path: Path, max_bytes: int) -> dict[str, Any]:
    try:
        text = read_bounded(path, max_bytes).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: not UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable: {exc.strerror}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from exc


def _validate(model: type[M], path: Path | None, data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f"{path.name}: " if path is not None else ""
        raise ConfigError(where + _one_line(exc)) from exc


def _one_line(exc: ValidationError) -> str:
    """The first validation problem as ``field.path: message`` (+ how many more)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    header = "".join(lines).rstrip("\n")
    return header + "\n" if header.strip() else ""
