"""A federation of real ``entraide run`` processes on loopback, set up as operators would.

Used by ``entraide demo``, the end-to-end tests and the benchmarks. Every node is
initialised with the CLI (``init``, ``id``, ``peers add``, ``token create``) in its
own data dir and run as its own process. Every node trusts every other as an
author; only the given links are dialled (``(a, b)``: a has b's card, with its URL),
so entries are relayed along the links.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cli.client import ApiError, call_api
from agent.cli.lang import _
from agent.errors import NodeNotRunningError
from protocol.errors import EntraideError

__all__ = ["FedNode", "LocalFederation", "child_pids", "entraide_cli", "free_ports",
           "process_cpu_seconds", "tree_cpu_seconds", "wait_for", "wait_idle"]

START_TIMEOUT_S = 30.0


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets, ports = [], []
    for _port in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def entraide_cli(*args: str, env: dict[str, str] | None = None, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one ``entraide`` CLI command in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                            text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise EntraideError(f"entraide {' '.join(args[:2])}: {result.stderr.strip()}")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.02) -> float:
    """Poll ``predicate`` until truthy; return the seconds it took.

    Raises:
        EntraideError: not true within ``timeout`` seconds.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise EntraideError(_("timed out after {s} s waiting for {what}").format(
                s=f"{timeout:.0f}", what=what))
        time.sleep(interval)
    return time.monotonic() - start


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a node with its worker processes, and of the node's own process
    alone: user + system of the process, of its children that ended (reaped), and of
    its live children and theirs, from /proc."""
    own = process_cpu_seconds(pid)
    total = own
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            total += tree_cpu_seconds(child)[0]
    return total, own


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a node's workers), from /proc."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                out.extend(int(c) for c in f.read().split())
    return out


def wait_idle(pids: Iterable[int], *, idle: float = 0.02, interval: float = 0.25,
              timeout: float = 15.0) -> float:
    """Wait until processes (with their workers) use less than ``idle`` CPU seconds in
    one ``interval`` (a node starting its verify workers spends ~0.5 s of CPU on each),
    or ``timeout`` passed; return the seconds waited."""
    pids = list(pids)
    start = time.monotonic()
    last = sum(tree_cpu_seconds(pid)[0] for pid in pids)
    while time.monotonic() - start < timeout:
        time.sleep(interval)
        now = sum(tree_cpu_seconds(pid)[0] for pid in pids)
        if now - last < idle:
            break
        last = now
    return time.monotonic() - start


@dataclass
class FedNode:
    """One node of a local federation."""

    name: str
    jurisdiction: str
    data_dir: Path
    api_port: int
    peer_port: int
    key: str = ""
    fingerprint: str = ""
    card: str = ""
    token: str = ""
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """One JSON request to this node's API (raises ApiError, NodeNotRunningError)."""
        return call_api(self.api, self.token if token is None else token, method, path, body)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``entraide <args> --data-dir <this node>``."""
        return entraide_cli(*args, "--data-dir", str(self.data_dir), check=check)

    def visible(self, entry_id: str) -> bool:
        """True when this node lists ``entry_id`` (it holds it and may read it)."""
        try:
            self.call("GET", f"/api/v1/observations/{entry_id}")
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def entries(self) -> int:
        return int(self.call("GET", "/api/v1/status")["ledger"]["entries"])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalFederation:
    """Nodes in ``root``: ``set_up()`` once, then ``start()``/``stop()``/``kill()``."""

    def __init__(self, root: Path, nodes: Iterable[tuple[str, str]],
                 links: Iterable[tuple[str, str]]) -> None:
        specs = list(nodes)
        ports = free_ports(2 * len(specs))
        self.root = root
        self.nodes = [FedNode(name, juris, root / name.lower(), ports[2 * i], ports[2 * i + 1])
                      for i, (name, juris) in enumerate(specs)]
        self.links = list(links)

    def __getitem__(self, name: str) -> FedNode:
        return next(n for n in self.nodes if n.name == name)

    def set_up(self, on_node: Callable[[FedNode], None] | None = None) -> None:
        """``init`` every node, exchange keys and cards, create an admin token for each."""
        for node in self.nodes:
            node.cli("init", "--name", node.name, "--jurisdiction", node.jurisdiction,
                     "--api-port", str(node.api_port), "--peer-port", str(node.peer_port),
                     "--peer-host", "127.0.0.1")
            ident = json.loads(node.cli("id", "--json").stdout)
            node.key, node.fingerprint = ident["key"], ident["fingerprint"]
            node.card = ident["card"]
            if on_node is not None:
                on_node(node)
        dialled = set(self.links)
        for node in self.nodes:
            for other in self.nodes:
                if other is node:
                    continue
                if (node.name, other.name) in dialled:
                    node.cli("peers", "add", "--card", other.card)
                else:
                    node.cli("peers", "add", "--name", other.name, "--key", other.key)
            node.token = json.loads(node.cli("token", "create", "--scope", "admin",
                                             "--name", "fed-admin", "--json").stdout)["token"]

    def start(self, names: Iterable[str] | None = None, timeout: float = START_TIMEOUT_S) -> None:
        """Start the named nodes (default all) and wait until each answers health."""
        chosen = [self[n] for n in names] if names is not None else self.nodes
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for node in chosen:
            node.log = self.root / f"{node.name.lower()}.log"
            with node.log.open("ab") as log:
                node.process = subprocess.Popen(
                    [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(node.data_dir)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        for node in chosen:
            while True:
                try:
                    node.call("GET", "/api/v1/health")
                    break
                except NodeNotRunningError:
                    assert node.process is not None
                    if node.process.poll() is not None or time.monotonic() > deadline:
                        tail = node.log.read_text(errors="replace")[-3000:]
                        raise EntraideError(_("node {name} did not start:").format(
                            name=node.name) + f"\n{tail}") from None
                    time.sleep(0.05)

    def stop(self, names: Iterable[str] | None = None, timeout: float = 20) -> None:
        """SIGTERM (graceful shutdown), then wait; SIGKILL if it hangs."""
        chosen = [self[n] for n in names] if names is not None else self.nodes
        for node in chosen:
            if node.running:
                assert node.process is not None
                node.process.send_signal(signal.SIGTERM)
        for node in chosen:
            if node.process is not None:
                try:
                    node.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    def kill(self, name: str) -> None:
        """SIGKILL one node: no shutdown path at all."""
        node = self[name]
        if node.running:
            assert node.process is not None
            node.process.kill()
            node.process.wait()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
