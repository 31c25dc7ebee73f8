"""The chaos run's network namespaces (chaos/netns.py), made for real when the machine
allows it (root and ``ip netns``): a node's namespace reaches the root side of its own
veth and nothing else, the root namespace reaches the node's address, everything is
removed at the end, and a run killed outright leaves nothing after the next cleanup.
The fallback to loopback says why in one line."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.netns import PREFIX, Netns, cleanup_leftovers, unavailable_reason
from chaos.run import choose_network

REASON = unavailable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"no namespaces: {REASON}")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def _connect_from(ns: str, host: str, port: int) -> str:
    """Connect from inside namespace ``ns``; 'ok' or the error's class name."""
    code = ("import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
            "    print('ok')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=30).stdout.strip()


@needs_netns
def test_netns_node_reaches_its_own_proxy_side_only_and_all_is_removed() -> None:
    net = Netns(["QC", "ON"])
    try:
        net.create()
        qc, on = net.nodes["QC"], net.nodes["ON"]
        assert qc.ns in _namespaces() and on.ns in _namespaces()
        # Where QC's proxies listen (root side of its veth): reachable from QC's namespace.
        with socket.create_server((qc.host_ip, 0)) as server:
            port = server.getsockname()[1]
            assert _connect_from(qc.ns, qc.host_ip, port) == "ok"
            # ON's namespace has no route to it: nodes meet only through proxies.
            assert _connect_from(on.ns, qc.host_ip, port) != "ok"
        # The root namespace reaches a listener in QC's namespace (the runner, the proxies).
        listener = subprocess.Popen(
            ["ip", "netns", "exec", qc.ns, sys.executable, "-c",
             "import socket,sys\n"
             f"s=socket.create_server(({qc.node_ip!r}, 0))\n"
             "print(s.getsockname()[1], flush=True)\n"
             "s.accept()\n"], stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        socket.create_connection((qc.node_ip, port), timeout=5).close()
        listener.wait(timeout=10)
    finally:
        net.destroy()
    assert qc.ns not in _namespaces() and on.ns not in _namespaces()
    assert qc.host_if not in _links() and on.host_if not in _links()


@needs_netns
def test_netns_left_by_a_killed_run_is_removed_by_the_next_cleanup(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)                  # a process that has ended
    net = Netns(["QC"], owner=dead_pid)
    net.create()
    sleeper = subprocess.Popen(["ip", "netns", "exec", net.nodes["QC"].ns, "sleep", "600"])
    mnt = tmp_path / "tmpfs"                     # its full-disk tmpfs, as run.py names it
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"{PREFIX}{dead_pid}", str(mnt)],
                   check=True)
    try:
        assert net.nodes["QC"].ns in _namespaces()
        removed = cleanup_leftovers()
        assert f"network namespace {net.nodes['QC'].ns}" in removed
        assert f"tmpfs {mnt}" in removed
        assert net.nodes["QC"].ns not in _namespaces()
        assert net.nodes["QC"].host_if not in _links()
        assert sleeper.wait(timeout=10) != 0      # what ran inside was killed
        assert str(mnt) not in Path("/proc/self/mounts").read_text()
    finally:
        sleeper.kill()
        net.destroy()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_netns_fallback_to_loopback_says_why_and_on_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chaos.run.unavailable_reason", lambda: "not running as root")
    lines: list[str] = []
    assert choose_network(["QC", "ON"], "auto", lines.append) is None
    assert lines == ["network namespaces not used, nodes on 127.0.0.1: not running as root"]
    with pytest.raises(RuntimeError, match="--netns on: not running as root"):
        choose_network(["QC", "ON"], "on", lines.append)
    assert choose_network(["QC", "ON"], "off", lines.append) is None
    assert len(lines) == 1
