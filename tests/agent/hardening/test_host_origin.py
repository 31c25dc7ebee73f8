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


@pytest.mark.parametrize(("origin", "allowed"), [
    (None, True), ("http://127.0.0.1:8470", True), ("https://localhost", True),
    ("http://siem.qc.example:8470", True), ("null", False), ("http://evil.example", False),
    ("file://", False), ("http://127.0.0.1:8470/path", False), ("ftp://127.0.0.1", False),
])
def test_origins(origin: str | None, allowed: bool) -> None:
    assert HostPolicy.of(["siem.qc.example"]).allows_origin(origin) is allowed
