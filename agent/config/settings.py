"""A node's configuration file, ``entraide.toml``: listeners, gossip, logs, storage.

The file is TOML checked by frozen pydantic models that forbid unknown keys and coerce
nothing (``port = "8470"`` is refused; agent/config/fields.py); every problem surfaces
as one ``ConfigError`` line naming the file and the field. The trust list,
``peers.toml``, has its own module (agent/config/trust.py); its names are re-exported
here for the modules that import them from this one.

Retired settings: ``[storage] ingest_batch_max`` and ``ingest_flush_ms`` were never
read; files written before their removal carry them, so they are accepted and ignored
(never written again).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import Field, field_validator, model_serializer, model_validator

from agent.config.datadir import DataDir, atomic_write
from agent.config.fields import (
    ConfigModel,
    check_field,
    check_jurisdiction,
    load_toml,
    validate_model,
)
from agent.config.trust import (
    MAX_PEERS,
    PEERS_HEADER,
    PeerEntry,
    TrustList,
    TrustListWatcher,
    edit_trust_list,
    load_trust_list,
    save_trust_list,
)
from agent.errors import NodeExistsError
from protocol.cards import validate_peer_name, validate_peer_url
from protocol.entries import MAX_ENTRY_BYTES, TLP
from protocol.errors import EncodingError
from protocol.gossip_types import GossipParams
from protocol.keys import DEFAULT_KDF, Identity
from protocol.payloads import PAYLOAD_KINDS
from protocol.retention import (
    ANY_KIND,
    DEFAULT_POLICY,
    MAX_RULES,
    PERSONAL_DATA,
    RetentionPolicy,
    parse_duration,
)

__all__ = [
    "MAX_PEERS",
    "ApiConfig",
    "GossipConfig",
    "LogConfig",
    "NodeConfig",
    "PeerEntry",
    "PeerListenerConfig",
    "RetentionConfig",
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

_MAX_CONFIG_BYTES = 256 * 1024

_CONFIG_HEADER = """\
# Entraide node configuration (see docs/operations.md).
# [api]: local HTTP API listener. [peer]: peer listener; public_url is the base URL other
# nodes dial (it goes on this node's peer card). [gossip], [log], [storage]: tuning.
"""

_RETIRED_STORAGE = ("ingest_batch_max", "ingest_flush_ms")
"""Settings once accepted under [storage] that nothing read; ignored when present."""


# --- entraide.toml -----------------------------------------------------------------

Port = Annotated[int, Field(ge=1, le=65535)]
Host = Annotated[str, Field(min_length=1, max_length=253)]


class ApiConfig(ConfigModel):
    """The local HTTP API listener (loopback by default: tools on this host only)."""

    host: Host = "127.0.0.1"
    port: Port = 8470
    readers: int | None = Field(None, ge=0, le=64)
    """Read-lane processes that answer indicator lookups on the connections they own
    (agent/workers/read_lane.py); 0: none; default: 2 on a host with two cores or more."""
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253,
                                             pattern=r"^[A-Za-z0-9.-]+$")]] = Field(
        default_factory=list, max_length=64)
    """Host names (not IP addresses: those are always answered) the API answers to in
    ``Host`` and ``Origin``, for tools that reach it by a DNS name (agent/config/hosts.py)."""
    max_connections: int = Field(512, ge=16, le=1_000_000)
    """Open connections at once; more are closed at accept (docs/security.md)."""
    max_connections_per_address: int = Field(256, ge=1, le=1_000_000)
    """Open connections from one source address (local tools all come from 127.0.0.1)."""
    header_timeout: float = Field(10.0, ge=0.5, le=3600)
    """Seconds from accept to the end of the first request head."""
    keepalive_timeout: float = Field(15.0, ge=0.5, le=3600)
    """Seconds an idle connection stays open between requests."""


class PeerListenerConfig(ConfigModel):
    """The peer listener, and the base URL other nodes dial (put on the peer card)."""

    host: Host = "0.0.0.0"
    port: Port = 8471
    public_url: str | None = None
    max_connections: int = Field(512, ge=16, le=1_000_000)
    """Open connections at once; more are closed at accept (docs/security.md)."""
    max_connections_per_address: int = Field(32, ge=1, le=1_000_000)
    """Open connections from one source address; more are closed at accept."""
    header_timeout: float = Field(10.0, ge=0.5, le=3600)
    """Seconds from accept to the end of the upgrade request's head."""
    keepalive_timeout: float = Field(15.0, ge=0.5, le=3600)
    """Seconds an idle connection stays open before a request (a session's own
    idle timeout applies once it is a WebSocket)."""
    handshakes_per_address: int = Field(8, ge=1, le=64)
    """Handshakes in progress from one source address; more get HTTP 503 (the
    listener's total is 64)."""

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_field(validate_peer_url, value)


class GossipConfig(ConfigModel):
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
    reorder_peer_bytes: int = Field(GossipParams.reorder_peer_bytes, ge=MAX_ENTRY_BYTES,
                                    le=GossipParams.reorder_bytes)
    """Bytes of the reorder buffer (entries held ahead of a gap, 32 MiB in all) one
    peer's entries may take; what it sent is dropped when its session ends. At least
    one entry, at most the whole buffer (docs/security.md, "The reorder buffer")."""


class LogConfig(ConfigModel):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class StorageConfig(ConfigModel):
    """Ledger storage; ``path`` is relative to the data dir unless absolute."""

    path: str = Field(DataDir.LEDGER_FILE, min_length=1, max_length=4096)

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        # Files written by earlier versions hold the retired settings (every default
        # was written out): they must still load.
        if isinstance(data, dict) and any(k in data for k in _RETIRED_STORAGE):
            return {k: v for k, v in data.items() if k not in _RETIRED_STORAGE}
        return data


_RETENTION_KINDS = frozenset(PAYLOAD_KINDS) | {ANY_KIND, PERSONAL_DATA}


class RetentionConfig(ConfigModel):
    """``[retention]``: how long this node's OWN entries keep their bodies, by payload
    kind (or ``"*"``, ``"personal-data"``) and TLP, e.g.
    ``observation = {CLEAR = "3y", AMBER = "1y", RED = "180d"}``. Each cell replaces
    the default of ``protocol.retention.DEFAULT_POLICY``; durations 1h..100y (h, d, w,
    y). The expiry is resolved when an entry is signed and travels in its header, so
    other origins' entries follow their origin's policy, never this one.
    """

    rules: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _kinds_at_top(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rules" not in data:
            return {"rules": data}
        return data

    @field_validator("rules")
    @classmethod
    def _check(cls, rules: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        if len(rules) > MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} kinds")
        for kind, by_tlp in rules.items():
            if kind not in _RETENTION_KINDS:
                raise ValueError(f"unknown kind {kind[:40]!r} (a payload kind, "
                                 f"'{PERSONAL_DATA}' or '{ANY_KIND}')")
            for label, text in by_tlp.items():
                if label not in TLP._value2member_map_:
                    raise ValueError(f"{kind}: unknown TLP {label[:20]!r}")
                try:
                    parse_duration(text)
                except EncodingError as exc:
                    raise ValueError(f"{kind}.{label}: {exc}") from exc
        return rules

    @model_serializer
    def _dump(self) -> dict[str, dict[str, str]]:
        return self.rules

    def policy(self) -> RetentionPolicy:
        """The default policy with this section's cells in place of its own."""
        return DEFAULT_POLICY.merged({
            kind: {TLP(label): parse_duration(text) for label, text in by_tlp.items()}
            for kind, by_tlp in self.rules.items()})


class NodeConfig(ConfigModel):
    """``<data-dir>/entraide.toml``."""

    name: str
    jurisdiction: str | None = None
    api: ApiConfig = ApiConfig()
    peer: PeerListenerConfig = PeerListenerConfig()
    gossip: GossipConfig = GossipConfig()
    log: LogConfig = LogConfig()
    storage: StorageConfig = StorageConfig()
    retention: RetentionConfig = RetentionConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_field(validate_peer_name, value)

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, value: str | None) -> str | None:
        return check_jurisdiction(value)

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
    return validate_model(NodeConfig, path, load_toml(path, _MAX_CONFIG_BYTES))


def parse_node_config(data: Mapping[str, Any]) -> NodeConfig:
    """Check a configuration given as a mapping (the shape of entraide.toml).

    Raises:
        ConfigError: one line naming the first bad field.
    """
    return validate_model(NodeConfig, None, dict(data))


def write_node_config(data_dir: DataDir, config: NodeConfig) -> None:
    """Write ``entraide.toml`` atomically, with an explanatory header.

    Raises:
        OSError: on I/O failure.
    """
    body = tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
    atomic_write(data_dir.config_path, (_CONFIG_HEADER + "\n" + body).encode("utf-8"))


# --- peers.toml ---------------------------------------------------------------------


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
            atomic_write(data_dir.peers_path, PEERS_HEADER.encode("utf-8"))
        data_dir.write_identity(identity, passphrase, opslimit=opslimit, memlimit=memlimit)
