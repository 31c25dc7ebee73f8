"""Console sessions (agent/console/session.py): bounded in number and in time, each
with its own CSRF token; the token never shows in a repr."""

from __future__ import annotations

from agent.config.tokens import Scope
from agent.console.session import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_console_sessions_end_when_idle_and_after_their_lifetime() -> None:
    clock = Clock()
    store = SessionStore(idle=60, lifetime=300, clock=clock)
    sid, session = store.open("secret-token", Scope.READ, "read-1")
    clock.now += 59
    assert store.get(sid) is session
    clock.now += 61
    assert store.get(sid) is None and len(store) == 0  # idle: gone
    sid, session = store.open("secret-token", Scope.READ, "read-1")
    for _ in range(7):
        clock.now += 50
        store.get(sid)
    assert store.get(sid) is None  # busy, but past its lifetime


def test_console_sessions_are_bounded_oldest_first() -> None:
    store = SessionStore(max_sessions=3, clock=Clock())
    ids = [store.open("t", Scope.READ, f"n{i}")[0] for i in range(5)]
    assert len(store) == 3
    assert [store.get(i) is not None for i in ids] == [False, False, True, True, True]


def test_console_sessions_csrf_and_close() -> None:
    store = SessionStore(clock=Clock())
    sid, session = store.open("secret-token", Scope.WRITE, "w")
    other_sid, other = store.open("secret-token", Scope.WRITE, "w")
    assert session.csrf != other.csrf and sid != other_sid
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok(other.csrf) and not session.csrf_ok(None)
    assert "secret-token" not in repr(session)
    assert store.get("x" * 65) is None and store.get(None) is None
    store.close(sid)
    assert store.get(sid) is None and store.get(other_sid) is other
