"""The trust list in force and who is who: names, keys, audiences and recipients.

Invariants:
- The trust list in memory is the last valid ``peers.toml``: changes made through the
  API are written atomically (data-dir lock, temporary file, rename) and applied at
  once; changes made by hand or by the CLI are noticed by polling the file's stamp
  and applied once it has been stable for one poll interval. An invalid file is
  logged and ignored (the previous list stays in force).
- Audience names resolve against the trust list *and* this node's own name; this node
  is always a recipient of its own encrypted entries, so it can read them back.
- Every change is applied in one order: the list is swapped, the owner's ``applied``
  hook runs (the node drops held entries and tells replication), then each listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from agent.config.datadir import DataDir, FileStamp, file_stamp
from agent.config.settings import PeerEntry, TrustList, TrustListWatcher, edit_trust_list
from agent.errors import ConfigError, NodeStoppingError, UnknownAudienceError, UnknownPeerError
from agent.metrics import Registry
from protocol.entries import TLP
from protocol.errors import EntraideError
from protocol.keys import PublicKey

__all__ = ["Membership"]

log = logging.getLogger(__name__)


class Membership:
    """The node's trust list and the name/key/audience resolution built on it.

    Args:
        data_dir: where ``peers.toml`` lives.
        registry: gets the trust-reload counters.
        applied: called with ``(old, new)`` after each change, before the listeners;
            what it raises propagates to the caller of the change.
        poll_interval: seconds between checks of ``peers.toml``.

    Until :meth:`start`, the list is empty and this node has no name or key: what
    needs them raises ``NodeStoppingError``.
    """

    def __init__(self, data_dir: DataDir, registry: Registry,
                 applied: Callable[[TrustList, TrustList], None], *,
                 poll_interval: float) -> None:
        self._data_dir = data_dir
        self._applied = applied
        self._poll_interval = poll_interval
        self.trust = TrustList()
        self._me: tuple[PublicKey, str] | None = None
        self._names_by_text: tuple[TrustList, dict[str, str]] | None = None
        self._watcher: TrustListWatcher | None = None
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._reloads = registry.counter(
            "entraide_trust_reloads_total", "Trust-list changes applied, by source.",
            ("source",))
        self._errors = registry.counter(
            "entraide_trust_reload_errors_total", "Invalid peers.toml seen (change ignored).")
        self.file_error: str | None = None
        """Why peers.toml as it is on disk is not in force (None: it is): shown in the
        node's status and metrics until the file is valid again."""

    def know_self(self, key: PublicKey, name: str) -> None:
        """This node's key and name (once loaded): they resolve like a member's."""
        self._me = (key, name)
        self._names_by_text = None

    async def start(self) -> FileStamp | None:
        """Read ``peers.toml`` (after :meth:`know_self`); returns the stamp to give
        :meth:`watch`.

        Raises:
            ConfigError: peers.toml is invalid.
        """
        key, name = self._self()
        # Stamp first, list second: a change between the two is seen again, not missed.
        initial = await asyncio.to_thread(file_stamp, self._data_dir.peers_path)
        self._watcher = await asyncio.to_thread(
            TrustListWatcher, self._data_dir, own_key=key, own_name=name)
        self.trust = self._watcher.current
        return initial

    def _self(self) -> tuple[PublicKey, str]:
        if self._me is None:
            raise NodeStoppingError("the node is not started")
        return self._me

    # -- who is who

    def name_of(self, key: PublicKey) -> str | None:
        """This node's name for its own key, the trust-list name of a peer, else None."""
        if self._me is not None and key == self._me[0]:
            return self._me[1]
        entry = self.trust.author_of(key)  # a retired key still names its member
        return None if entry is None else entry.name

    def name_of_text(self, key_text: str) -> str | None:
        """:meth:`name_of` for a key in text form (None if it does not parse)."""
        # Key texts are canonical (one text per key), so an exact match is the same as
        # parsing; parsing costs a point check (~60 us) and lists call this per item.
        return self.names_by_text().get(key_text) if isinstance(key_text, str) else None

    def names_by_text(self) -> dict[str, str]:
        """Key text -> name of this node and every peer in the trust list. The same
        object until the trust list changes (do not modify it)."""
        names = self._names_by_text
        if names is None or names[0] is not self.trust:
            table = {r.key.text: p.name for p in self.trust for r in p.retired}
            table.update({p.key.text: p.name for p in self.trust})
            if self._me is not None:
                table[self._me[0].text] = self._me[1]
            names = self._names_by_text = (self.trust, table)
        return names[1]

    def key_of(self, name_or_key: str) -> PublicKey:
        """A peer's key from its name (exact, else ignoring case), this node's name, or
        a key text.

        Raises:
            UnknownAudienceError: none of these.
        """
        if name_or_key.startswith("ed25519:"):
            try:
                return PublicKey.from_text(name_or_key)
            except EntraideError as exc:
                raise UnknownAudienceError(f"bad key {name_or_key[:60]!r}: {exc}") from exc
        return self._resolve_name(name_or_key)

    def _resolve_name(self, name: str) -> PublicKey:
        entry = self.trust.by_name(name)
        if entry is not None:
            return entry.key
        key, own_name = self._self()
        if name == own_name or name.casefold() == own_name.casefold():
            return key
        folded = name.casefold()
        for peer in self.trust:
            if peer.name.casefold() == folded:
                return peer.key
        raise UnknownAudienceError(f"{name[:70]!r} is not a peer in the trust list "
                                   "nor this node's name")

    def audience_names(self, audience: Sequence[bytes] | None) -> list[str] | None:
        """Names (or key ids in hex) of an entry's audience, for display."""
        if audience is None:
            return None
        key, own_name = self._self()
        by_id = {p.key.key_id: p.name for p in self.trust}
        by_id[key.key_id] = own_name
        return [by_id.get(kid, kid.hex()) for kid in audience]

    def recipients(self, tlp: TLP, audience: Sequence[str] | None) -> tuple[PublicKey, ...]:
        """The recipients of an own entry (this node always among them when encrypted).

        Raises:
            UnknownAudienceError: an unknown name, RED without audience, an empty
                audience, or an audience on a CLEAR/GREEN entry.
        """
        tlp = TLP(tlp)
        if not tlp.encrypted:
            if audience:
                raise UnknownAudienceError(
                    f"an audience applies only to AMBER, AMBER+STRICT and RED, not {tlp.value}")
            return ()
        if audience is None:
            if tlp is TLP.RED:
                raise UnknownAudienceError("RED needs an explicit audience (peer names)")
            # AMBER without audience: every member known now, and this node.
            return (self._self()[0], *(p.key for p in self.trust))
        if not audience:
            raise UnknownAudienceError("the audience is empty")
        keys = [self._resolve_name(name) for name in audience]
        return tuple(dict.fromkeys([self._self()[0], *keys]))

    def same_audience(self, tlp: TLP, audience: Sequence[bytes] | None
                      ) -> tuple[PublicKey, ...]:
        """The members still known of an entry's audience, and this node (encrypted
        entries only; ``()`` otherwise)."""
        if not tlp.encrypted:
            return ()
        ids = set(audience or ())
        return (self._self()[0], *(p.key for p in self.trust if p.key.key_id in ids))

    # -- changes

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each change of the trust list (from peers.toml or the
        API); returns what removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def peer(self, name: str) -> PeerEntry:
        """Raises UnknownPeerError when no entry has that name."""
        entry = self.trust.by_name(name)
        if entry is None:
            raise UnknownPeerError(f"no peer named {name[:70]!r} in the trust list")
        return entry

    async def add_peer(self, entry: PeerEntry) -> PeerEntry:
        """Add a peer to peers.toml (atomically) and apply it now.

        Raises:
            DuplicatePeerError: its name or key is already trusted, or it is this node.
            ConfigError: peers.toml is invalid (nothing changed).
        """
        key, name = self._self()
        await self._edit(lambda trust: trust.with_peer(entry, own_key=key, own_name=name))
        return entry

    async def remove_peer(self, name: str) -> PeerEntry:
        """Remove a peer from peers.toml (atomically) and apply it now.

        Raises:
            UnknownPeerError: no peer has that name.
        """
        removed = self.peer(name)
        await self._edit(lambda trust: trust.without(name))
        return removed

    async def replace_peer(self, name: str, entry: PeerEntry) -> PeerEntry:
        """Replace the member ``name`` with ``entry`` (its key rotated, a compromise
        recorded) in peers.toml, atomically, and apply it now.

        Raises:
            UnknownPeerError: no peer has that name.
            DuplicatePeerError: the new key is another member's or this node's.
        """
        self.peer(name)
        await self._edit(lambda trust: TrustList(
            tuple(entry if p.name == name else p for p in trust)))
        return entry

    async def _edit(self, change: Callable[[TrustList], TrustList]) -> None:
        key, name = self._self()
        async with self._lock:
            new = await asyncio.to_thread(
                edit_trust_list, self._data_dir, change, own_key=key, own_name=name)
            self._apply(new, "api")

    def _apply(self, new: TrustList, source: str) -> None:
        if new == self.trust:
            return
        old = self.trust
        self.trust = new
        self._reloads.inc(labels=(source,))
        self._applied(old, new)
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("a trust-list listener failed")
        log.info("trust list now has %d peers (%s)", len(new), source)

    async def watch(self, initial: FileStamp | None) -> None:
        """Poll peers.toml forever (after :meth:`start`); apply a change once the file
        has kept the same stamp for one interval, so an editor's in-place rewrite
        (truncate, then write) is never read half-way as an empty trust list."""
        watcher = self._watcher
        assert watcher is not None
        path = self._data_dir.peers_path
        settled = seen = initial
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                stamp = await asyncio.to_thread(file_stamp, path)
            except OSError as exc:
                log.error("cannot stat %s: %s", path, exc)
                continue
            if stamp != seen:
                seen = stamp  # still changing: look again next time
                continue
            if stamp == settled:
                continue
            settled = stamp
            async with self._lock:
                try:
                    new = await asyncio.to_thread(watcher.poll)
                except (ConfigError, OSError) as exc:
                    # Never half-applied: the whole previous list stays in force, and
                    # the error stays visible (status, metric) until the file is fixed.
                    self._errors.inc()
                    self.file_error = str(exc)
                    log.error("peers.toml changed but is invalid, keeping the previous "
                              "trust list until it is fixed: %s", exc)
                    continue
                if self.file_error is not None:
                    self.file_error = None
                    log.warning("peers.toml is valid again")
                if new is not None:
                    self._apply(new, "file")
