"""The agent's branches of the one exception tree (continues protocol/errors.py).

Everything the daemon, the CLI and the local API raise on purpose is an
``EntraideError``; OS and library errors are translated at the boundary with
``raise ... from exc``. The CLI prints any ``EntraideError`` as one line on stderr;
the HTTP API maps these classes to statuses (noted on the right)::

    EntraideError                         (protocol/errors.py: encoding, keys, crypto, ...)
    ├── ConfigError                       a bad or missing entraide.toml, peers.toml,
    │   │                                 tokens.toml, data dir or command-line value  400
    │   ├── NodeExistsError               init over an existing node                  409
    │   ├── DuplicatePeerError            a trust-list name or key already present    409
    │   ├── UnknownPeerError              no trust-list entry by that name            404
    │   └── UnknownTokenError             no API token by that name                   404
    ├── StorageError                      the ledger database failed (I/O, corruption) 500
    │   ├── StorageFullError              the disk holding it is full (SQLITE_FULL,
    │   │                                 ENOSPC): nothing of that write was stored    507
    │   └── NodeStoppingError             the node is shutting down or not started     503
    │       ├── RestoringError            restored from a backup, still catching up its
    │       │                             own chain: it signs nothing yet              503
    │       └── KeyHandedOverError        its key handed over to a new one (entraide
    │                                     key rotate): it signs nothing until restarted 503
    ├── UntrustedPeerError                a key or name that is not in the trust list  403/422
    │   └── UnknownAudienceError          an audience or origin name not in the list,
    │                                     or an audience that does not fit the TLP     422
    ├── UnknownEntryError                 no entry by that id that this node can read 404
    ├── UnknownForkError                  no fork recorded for that origin            404
    ├── NotOwnEntryError                  retracting another origin's entry            403
    ├── AlreadyRetractedError             retracting an entry twice                    409
    ├── AlreadyErasedError                erasing an entry twice                       409
    ├── ErasedError                       the entry's body was erased by its origin    410
    ├── BelowTargetError                  an entry about another entry asks for a lower
    │                                     TLP than that entry's                        422
    ├── WiderAudienceError                ... or an audience beyond that entry's       409
    ├── InvalidRuleError                  a rule or playbook its engine refuses (YARA,
    │                                     Sigma, Suricata, Snort, the CACAO schema;
    │                                     agent/tools), with line and reason          422
    ├── TransportError                    a peer connection closed or failed (I/O, not
    │   └── TransportClosed               misbehaviour; agent/peering/links.py)
    ├── AuthError                         no bearer token, or an unknown one           401
    │   └── ScopeError                    a known token without the scope needed       403
    │                                     (both raised by agent/config/tokens.py
    │                                     authenticate, the node's one token check)
    ├── ApiError                          an answer of the API's own request checks
    │                                     (agent/web/common.py; carries its status)
    ├── TaxiiError                        an answer in TAXII's error body
    │                                     (agent/taxii/http.py; carries its status)
    └── NodeNotRunningError               the CLI could not reach the node's local API

    EncodingError (protocol/errors.py)
    └── InvalidCursorError                a list cursor this node did not hand out     400

``ConfigError`` and its children keep ``ValueError`` as a second base (bad input);
the ``Unknown*`` ones also derive from ``LookupError``.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.errors import EncodingError, EntraideError

__all__ = [
    "AlreadyErasedError",
    "AlreadyRetractedError",
    "AuthError",
    "BelowTargetError",
    "ConfigError",
    "DuplicatePeerError",
    "ErasedError",
    "InvalidCursorError",
    "InvalidRuleError",
    "KeyHandedOverError",
    "NodeExistsError",
    "NodeNotRunningError",
    "NodeStoppingError",
    "NotOwnEntryError",
    "RestoringError",
    "ScopeError",
    "StorageError",
    "StorageFullError",
    "TransportError",
    "UnknownAudienceError",
    "UnknownEntryError",
    "UnknownForkError",
    "UnknownPeerError",
    "UnknownTokenError",
    "UntrustedPeerError",
    "WiderAudienceError",
]


class ConfigError(EntraideError, ValueError):
    """A configuration file, data dir or command-line value that is missing or invalid.

    The message names the file (when there is one) and the problem, on one line.
    """


class NodeExistsError(ConfigError):
    """``init`` found a node (a ``node.key``) already in the data dir."""


class DuplicatePeerError(ConfigError):
    """A trust-list entry whose name or key is already in the list (or is this node's)."""


class UnknownPeerError(ConfigError, LookupError):
    """No trust-list entry has that name."""


class UnknownTokenError(ConfigError, LookupError):
    """No API token has that name."""


class StorageError(EntraideError):
    """The ledger database failed: I/O error, corruption, unexpected schema."""


class StorageFullError(StorageError):
    """A write failed because the disk holding the ledger is full (SQLite's
    ``SQLITE_FULL``, the OS's ``ENOSPC``). The transaction was rolled back: nothing of
    it is stored, reads still work, and the same write succeeds once space is freed."""

    MESSAGE: ClassVar[str] = ("the disk holding the ledger is full: nothing was stored; "
                              "free space and retry")

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.MESSAGE)


class UntrustedPeerError(EntraideError):
    """A key or peer name that is not in the trust list."""


class TransportError(EntraideError):
    """A peer connection closed or failed at the transport (socket, WebSocket, deadline).

    Not misbehaviour: the peer may simply have gone away. The replicator ends the link
    and the dialer tries again; it never reaches the API.
    """


class AuthError(EntraideError):
    """A request carried no bearer token, or one this node does not know."""


class ScopeError(AuthError):
    """A known token whose scope does not allow the request."""


class NodeNotRunningError(EntraideError):
    """The command needs the running node, and its local API did not answer."""


class NodeStoppingError(StorageError):
    """The node is shutting down (or not started): nothing more is accepted."""


class RestoringError(NodeStoppingError):
    """Restored from a backup, the node signs nothing until it has caught up its own
    chain from its peers (agent/node/restore.py)."""


class KeyHandedOverError(NodeStoppingError):
    """The node signed the hand-over of its key to a new one: it signs nothing more
    with the old key, until restarted with the new one (agent/node/keys.py)."""


class UnknownAudienceError(UntrustedPeerError, ValueError):
    """An audience (or origin) name that is neither in the trust list nor this node's name,
    or an audience that does not fit the TLP (RED without one, CLEAR/GREEN with one)."""


class UnknownEntryError(EntraideError, LookupError):
    """No entry with that id that this node can read (unknown, or not addressed to it)."""


class UnknownForkError(EntraideError, LookupError):
    """The ledger holds no fork proof for that origin (or the name is not a peer's)."""


class NotOwnEntryError(EntraideError):
    """The entry belongs to another origin: only its author may retract it."""


class AlreadyRetractedError(EntraideError):
    """The entry was already retracted."""


class AlreadyErasedError(EntraideError):
    """The entry was already erased."""


class ErasedError(EntraideError):
    """The entry's body was erased by its origin: only its header is kept."""


class BelowTargetError(EntraideError, ValueError):
    """An entry about another entry (a sighting...) asked for a lower TLP than that
    entry's: it takes at least the target's TLP (docs/privacy.md)."""


class WiderAudienceError(EntraideError):
    """An entry about an encrypted entry asked for recipients outside that entry's
    audience: it takes at most the target's audience (docs/privacy.md)."""


class InvalidRuleError(EntraideError, ValueError):
    """A detection rule or playbook its engine refuses (agent/tools).

    ``engine`` names the engine (yara, sigma, suricata, snort, cacao); ``line`` is the
    1-based line of the text the engine points at, when it does; ``reason`` is the
    engine's message.
    """

    def __init__(self, engine: str, line: int | None, reason: str) -> None:
        self.engine, self.line, self.reason = engine, line, reason
        where = "" if line is None else f" (line {line})"
        super().__init__(f"{engine}{where}: {reason}")


class InvalidCursorError(EncodingError):
    """A list cursor this node did not hand out (bad text, size, tag or range)."""
