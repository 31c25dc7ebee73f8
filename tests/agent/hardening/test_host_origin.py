"""DNS rebinding: the local API answers only a Host that is an IP literal, localhost or a
name in [api] allowed_hosts, and refuses an Origin from anywhere else (issue 17: any
Host was answered). The read lane's readers follow the same policy."""

from __future__ import annotations

import pytest

from agent.config.hosts import HostPolicy


@pytest.mark.parametrize("host", ["127.0.0.1:8470", "127.0.0.1", "localhost:8470",
                                  "LOCALHOST", "[::1]:8470", "10.0.0.5:8470",
                                  "siem.qc.example:8470", "SIEM.QC.example"])
def test_hosts_answered(host: str) -> None:
    assert HostPolicy.of(["siem.qc.example"]).allows_host(host)


@pytest.mark.parametrize("host", [None, "", "evil.example:8470", "evil.example",
                                  "127.0.0.1.evil.example", "localhost.evil.example:8470",
                                  "::1", "[::1", "[::1]x", "127.0.0.1:0", "127.0.0.1:99999",
                                  "127.0.0.1:80a", "user@127.0.0.1", "127.0.0.1 :8470",
                                  "siem.qc.example.evil:8470"])
def test_hosts_refused(host: str | None) -> None:
    assert not HostPolicy.of(["siem.qc.example"]).allows_host(host)


def test_a_host_is_judged_against_each_policy_s_own_names() -> None:
    # Decisions are cached per (value, names): one policy's answer is not another's.
    assert HostPolicy.of(["siem.qc.example"]).allows_host("siem.qc.example:8470")
    assert not HostPolicy.of([]).allows_host("siem.qc.example:8470")
    assert HostPolicy.of(["siem.qc.example"]).allows_host("siem.qc.example:8470")


def test_a_long_host_is_judged_as_a_short_one() -> None:
    # Over 300 characters a value is judged each time, not cached: the same rules.
    long_name = "a" * 400 + ".example"
    assert HostPolicy.of([long_name]).allows_host(long_name + ":8470")
    assert not HostPolicy.of([]).allows_host(long_name)
    assert not HostPolicy.of([long_name]).allows_host(long_name + ":notaport")


@pytest.mark.parametrize(("origin", "allowed"), [
    (None, True), ("http://127.0.0.1:8470", True), ("https://localhost", True),
    ("http://siem.qc.example:8470", True), ("null", False), ("http://evil.example", False),
    ("file://", False), ("http://127.0.0.1:8470/path", False), ("ftp://127.0.0.1", False),
])
def test_origins(origin: str | None, allowed: bool) -> None:
    assert HostPolicy.of(["siem.qc.example"]).allows_origin(origin) is allowed
