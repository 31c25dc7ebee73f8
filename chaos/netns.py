"""Network namespaces for a chaos run: every node in a namespace of its own, joined to
the root namespace by one veth pair (docs/chaos.md).

Layout, for a run whose process id is ``P`` and node number ``i`` (0-based)::

    root namespace                          namespace entraide-chaos-P-<name>
    ecPh<i>  10.237.B.(4i+1)/30  <-veth->   ecPn<i>  10.237.B.(4i+2)/30, lo up

``B`` is the first ``10.237.B.0/24`` that no interface of the machine uses (chosen under
a lock, so two runs at once get two subnets). Each namespace holds one node; its
listeners (API and peer) bind its own address. The fault proxies run in the root
namespace: the proxy a node dials listens on the root side of that node's veth, and
forwards to the far node's address in its namespace. A namespace has no default route
and the root namespace forwards nothing, so a node can reach nothing but its own
proxies: every byte between nodes crosses a proxy. Nothing on the machine's own
interfaces is changed; only the veths made here are ever addressed.

Sans asyncio: ``ip`` commands in subprocesses, for ``run_chaos`` to call before its
event loop starts and after it ends (``destroy`` in a ``finally``, so a failure or
Ctrl-C tears everything down). :func:`cleanup_leftovers` removes what a run killed
with ``kill -9`` left behind: namespaces under :data:`PREFIX` whose process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PREFIX", "Netns", "NodeNet", "cleanup_leftovers", "unavailable_reason"]

PREFIX = "entraide-chaos-"
NET = ipaddress.ip_network("10.237.0.0/16")
MAX_NODES = 63                        # /30 each in one /24
_LOCK = Path("/run/lock/entraide-chaos.lock")
_NS_RE = re.compile(re.escape(PREFIX) + r"(\d+)-([a-z0-9]+)$")


class NetnsError(RuntimeError):
    """An ``ip`` command failed (its stderr is the message)."""


def _ip(*args: str, check: bool = True) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip() or res.returncode}")
    return res.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _our_namespaces() -> Iterator[tuple[str, int]]:
    """(namespace, owner pid) of every namespace named under :data:`PREFIX`."""
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_RE.match(name)
        if m:
            yield name, int(m.group(1))


def _remove_namespace(name: str) -> None:
    """Kill what still runs in namespace ``name``, then delete it (its veth goes too)."""
    for pid in _ip("netns", "pids", name, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGCONT)
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)


def cleanup_leftovers() -> list[str]:
    """Delete the namespaces (and their veths) of chaos runs whose process is gone, and
    unmount their small tmpfs (mounted with the source ``PREFIX<pid>``); return what
    was removed. What belongs to a run still going is left alone."""
    removed: list[str] = []
    mounts: list[list[str]] = []
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as f:
        mounts = [line.split()[:2] for line in f]
    for source, target in mounts:
        pid = source.removeprefix(PREFIX)
        if source.startswith(PREFIX) and pid.isdigit() and not _alive(int(pid)):
            target = target.replace("\\040", " ")
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
            removed.append(f"tmpfs {target}")
    gone = [name for name, pid in _our_namespaces() if not _alive(pid)]
    for name in gone:
        _remove_namespace(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        m = re.search(r"\d+: (ec(\d+)h\d+)@", line)
        if m and not _alive(int(m.group(2))):
            _ip("link", "del", m.group(1), check=False)
    return [*(f"network namespace {name}" for name in gone), *removed]


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None: they can): not root, no ``ip``, or
    ``ip netns add`` refused (a container without the right)."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "exec", probe, "ip", "link", "set", "lo", "up")
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns does not work here ({exc})"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class NodeNet:
    """One node's namespace and the two ends of its veth."""

    ns: str
    host_if: str
    host_ip: str          # root namespace side: where the node's outgoing proxies listen
    node_ip: str          # inside the namespace: the node's API and peer listeners


class Netns:
    """The namespaces of one run: ``create()`` once, ``destroy()`` in a ``finally``."""

    def __init__(self, names: Iterable[str], owner: int | None = None) -> None:
        self.owner = os.getpid() if owner is None else owner
        self.names = list(names)
        if len(self.names) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes in namespaces")
        self.nodes: dict[str, NodeNet] = {}
        self.subnet: ipaddress.IPv4Network | None = None

    def _used_subnets(self) -> set[int]:
        used = set()
        for line in _ip("-4", "-o", "addr", "show", check=False).splitlines():
            m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", line)
            if m and ipaddress.ip_address(m.group(1)) in NET:
                used.add(int(m.group(1).split(".")[2]))
        return used

    def create(self) -> None:
        """Make a namespace and veth pair for every node and bring them up.

        Raises:
            NetnsError: an ``ip`` command failed (what was made is removed again).
        """
        _LOCK.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                free = [b for b in range(256) if b not in self._used_subnets()]
                if not free:
                    raise NetnsError(f"no free /24 left in {NET}")
                b = free[0]
                self.subnet = ipaddress.IPv4Network(f"10.237.{b}.0/24")
                for i, name in enumerate(self.names):
                    net = NodeNet(ns=f"{PREFIX}{self.owner}-{name.lower()}",
                                  host_if=f"ec{self.owner}h{i}",
                                  host_ip=f"10.237.{b}.{4 * i + 1}",
                                  node_ip=f"10.237.{b}.{4 * i + 2}")
                    self.nodes[name] = net
                    self._make(net, f"ec{self.owner}n{i}")
            except BaseException:
                self.destroy()
                raise

    @staticmethod
    def _make(net: NodeNet, inner_if: str) -> None:
        _ip("netns", "add", net.ns)
        _ip("link", "add", net.host_if, "type", "veth", "peer", "name", inner_if)
        _ip("link", "set", inner_if, "netns", net.ns)
        _ip("addr", "add", f"{net.host_ip}/30", "dev", net.host_if)
        _ip("link", "set", net.host_if, "up")
        inside = ("netns", "exec", net.ns, "ip")
        _ip(*inside, "addr", "add", f"{net.node_ip}/30", "dev", inner_if)
        _ip(*inside, "link", "set", inner_if, "up")
        _ip(*inside, "link", "set", "lo", "up")

    def exec_prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program in node ``name``'s namespace."""
        return ["ip", "netns", "exec", self.nodes[name].ns]

    def destroy(self) -> None:
        """Kill whatever still runs in the namespaces, delete them and the veths.
        Idempotent; never raises."""
        for net in self.nodes.values():
            with contextlib.suppress(Exception):
                _remove_namespace(net.ns)
            with contextlib.suppress(Exception):
                _ip("link", "del", net.host_if, check=False)
        self.nodes.clear()
