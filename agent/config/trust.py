"""The trust list, ``peers.toml``: the peers this node accepts entries from and dials.

Trust-list invariants (checked on every load and every edit):
- names match ``protocol.cards.NAME_PATTERN`` and are unique ignoring case ("ON" and
  "on" would be two readings of one audience name);
- keys are unique, and so are their key ids (audiences name members by key id);
- the node's own key and own name are not in its own list;
- at most :data:`MAX_PEERS` entries.

peers.toml is edited in place by the CLI and the admin API while the daemon runs:
edits go through :func:`edit_trust_list` (data-dir lock, atomic replace, the file's
leading comment kept) and the daemon notices them with :class:`TrustListWatcher`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import tomli_w
from pydantic import Field, field_validator

from agent.config.datadir import DataDir, FileStamp, atomic_write, file_stamp, read_bounded
from agent.config.fields import (
    ConfigModel,
    KeyField,
    check_field,
    check_jurisdiction,
    leading_comments,
    load_toml,
    validate_model,
)
from agent.errors import ConfigError, DuplicatePeerError, UnknownPeerError
from protocol.cards import PeerCard, validate_peer_name, validate_peer_url
from protocol.keys import PublicKey

__all__ = [
    "MAX_PEERS",
    "NEXT_KEY_DIR",
    "PEERS_HEADER",
    "PREVIOUS_KEYS",
    "PeerEntry",
    "RetiredKey",
    "TrustList",
    "TrustListWatcher",
    "edit_trust_list",
    "load_trust_list",
    "previous_keys",
    "save_trust_list",
]

MAX_PEERS = 1000
_MAX_PEERS_BYTES = 4 * 1024 * 1024

PEERS_HEADER = """\
# Entraide trust list: the peers this node accepts entries from and dials.
# Edit with 'entraide peers add|remove' (or by hand); a running node applies changes live.
# Each [[peer]] has a name (letters, digits, _ and -), a key (ed25519:...), an optional
# jurisdiction and an optional url (a member without url is trusted but not dialled).
"""
"""The comment block a new peers.toml starts with (kept by later edits)."""


class RetiredKey(ConfigModel):
    """A key a member used before its current one: trusted as the author of its own
    chain up to ``last_seq`` only (docs/operations.md, "Rotate a key")."""

    key: KeyField
    last_seq: int = Field(ge=0)
    reason: str = Field(default="rotated", pattern="^(rotated|compromised)$")


NEXT_KEY_DIR = "next-key"
"""Where ``entraide key rotate`` puts the new key until the node's restart."""
PREVIOUS_KEYS = "previous-keys.json"
"""This node's own earlier keys (agent/node/keys.py writes it at a rotation)."""
_MAX_PREVIOUS = 64


def previous_keys(data_dir: DataDir) -> list[RetiredKey]:
    """This node's own earlier keys (``previous-keys.json``; empty when none).

    Raises:
        ConfigError: the file is damaged.
    """
    path = data_dir.root / PREVIOUS_KEYS
    try:
        data = json.loads(path.read_bytes()[: 64 * 1024])
        return [RetiredKey.model_validate(item) for item in data[:_MAX_PREVIOUS]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: damaged: {exc}") from exc


class PeerEntry(ConfigModel):
    """One ``[[peer]]`` of the trust list.

    ``retired``: the member's earlier keys (a key rotation it announced, or a key an
    admin declared compromised); ``compromised_since_seq``: its current key is
    compromised from that seq on (``entraide peers compromised``): entries of that key
    at or after it are quarantined.
    """

    name: str
    jurisdiction: str | None = None
    key: KeyField
    url: str | None = None
    retired: list[RetiredKey] = Field(default_factory=list, max_length=64)
    compromised_since_seq: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_field(validate_peer_name, value)

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, value: str | None) -> str | None:
        return check_jurisdiction(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_field(validate_peer_url, value)

    @classmethod
    def from_card(cls, card: PeerCard, jurisdiction: str | None = None) -> PeerEntry:
        """The entry a peer card describes.

        Raises:
            ConfigError: a bad jurisdiction.
        """
        return validate_model(
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
        return validate_model(
            cls, None, {"name": name, "key": key, "url": url, "jurisdiction": jurisdiction}
        )

    def updated(self, *, url: str | None = None, key: str | None = None,
                jurisdiction: str | None = None) -> PeerEntry:
        """This entry with the fields given changed (None: kept; ``url=""`` or
        ``jurisdiction=""`` removes it); every other field is kept and checked again
        (``entraide peers update``, ``PATCH /api/v1/peers/{name}``).

        A new key for a member whose key was declared compromised retires the old key
        for its chain up to the seq before the compromise (docs/operations.md).

        Raises:
            ConfigError: a new value is invalid (one line naming it).
        """
        changes: dict[str, object] = {}
        if key is not None:
            changes["key"] = key
            since = self.compromised_since_seq
            if since is not None and key != self.key.text:
                changes["retired"] = [*self.model_dump(mode="json")["retired"], {
                    "key": self.key.text, "last_seq": since - 1, "reason": "compromised"}]
                changes["compromised_since_seq"] = None
        if url is not None:
            changes["url"] = url or None
        if jurisdiction is not None:
            changes["jurisdiction"] = jurisdiction or None
        return validate_model(PeerEntry, None, {**self.model_dump(mode="json"), **changes})


class _TrustFile(ConfigModel):
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

    def author_of(self, key: PublicKey) -> PeerEntry | None:
        """The member whose current or retired key ``key`` is, or None."""
        entry = self._by_key.get(key)
        if entry is not None:
            return entry
        for peer in self._peers:
            if any(r.key == key for r in peer.retired):
                return peer
        return None

    def trusted_until(self, key: PublicKey) -> int | None:
        """The last seq of ``key``'s chain that is trusted: None for no limit (a
        current, uncompromised key), -1 for a key no member has, else the retired
        key's ``last_seq`` or the seq before the current key's compromise."""
        entry = self._by_key.get(key)
        if entry is not None:
            since = entry.compromised_since_seq
            return None if since is None else since - 1
        for peer in self._peers:
            for retired in peer.retired:
                if retired.key == key:
                    return retired.last_seq
        return -1

    def authors(self) -> list[PublicKey]:
        """Every key whose chain is replicated: current and retired keys."""
        return [*self._by_key, *(r.key for p in self._peers for r in p.retired)]

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
    doc = validate_model(_TrustFile, path, load_toml(path, _MAX_PEERS_BYTES))
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
    header = PEERS_HEADER
    # No readable old file: keep the default header.
    with contextlib.suppress(OSError, ConfigError, UnicodeDecodeError):
        header = leading_comments(read_bounded(path, _MAX_PEERS_BYTES).decode("utf-8")) or header
    body = ""
    if len(trust):
        body = "\n" + tomli_w.dumps(
            {"peer": [{k: v for k, v in p.model_dump(mode="json", exclude_none=True).items()
                       if v != []} for p in trust]}
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
