"""Console sessions: server-side, behind a random cookie id.

Invariants:
- The API token of a signed-in reader lives only here, in the node's memory; the
  browser holds a random session id in an HttpOnly, SameSite=Strict cookie scoped to
  ``/console/``, so no script (ours or another origin's) can read the token.
- Every session has its own CSRF token; a POST whose form token differs is refused.
- Sessions end after ``idle`` seconds without a request or ``lifetime`` seconds in all,
  and at sign-out; at most ``max_sessions`` live at once (the oldest goes first), so a
  flood of sign-ins cannot grow memory without bound.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config.tokens import Scope

__all__ = ["COOKIE", "LANG_COOKIE", "PRE_COOKIE", "Session", "SessionStore"]

COOKIE = "entraide_console"
PRE_COOKIE = "entraide_console_pre"
"""Double-submit CSRF cookie of the sign-in form (there is no session yet)."""
LANG_COOKIE = "entraide_lang"


@dataclass
class Session:
    """One signed-in reader: the token (never sent back to the browser), its scope and
    name, the session's CSRF token, and one message to show on the next page."""

    token: str
    scope: Scope
    name: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = 0.0
    seen: float = 0.0
    flash: str | None = None

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"Session(name={self.name!r}, scope={self.scope.value})"

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def allows(self, scope: Scope) -> bool:
        return self.scope.allows(scope)


class SessionStore:
    """The live sessions, by id. ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(self, *, idle: float = 30 * 60, lifetime: float = 12 * 3600,
                 max_sessions: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, token: str, scope: Scope, name: str) -> tuple[str, Session]:
        """A new session for a token already authenticated; returns (id, session)."""
        now = self._clock()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        session = Session(token, scope, name, created=now, seen=now)
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid``, or None (unknown, expired: then forgotten)."""
        if not sid or len(sid) > 64:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle or now - session.created > self.lifetime:
            del self._sessions[sid]
            return None
        session.seen = now
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)
