"""Bearer tokens for the local HTTP API, stored hashed in ``<data-dir>/tokens.toml``.

A token is ``ent_`` + base64url of 32 random bytes. Only its SHA-256 is stored,
with a name, a scope and a creation time::

    [[token]]
    name = "soc-siem"
    scope = "write"
    created = 2026-01-02T03:04:05Z
    hash = "sha256:<64 hex>"

Scopes are ordered: ``read`` < ``write`` < ``admin``; a token allows its scope and
every lower one.

:func:`authenticate` is the one check of a request's ``Authorization`` header: the REST
API, the event stream, ``/metrics``, TAXII and the read-lane reader processes all call
it, and only differ in what they do with its :class:`~agent.errors.AuthError` (a 401
or 403 in the API's or TAXII's error body; a reader gives the connection back to the
node, which then answers that same error).

Invariants:
- The token text is shown once, by :meth:`TokenStore.create`; it is never stored,
  logged or put in a ``repr``.
- tokens.toml is mode 0600 and replaced atomically under the data-dir lock, so the
  CLI can create or revoke tokens while the daemon runs; the daemon's store notices
  the change (mtime/size/inode) on its next ``authenticate``.
- If tokens.toml becomes invalid, ``authenticate`` fails closed (no token is
  accepted) until the file is fixed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import tomli_w

from agent.config.datadir import DataDir, FileStamp, atomic_write, file_stamp, read_bounded
from agent.errors import AuthError, ConfigError, ScopeError, UnknownTokenError

__all__ = [
    "MAX_TOKENS",
    "TOKEN_PREFIX",
    "Scope",
    "TokenRecord",
    "TokenStore",
    "authenticate",
    "hash_token",
    "token_of",
]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "ent_"
MAX_TOKENS = 1000
_TOKEN_BYTES = 32
_TOKEN_CHARS = len(TOKEN_PREFIX) + 43
_TOKEN_RE = re.compile(r"ent_[A-Za-z0-9_-]{43}", re.ASCII)
_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_MAX_FILE_BYTES = 1024 * 1024
_HEADER = """\
# Entraide API tokens: SHA-256 hashes only, never the tokens themselves.
# Create with 'entraide token create --scope read|write|admin', revoke with
# 'entraide token revoke NAME'. A running node picks up changes by itself.
"""


class Scope(StrEnum):
    """What a token may do; each scope includes those below it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Scope) -> bool:
        """True when a token of this scope may do what needs ``required``."""
        return self.rank >= required.rank


_RANK = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of the token's UTF-8 bytes.

    A fast hash is enough here, unlike for passwords: a token carries 256 random
    bits, so neither a dictionary nor brute force can invert its hash, and a slow
    KDF would only add cost to every API request.
    """
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """A stored token: never the token text, only its hash."""

    name: str
    scope: Scope
    created: datetime
    hash: str

    def to_json(self) -> dict[str, str]:
        """The fields safe to show (the hash is left out)."""
        return {"name": self.name, "scope": str(self.scope), "created": _iso(self.created)}


class TokenStore:
    """The tokens of one data dir. :meth:`authenticate` (a token to its record) is safe to
    call on every request; a request's header is checked by the module's :func:`authenticate`.

    Args:
        data_dir: where tokens.toml lives.
        randbytes: source of token bytes (``os.urandom``; tests may pass their own).
        clock: current time (UTC-aware).
    """

    def __init__(
        self,
        data_dir: DataDir,
        *,
        randbytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._data_dir = data_dir
        self._path = data_dir.tokens_path
        self._randbytes = randbytes
        self._clock = clock
        self._stamp: FileStamp | bool | None = False  # False: never read
        self._records: tuple[TokenRecord, ...] = ()
        self._digests: tuple[bytes, ...] = ()
        self._logged_stamp: FileStamp | bool | None = False

    def records(self) -> tuple[TokenRecord, ...]:
        """The current tokens, in file order.

        Raises:
            ConfigError: tokens.toml is invalid.
        """
        return self._read()

    def create(self, scope: Scope, name: str | None = None) -> str:
        """Create a token; return its text (the only time it is available).

        Args:
            name: unique label (letters, digits, ``._-``, up to 64); default
                ``<scope>-<n>``.

        Raises:
            ConfigError: bad or duplicate name, too many tokens, invalid tokens.toml.
            OSError: on I/O failure.
        """
        scope = Scope(scope)
        with self._data_dir.lock():
            records = self._read()
            names = {r.name for r in records}
            if name is None:
                n = 1
                while f"{scope}-{n}" in names:
                    n += 1
                name = f"{scope}-{n}"
            elif _NAME_RE.fullmatch(name) is None:
                raise ConfigError(
                    f"bad token name {name[:70]!r}: 1 to 64 characters among "
                    "A-Z a-z 0-9 . _ -, starting with a letter or digit"
                )
            if name in names:
                raise ConfigError(f"a token named {name!r} already exists")
            if len(records) >= MAX_TOKENS:
                raise ConfigError(f"{self._path.name}: already {MAX_TOKENS} tokens")
            raw = self._randbytes(_TOKEN_BYTES)
            if len(raw) != _TOKEN_BYTES:
                raise ConfigError("token randomness source returned the wrong size")
            token = TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
            created = self._clock().astimezone(UTC).replace(microsecond=0)
            record = TokenRecord(name, scope, created, hash_token(token))
            self._write((*records, record))
        return token

    def revoke(self, name: str) -> TokenRecord:
        """Delete the token named ``name``; return its record.

        Raises:
            UnknownTokenError: no token has that name.
            ConfigError: invalid tokens.toml.
            OSError: on I/O failure.
        """
        with self._data_dir.lock():
            records = self._read()
            kept = tuple(r for r in records if r.name != name)
            if len(kept) == len(records):
                raise UnknownTokenError(f"no token named {name!r}")
            self._write(kept)
        return next(r for r in records if r.name == name)

    def authenticate(self, token: str) -> TokenRecord | None:
        """The record of ``token``, or None if it is unknown or malformed.

        Re-reads tokens.toml when it changed (one ``stat`` otherwise). Every stored
        hash is compared in constant time, with no early exit. Never raises on a bad
        file: it logs once per change and accepts nothing until the file is fixed.
        """
        try:
            records = self._read()
        except (ConfigError, OSError) as exc:
            self._log_once(exc)
            return None
        if not isinstance(token, str) or len(token) != _TOKEN_CHARS:
            return None
        if _TOKEN_RE.fullmatch(token) is None:
            return None
        digest = hash_token(token).encode("ascii")
        found: TokenRecord | None = None
        for record, stored in zip(records, self._digests, strict=True):
            if hmac.compare_digest(digest, stored):
                found = record
        return found

    # --- file ------------------------------------------------------------------

    def _read(self) -> tuple[TokenRecord, ...]:
        stamp = file_stamp(self._path)
        if stamp == self._stamp:
            return self._records
        self._stamp = False  # fail closed while the file is unreadable or invalid
        self._set(())
        records = self._load() if stamp is not None else ()
        self._set(records)
        self._stamp = stamp
        return records

    def _set(self, records: tuple[TokenRecord, ...]) -> None:
        # The stored hashes as bytes once, not on every request.
        self._digests = tuple(r.hash.encode("ascii") for r in records)
        self._records = records

    def _load(self) -> tuple[TokenRecord, ...]:
        name = self._path.name
        try:
            doc = tomllib.loads(read_bounded(self._path, _MAX_FILE_BYTES).decode("utf-8"))
        except FileNotFoundError:
            return ()
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{name}: not valid TOML: {exc}") from exc
        if set(doc) - {"token"}:
            raise ConfigError(f"{name}: unknown setting {sorted(set(doc) - {'token'})[0]!r}")
        tables = doc.get("token", [])
        if not isinstance(tables, list) or len(tables) > MAX_TOKENS:
            raise ConfigError(f"{name}: 'token' must be up to {MAX_TOKENS} [[token]] tables")
        records = tuple(_record(name, i, t) for i, t in enumerate(tables))
        if len({r.name for r in records}) != len(records):
            raise ConfigError(f"{name}: two tokens share a name")
        return records

    def _write(self, records: tuple[TokenRecord, ...]) -> None:
        body = ""
        if records:
            body = "\n" + tomli_w.dumps({"token": [
                {"name": r.name, "scope": str(r.scope), "created": r.created, "hash": r.hash}
                for r in records
            ]})
        atomic_write(self._path, (_HEADER + body).encode("utf-8"), mode=0o600)
        self._stamp = file_stamp(self._path)
        self._set(records)

    def _log_once(self, exc: Exception) -> None:
        try:
            stamp = file_stamp(self._path)
        except OSError:
            stamp = None
        if self._logged_stamp is False or self._logged_stamp != stamp:
            self._logged_stamp = stamp
            log.error("API tokens unavailable, refusing every token: %s", exc)


# --- requests ---------------------------------------------------------------------------

_MISSING = "a bearer token is required (Authorization: Bearer <token>)"
_MISSING_TAXII = ("authenticate with an Entraide API token: 'Authorization: Bearer <token>', "
                  "or HTTP Basic with the token as password")


def token_of(authorization: str | None, *, basic: bool = False) -> str | None:
    """The token an ``Authorization`` header value carries, or None when it carries none.

    ``Bearer <token>`` (scheme case-insensitive, surrounding spaces ignored). With
    ``basic`` (TAXII clients), also ``Token <token>`` (taxii2-client's TokenAuth) and
    HTTP ``Basic`` with the token as password, any user name, or the token alone as user
    name. A malformed Basic value, another scheme or an empty token give None. Never
    raises.
    """
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer" or (basic and scheme == "token"):
        return credentials or None
    if basic and scheme == "basic":
        try:
            text = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = text.partition(":")
        return password or user or None
    return None


def authenticate(store: TokenStore, authorization: str | None, scope: Scope, *,
                 basic: bool = False) -> TokenRecord:
    """The record of the token in ``authorization`` (an ``Authorization`` header value),
    checked for ``scope``: the one authentication of every request the node answers.

    Args:
        store: the node's tokens (re-read when tokens.toml changes).
        authorization: the header's value; None or "" when the request has none.
        scope: what the request needs; the token's scope must allow it.
        basic: also take TAXII's schemes (see :func:`token_of`); the message for a
            missing token then names them.

    Raises:
        AuthError: no token (or not in an accepted scheme), or one ``store`` does not
            know (the API answers 401 with a ``WWW-Authenticate`` challenge).
        ScopeError: a known token whose scope does not allow ``scope`` (403).
    """
    token = token_of(authorization, basic=basic)
    if token is None:
        raise AuthError(_MISSING_TAXII if basic else _MISSING)
    record = store.authenticate(token)
    if record is None:
        raise AuthError("unknown token")
    if not record.scope.allows(scope):
        raise ScopeError(f"this needs a token with the {scope} scope; this one has "
                         f"{record.scope}")
    return record


def _record(file: str, index: int, table: Any) -> TokenRecord:
    where = f"{file}: token #{index + 1}"
    if not isinstance(table, dict) or set(table) != {"name", "scope", "created", "hash"}:
        raise ConfigError(f"{where}: needs exactly name, scope, created, hash")
    name, scope, created, digest = (table[k] for k in ("name", "scope", "created", "hash"))
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"{where}: bad name")
    if scope not in {s.value for s in Scope}:
        raise ConfigError(f"{where}: scope must be read, write or admin")
    if not isinstance(created, datetime) or created.tzinfo is None:
        raise ConfigError(f"{where}: created must be a TOML date-time with a time zone")
    if not isinstance(digest, str) or _HASH_RE.fullmatch(digest) is None:
        raise ConfigError(f"{where}: hash must be 'sha256:<64 lowercase hex>'")
    return TokenRecord(name, Scope(scope), created, digest)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
