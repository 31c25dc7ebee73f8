"""A chaos run: real ``entraide run`` processes, every peer link through a
:class:`chaos.proxy.LinkProxy`, faults injected on a schedule, steady submits, and the
invariants checked after healing (docs/chaos.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.cli.localfed import FedNode, LocalFederation, child_pids
from chaos.netns import PREFIX, Netns, cleanup_leftovers, unavailable_reason
from chaos.proxy import Link, LinkProxy

__all__ = ["PROFILES", "Profile", "Report", "run_chaos"]

FAULT_KINDS = ("latency", "bandwidth", "blackhole", "reset", "half_open", "slow_read",
               "kill", "sigstop", "clock_skew", "enospc")
NAMES = [("QC", "Québec"), ("ON", "Ontario"), ("BC", "British Columbia"), ("AB", "Alberta"),
         ("NS", "Nova Scotia"), ("MB", "Manitoba"), ("SK", "Saskatchewan"),
         ("NB", "New Brunswick")]
SATELLITE = ("NU", "Nunavut")
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@dataclass
class Profile:
    name: str
    nodes: int
    duration: float                       # seconds of faults and submits
    faults: tuple[str, ...] = FAULT_KINDS
    fault_every: float = 5.0              # a new fault starts this often
    fault_length: float = 4.0             # and lasts this long
    submit_rate: float = 4.0              # acknowledged submits per second, all nodes
    heal_deadline: float = 30.0           # invariants must hold within this after healing
    rss_limit_mb: float = 400.0           # per node, with its workers
    sat_lag_limit: float = 10.0           # satellite: vector lag outside outages
    satellite: bool = False
    seed: int = 0


PROFILES = {
    "short": Profile("short", nodes=5, duration=60.0, fault_every=5.0, fault_length=4.0),
    "long": Profile("long", nodes=5, duration=330.0, fault_every=6.0, fault_length=5.0),
    "satellite": Profile("satellite", nodes=4, duration=100.0, fault_every=30.0,
                         fault_length=20.0, faults=("outage",), satellite=True,
                         submit_rate=3.0),
}


@dataclass
class Report:
    profile: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(ok for _n, ok, _d in self.checks)

    def text(self) -> str:
        lines = [f"chaos run, profile {self.profile}"]
        for k, v in self.figures.items():
            lines.append(f"  {k}: {v}")
        lines.append("faults (by start time):")
        lines.extend(f"  {e}" for e in sorted(self.events, key=_start_time))
        lines.append("invariants:")
        for name, ok, detail in self.checks:
            lines.append(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def _start_time(event: str) -> float:
    """The start time of a report event (``t= 12.0s kind: ...``); 0 without one."""
    try:
        return float(event.split("s ", 1)[0].removeprefix("t="))
    except ValueError:
        return 0.0


def _vector_diff(vectors: dict[str, dict[str, tuple[int, str]]]) -> str:
    """The origins whose head seq differs between nodes, at most three, e.g.
    ``origin 1A2B3C4D: QC 12, ON 11``."""
    parts = []
    for origin in sorted({o for v in vectors.values() for o in v}):
        heads = {name: v.get(origin, (0, ""))[0] for name, v in sorted(vectors.items())}
        if len(set(heads.values())) > 1 or len({v.get(origin) for v in vectors.values()}) > 1:
            fork = " (same seq, different hashes)" if len(set(heads.values())) == 1 else ""
            parts.append(f"origin {origin[:8]}: " + ", ".join(
                f"{name} {seq}" for name, seq in heads.items()) + fork)
    return "; ".join(parts[:3]) or "no ledger could be read"


def node_specs(profile: Profile) -> list[tuple[str, str]]:
    """(name, jurisdiction) of the profile's nodes; the satellite node last."""
    specs = NAMES[:profile.nodes - (1 if profile.satellite else 0)]
    return [*specs, SATELLITE] if profile.satellite else specs


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its workers, in MB."""
    total = 0
    for p in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError), \
                open(f"/proc/{p}/statm", encoding="ascii") as f:
            total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def _ledger(node: FedNode) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{node.data_dir / 'ledger.sqlite3'}?mode=ro", uri=True,
                           timeout=5)


def version_vector(node: FedNode) -> dict[str, tuple[int, str]]:
    """origin key (hex) → (head seq, head hash), read from the node's ledger file."""
    with contextlib.closing(_ledger(node)) as db:
        rows = db.execute("SELECT hex(key), head_seq, hex(head_hash) FROM origins "
                          "WHERE head_hash IS NOT NULL").fetchall()
    return {k: (s, h) for k, s, h in rows}


def missing_ids(node: FedNode, ids: set[str]) -> set[str]:
    """The acknowledged ids that the node's ledger does not hold."""
    with contextlib.closing(_ledger(node)) as db:
        have = {h.lower() for (h,) in db.execute("SELECT hex(hash) FROM entries")}
    return ids - have


class Chaos:
    def __init__(self, profile: Profile, root: Path, log: Callable[[str], None],
                 net: Netns | None = None) -> None:
        self.p = profile
        self.net = net
        self.root = root
        self.say = log
        self.rng = random.Random(profile.seed or time.time_ns())
        specs = node_specs(profile)
        self.tmpfs: Path | None = None
        self.fed = LocalFederation(root, specs, [])
        self.report = Report(profile.name)
        self.proxies: dict[tuple[str, str], LinkProxy] = {}
        self.proxy_urls: dict[tuple[str, str], str] = {}
        self.links: list[tuple[str, str]] = []
        self.acked: dict[str, tuple[str, float]] = {}   # id → (node, ack time)
        self.submit_errors: dict[str, int] = {}
        self.rss_peak: dict[str, float] = {}
        self.skewed: set[str] = set()
        self.stopped: set[str] = set()
        self.down: set[str] = set()
        self.busy: set[str] = set()                    # nodes under a process fault
        self.restarts = 0
        self.restart_failures: list[str] = []
        self.sat_lag: list[float] = []                  # vector lag samples, seconds
        self.acked_seq: dict[tuple[str, int], float] = {}  # (node, seq) → ack time
        self.origin_of: dict[str, str] = {}             # node → its origin key (hex)
        self.catchup: tuple[float, set[str]] | None = None
        self.catchups: list[float] = []
        self._stop = asyncio.Event()
        self._seq = 0
        self._inflight: set[asyncio.Task[bool]] = set()

    # -- set-up

    def _mount_tmpfs(self, node: FedNode) -> None:
        """Put ``node``'s data dir on a small tmpfs of its own (root only)."""
        mnt = self.root / "tmpfs"
        mnt.mkdir(exist_ok=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return
        # Named after this run, so that a cleanup finds it if the run is killed outright.
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700",
                              f"{PREFIX}{os.getpid()}", str(mnt)], capture_output=True,
                             text=True)
        if res.returncode == 0:
            self.tmpfs = mnt
            node.data_dir = mnt / node.name.lower()

    def set_up(self) -> None:
        """Initialise and link the nodes with the CLI, as operators would (what
        LocalFederation.set_up does, each node's commands in a thread of its own: they
        are independent, and a loaded machine sets up in about half the time). Every
        node trusts every other; the links it dials get their proxy's URL at once, so
        :meth:`start_proxies` runs first."""
        if "enospc" in self.p.faults:
            self._mount_tmpfs(self.fed.nodes[-1])

        def init(node: FedNode) -> None:
            node.cli("init", "--name", node.name, "--jurisdiction", node.jurisdiction,
                     "--api-port", str(node.api_port), "--peer-port", str(node.peer_port),
                     "--peer-host", self.ip(node.name))
            if self.net is not None:
                # The API on the node's own address in its namespace too (the API's
                # Host check answers IP literals).
                conf = node.data_dir / "entraide.toml"
                text = conf.read_text()
                api = '[api]\nhost = "127.0.0.1"'
                assert text.count(api) == 1, "entraide.toml changed shape"
                conf.write_text(text.replace(api, f'[api]\nhost = "{self.ip(node.name)}"'))
            ident = json.loads(node.cli("id", "--json").stdout)
            node.key, node.fingerprint, node.card = ident["key"], ident["fingerprint"], \
                ident["card"]

        def trust(node: FedNode) -> None:
            for other in self.fed.nodes:
                if other is not node:
                    url = self.proxy_urls.get((node.name, other.name))
                    node.cli("peers", "add", "--name", other.name, "--key", other.key,
                             *(("--url", url) if url else ()))
            node.token = json.loads(node.cli("token", "create", "--scope", "admin",
                                             "--name", "fed-admin", "--json").stdout)["token"]

        with ThreadPoolExecutor(len(self.fed.nodes)) as pool:
            list(pool.map(init, self.fed.nodes))
            list(pool.map(trust, self.fed.nodes))

    def ip(self, name: str) -> str:
        """The address node ``name`` listens on (its namespace's, or 127.0.0.1)."""
        return "127.0.0.1" if self.net is None else self.net.nodes[name].node_ip

    def api(self, node: FedNode) -> str:
        return f"http://{self.ip(node.name)}:{node.api_port}"

    async def start_proxies(self) -> None:
        """One proxy per link, before the nodes are set up (:meth:`set_up` gives each
        dialling node its proxy's URL)."""
        names = [n.name for n in self.fed.nodes]
        # Every node dials every node after it in the list: a full mesh of links, each
        # through its own proxy.
        self.links = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        for a, b in self.links:
            link = Link()
            if self.p.satellite and SATELLITE[0] in (a, b):
                # 600 ms round trip = 300 ms each way, 1 Mbit/s, 2% loss
                link.latency_ms, link.jitter_ms = 290.0, 20.0
                link.bandwidth, link.loss = 125_000.0, 0.02
            # The proxy a dials listens where a can reach it: 127.0.0.1, or the root
            # side of a's veth (a's namespace reaches nothing else).
            listen = "127.0.0.1" if self.net is None else self.net.nodes[a].host_ip
            proxy = LinkProxy(self.fed[b].peer_port, link, target_host=self.ip(b))
            port = await proxy.start(host=listen)
            self.proxies[(a, b)] = proxy
            self.proxy_urls[(a, b)] = f"http://{listen}:{port}"

    # -- processes

    def start_node(self, name: str) -> None:
        node = self.fed[name]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if name in self.skewed:
            env.update(LD_PRELOAD=LIBFAKETIME, FAKETIME="+150s",
                       FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1")
        node.log = self.root / f"{name.lower()}.log"
        prefix = [] if self.net is None else self.net.exec_prefix(name)
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "agent.cli", "run", "--data-dir",
                 str(node.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def kill_node(self, name: str) -> None:
        node = self.fed[name]
        if node.process is not None and node.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait()

    async def wait_healthy(self, session: aiohttp.ClientSession, name: str,
                           timeout: float) -> bool:
        """True once node ``name`` answers health; False after ``timeout`` seconds or as
        soon as its process has exited."""
        node = self.fed[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(self.api(node) + "/api/v1/health",
                                       timeout=aiohttp.ClientTimeout(total=3)) as r:
                    if r.status == 200:
                        return True
            await asyncio.sleep(0.2)
        return False

    async def restart(self, session: aiohttp.ClientSession, name: str, why: str) -> None:
        """Start node ``name`` again and wait until it answers health (60 s at most);
        a restart that does not come back is noted for the report."""
        self.restarts += 1
        self.start_node(name)
        if not await self.wait_healthy(session, name, 60):
            proc = self.fed[name].process
            status = proc.poll() if proc is not None else None
            self.restart_failures.append(
                f"{name} after {why}: " + (f"exited with status {status}" if status is not None
                                          else "no health answer within 60 s"))

    # -- load

    async def submitter(self, session: aiohttp.ClientSession) -> None:
        nodes = self.fed.nodes
        interval = 1.0 / self.p.submit_rate
        while not self._stop.is_set():
            node = nodes[self._seq % len(nodes)]
            self._seq += 1
            task = asyncio.create_task(self._submit_one(session, node, self._seq))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _submit_one(self, session: aiohttp.ClientSession, node: FedNode, n: int) -> bool:
        """Submit one observation to ``node``; True when it answered 201 (acknowledged)."""
        body = {"type": "ipv4-addr", "value": f"198.18.{(n >> 8) & 255}.{n & 255}",
                "tlp": "GREEN", "confidence": 60, "severity": "medium",
                "tags": ["chaos"], "description": {"en": f"chaos {self.p.name} #{n}"}}
        try:
            async with session.post(self.api(node) + "/api/v1/observations", json=body,
                                    headers={"Authorization": f"Bearer {node.token}"},
                                    timeout=aiohttp.ClientTimeout(total=15)) as r:
                if r.status == 201:
                    doc = await r.json()
                    now = time.monotonic()
                    self.acked[doc["id"]] = (node.name, now)
                    if isinstance(doc.get("seq"), int):
                        self.acked_seq[(node.name, doc["seq"])] = now
                    return True
                key = f"{node.name} HTTP {r.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            key = f"{node.name} {type(exc).__name__}"
        self.submit_errors[key] = self.submit_errors.get(key, 0) + 1
        return False

    async def sampler(self) -> None:
        while not self._stop.is_set():
            self._sample_rss()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    def _origin(self, node: FedNode) -> str | None:
        """``node``'s origin key (hex), found from one of its acknowledged entries."""
        if node.name not in self.origin_of:
            mine = [i for i, (n, _t) in self.acked.items() if n == node.name][:1]
            if not mine:
                return None
            with contextlib.closing(_ledger(node)) as db:
                row = db.execute("SELECT hex(o.key) FROM entries e JOIN origins o "
                                 "USING (origin_id) WHERE e.hash = ?",
                                 (bytes.fromhex(mine[0]),)).fetchone()
            if row is None:
                return None
            self.origin_of[node.name] = row[0]
        return self.origin_of[node.name]

    def vector_lag(self, sat: FedNode, now: float) -> float:
        """How far the satellite's version vector is behind the federation, in seconds:
        for each other node, the age of the oldest entry it acknowledged that the
        satellite's vector does not cover yet (0 when it covers them all); the largest."""
        vector = version_vector(sat)
        lag = 0.0
        for node in self.fed.nodes:
            if node is sat:
                continue
            origin = self._origin(node)
            if origin is None:
                continue
            have = vector.get(origin, (0, ""))[0]
            behind = [t for (n, seq), t in self.acked_seq.items()
                      if n == node.name and seq > have]
            if behind:
                lag = max(lag, now - min(behind))
        return lag

    async def satellite_watch(self) -> None:
        """Sample, every 0.5 s, how far the satellite's version vector is behind the
        others' acknowledged entries, outside outages and their catching up; and time
        each catching up (every entry the others acknowledged before the outage ended
        in the satellite's ledger)."""
        sat = self.fed[SATELLITE[0]]
        while not self._stop.is_set():
            await asyncio.sleep(0.5)
            if self.down:
                continue
            now = time.monotonic()
            with contextlib.suppress(sqlite3.Error):
                if self.catchup is not None:  # after an outage: how long to catch up
                    t_end, ids = self.catchup
                    if not missing_ids(sat, ids):
                        self.catchups.append(now - t_end)
                        self.catchup = None
                    continue
                self.sat_lag.append(self.vector_lag(sat, now))

    # -- faults

    def _links_of(self, name: str) -> list[LinkProxy]:
        return [p for (a, b), p in self.proxies.items() if name in (a, b)]

    async def _black_hole(self, name: str, seconds: float) -> None:
        """Drop everything on every link of ``name`` for ``seconds``, then heal them."""
        for p in self._links_of(name):
            p.link.blackhole = True
            p.link.poke()
        await asyncio.sleep(seconds)
        for p in self._links_of(name):
            p.heal()

    async def fault(self, kind: str, session: aiohttp.ClientSession) -> None:
        names = [n.name for n in self.fed.nodes]
        if kind in ("kill", "sigstop", "clock_skew"):
            # One process fault at a time per node: two would start it twice.
            names = [n for n in names if n not in self.busy] or names
        victim = self.rng.choice(names)
        if kind in ("kill", "sigstop", "clock_skew"):
            if victim in self.busy:
                self.report.events.append(f"{kind} skipped: every node under a process fault")
                return
            self.busy.add(victim)
            try:
                await self._fault(kind, victim, session)
            finally:
                self.busy.discard(victim)
        else:
            await self._fault(kind, victim, session)

    async def _fault(self, kind: str, victim: str, session: aiohttp.ClientSession) -> None:
        link_key = self.rng.choice(list(self.proxies))
        link = self.proxies[link_key]
        length = self.p.fault_length
        t0 = time.monotonic() - self.t_start
        what = ""
        if kind == "latency":
            link.link.latency_ms, link.link.jitter_ms = 400.0, 300.0
            what = f"link {link_key[0]}-{link_key[1]}: +400 ms latency, 300 ms jitter"
            await asyncio.sleep(length)
            link.link.latency_ms = link.link.jitter_ms = 0.0
        elif kind == "bandwidth":
            link.link.bandwidth = 4_000.0
            what = f"link {link_key[0]}-{link_key[1]}: 4 kB/s"
            await asyncio.sleep(length)
            link.link.bandwidth = 0.0
        elif kind == "blackhole":
            what = f"{victim}: all its links black-holed"
            await self._black_hole(victim, length)
        elif kind == "reset":
            n = sum(p.reset() for p in self.proxies.values())
            what = f"every link: {n} connections reset (RST)"
        elif kind == "half_open":
            n = sum(p.half_open() for p in self._links_of(victim))
            what = f"{victim}: {n} connections half-open (upstream gone, no FIN)"
            await asyncio.sleep(length)
            for p in self._links_of(victim):
                p.heal()
        elif kind == "slow_read":
            for p in self._links_of(victim):
                p.link.slow_read = 2_000.0
            what = f"{victim}: its links read at 2 kB/s"
            await asyncio.sleep(length)
            for p in self._links_of(victim):
                p.heal()
        elif kind == "kill":
            self.down.add(victim)
            self.kill_node(victim)
            what = f"{victim}: kill -9, restarted {length:.0f} s later"
            await asyncio.sleep(length)
            await self.restart(session, victim, "kill -9")
            self.down.discard(victim)
        elif kind == "sigstop":
            proc = self.fed[victim].process
            assert proc is not None
            self.stopped.add(victim)
            os.killpg(proc.pid, signal.SIGSTOP)
            what = f"{victim}: SIGSTOP for {length:.0f} s, then SIGCONT"
            await asyncio.sleep(length)
            os.killpg(proc.pid, signal.SIGCONT)
            self.stopped.discard(victim)
        elif kind == "clock_skew":
            if not os.path.exists(LIBFAKETIME):
                what = "clock skew skipped: libfaketime is not installed"
            else:
                self.down.add(victim)
                self.kill_node(victim)
                self.skewed.add(victim)
                await self.restart(session, victim, "a clock skew")
                self.down.discard(victim)
                what = f"{victim}: restarted with its clock 150 s ahead (libfaketime), " \
                       f"then back to the true time {length:.0f} s later"
                await asyncio.sleep(length * 2)
                self.down.add(victim)
                self.kill_node(victim)
                self.skewed.discard(victim)
                await self.restart(session, victim, "its clock back")
                self.down.discard(victim)
        elif kind == "enospc":
            if self.tmpfs is None:
                what = "ENOSPC skipped: needs root to mount a small tmpfs"
            else:
                filler = self.tmpfs / "filler"
                with contextlib.suppress(OSError), filler.open("wb") as f:
                    while True:
                        f.write(b"\0" * 2**20)
                with contextlib.suppress(OSError), filler.open("ab") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
                what = f"{self.fed.nodes[-1].name}: its data dir's tmpfs full (ENOSPC) " \
                       f"for {length:.0f} s"
                await asyncio.sleep(length)
                filler.unlink()
        elif kind == "outage":
            sat = SATELLITE[0]
            self.down.add(sat)
            what = f"{sat}: satellite outage (all its links black-holed) for {length:.0f} s"
            await self._black_hole(sat, length)
            self.catchup = (time.monotonic(), {i for i, (n, _t) in self.acked.items()
                                               if n != sat})
            self.down.discard(sat)
        self.report.events.append(f"t={t0:5.1f}s {kind}: {what}")
        self.say(f"  t={t0:5.1f}s {kind}: {what}")

    async def fault_loop(self, session: aiohttp.ClientSession) -> None:
        kinds = list(self.p.faults)
        order: list[str] = []
        running: set[asyncio.Task[None]] = set()
        end = self.t_start + self.p.duration
        # The satellite profile measures its steady state before its first outage.
        await asyncio.sleep(self.p.fault_every if self.p.satellite else
                            min(3.0, self.p.fault_every))
        while time.monotonic() + self.p.fault_length < end:
            if not order:
                order = kinds[:]
                self.rng.shuffle(order)
            t = asyncio.create_task(self.fault(order.pop(), session))
            running.add(t)
            t.add_done_callback(running.discard)
            await asyncio.sleep(self.p.fault_every)
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    # -- healing and the invariants

    async def heal(self, session: aiohttp.ClientSession) -> None:
        for p in self.proxies.values():
            p.heal()
        for name in list(self.stopped):
            proc = self.fed[name].process
            if proc is not None:
                os.killpg(proc.pid, signal.SIGCONT)
        for node in self.fed.nodes:
            if node.process is None or node.process.poll() is not None:
                self.start_node(node.name)
        if self.tmpfs is not None:
            with contextlib.suppress(OSError):
                (self.tmpfs / "filler").unlink()

    def _sample_rss(self) -> None:
        for node in self.fed.nodes:
            if node.process is not None and node.process.poll() is None:
                rss = _rss_mb(node.process.pid)
                self.rss_peak[node.name] = max(self.rss_peak.get(node.name, 0.0), rss)

    async def _verify(self, session: aiohttp.ClientSession) -> list[str]:
        """``GET /api/v1/ledger/verify`` on every node; the problems found."""
        bad = []
        for node in self.fed.nodes:
            try:
                async with session.get(self.api(node) + "/api/v1/ledger/verify",
                                       headers={"Authorization": f"Bearer {node.token}"},
                                       timeout=aiohttp.ClientTimeout(total=120)) as r:
                    doc = await r.json()
                    if r.status != 200 or not doc.get("ok"):
                        bad.append(f"{node.name}: {doc.get('problems', doc)!s:.200}")
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                bad.append(f"{node.name}: {type(exc).__name__}")
        return bad

    async def check(self, session: aiohttp.ClientSession, t_heal: float) -> None:
        """The invariants, from ``t_heal`` (when the faults stopped): every node answers
        health and accepts a submit; then, polled until the heal deadline, every
        acknowledged id (those submits too) in every node's ledger, identical version
        vectors and ledger verify ok on every node; memory bounded all along."""
        rep = self.report
        deadline = t_heal + self.p.heal_deadline

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        # No node wedged: health, then one submit accepted by each node.
        wedged: list[str] = []
        for node in self.fed.nodes:
            if not await self.wait_healthy(session, node.name, max(left(), 1.0)):
                status = node.process.poll() if node.process is not None else None
                wedged.append(f"{node.name}: no health answer" + (
                    f" (exited with status {status})" if status is not None else ""))
                continue
            self._seq += 1
            while not await self._submit_one(session, node, self._seq):
                if left() <= 0:
                    wedged.append(f"{node.name}: refused every submit")
                    break
                await asyncio.sleep(0.5)
        t_ready = time.monotonic() - t_heal
        rep.check("no node wedged", not wedged,
                  f"every node answers /api/v1/health and accepted a submit "
                  f"{t_ready:.1f} s after healing" if not wedged else "; ".join(wedged))

        ids = set(self.acked)
        healed_at: float | None = None
        same_at: float | None = None
        lost: dict[str, set[str]] = {}
        vectors: dict[str, dict[str, tuple[int, str]]] = {}
        bad: list[str] = ["not run: the vectors were never identical"]
        while True:
            self._sample_rss()
            try:
                vectors = {n.name: version_vector(n) for n in self.fed.nodes}
                lost = {n.name: missing_ids(n, ids) for n in self.fed.nodes}
            except sqlite3.Error as exc:
                lost = {"?": {f"ledger read: {exc}"}}
            same = len({json.dumps(v, sort_keys=True) for v in vectors.values()}) == 1
            if same and not any(lost.values()):
                if same_at is None:
                    same_at = time.monotonic() - t_heal
                bad = await self._verify(session)
                if not bad:
                    healed_at = time.monotonic() - t_heal
                    break
            if left() <= 0:
                break
            await asyncio.sleep(0.5)
        limit = f"deadline {self.p.heal_deadline:.0f} s"
        rep.check("no acknowledged entry lost", not any(lost.values()),
                  f"{len(ids)} acknowledged ids in all {len(self.fed.nodes)} ledgers"
                  if not any(lost.values()) else ", ".join(
                      f"{k} misses {len(v)}" for k, v in sorted(lost.items()) if v))
        n_origins = len(next(iter(vectors.values()), {}))
        rep.check("identical version vectors", same_at is not None,
                  f"{n_origins} origins, identical on every node {same_at:.1f} s after "
                  f"healing ({limit})" if same_at is not None else
                  f"not within {self.p.heal_deadline:.0f} s: {_vector_diff(vectors)}")
        rep.check("ledger verify ok", not bad,
                  "every node" if not bad else "; ".join(bad))
        rep.check("healed within the deadline", healed_at is not None,
                  f"vectors identical, nothing lost and verify ok on every node "
                  f"{healed_at:.1f} s after the faults stopped ({limit})"
                  if healed_at is not None else f"not within {self.p.heal_deadline:.0f} s")
        rep.figures["healing time"] = (f"{healed_at:.1f} s" if healed_at is not None
                                       else f"> {self.p.heal_deadline:.0f} s")
        self._sample_rss()
        over = {k: v for k, v in self.rss_peak.items() if v > self.p.rss_limit_mb}
        rep.check("memory bounded", not over and bool(self.rss_peak),
                  f"peak RSS per node (with its workers), cap {self.p.rss_limit_mb:.0f} MB: "
                  + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(self.rss_peak.items())))
        if self.p.satellite:
            lag = sorted(self.sat_lag)
            if lag:
                p99 = lag[min(len(lag) - 1, int(0.99 * len(lag)))]
                detail = (f"{len(lag)} samples of {SATELLITE[0]}'s vector lag outside "
                          f"outages: p50 {lag[len(lag) // 2]:.1f} s, p99 {p99:.1f} s, "
                          f"max {lag[-1]:.1f} s (limit {self.p.sat_lag_limit:.0f} s)")
                rep.figures["satellite lag"] = detail
            rep.check(f"satellite within {self.p.sat_lag_limit:.0f} s",
                      bool(lag) and lag[-1] <= self.p.sat_lag_limit,
                      detail if lag else "no sample taken")
            outages = sum(1 for e in rep.events if " outage:" in e)
            caught = len(self.catchups) == outages and self.catchup is None
            rep.check("satellite catches up after an outage", caught and outages > 0,
                      f"{outages} outages, caught up after " + ", ".join(
                          f"{c:.1f} s" for c in self.catchups) if caught else
                      f"{len(self.catchups)} of {outages} outages caught up before the end")
        rep.check("every restart came back", not self.restart_failures,
                  f"{self.restarts} restarts (kill -9, clock skew), each answered health"
                  if not self.restart_failures else "; ".join(self.restart_failures))
        rep.check("submits acknowledged", len(ids) > 0,
                  f"{len(ids)} acknowledged, {sum(self.submit_errors.values())} failed")
        rep.figures["acknowledged submits"] = len(ids)
        rep.figures["failed submits"] = dict(sorted(self.submit_errors.items()))
        rep.figures["connections through the proxies"] = sum(
            p.accepted for p in self.proxies.values())

    async def main(self) -> Report:
        where = ("each in its own network namespace" if self.net is not None
                 else "on 127.0.0.1")
        self.say(f"setting up {len(self.fed.nodes)} nodes {where}, in {self.root}")
        t0 = time.monotonic()
        await self.start_proxies()
        await asyncio.to_thread(self.set_up)
        for node in self.fed.nodes:
            self.start_node(node.name)
        async with aiohttp.ClientSession() as session:
            for node in self.fed.nodes:
                if not await self.wait_healthy(session, node.name, 60):
                    raise RuntimeError(f"node {node.name} did not start: "
                                       f"{node.log.read_text(errors='replace')[-2000:]}")
            self.t_start = time.monotonic()
            self.report.figures["set-up"] = f"{self.t_start - t0:.0f} s (init, trust, start)"
            self.say(f"running {self.p.duration:.0f} s of faults and submits")
            tasks = [asyncio.create_task(self.submitter(session)),
                     asyncio.create_task(self.sampler())]
            if self.p.satellite:
                tasks.append(asyncio.create_task(self.satellite_watch()))
            try:
                faults = asyncio.create_task(self.fault_loop(session))
                await asyncio.sleep(self.p.duration)
                await faults
                self._stop.set()
                await asyncio.gather(*tasks)
                await asyncio.gather(*self._inflight)     # submits in flight end
                t_heal = time.monotonic()
                self.say("healing: every fault ended, every node running")
                await self.heal(session)
                await self.check(session, t_heal)
            finally:
                self._stop.set()
                for t in tasks:
                    t.cancel()
        self.report.figures["network"] = (
            f"namespaces ({self.net.subnet}, one veth per node)" if self.net is not None
            else "loopback")
        return self.report

    async def close(self) -> None:
        for p in self.proxies.values():
            await p.close()
        for node in self.fed.nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGCONT)
        self.fed.stop()
        for node in self.fed.nodes:
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
        if self.tmpfs is not None:
            subprocess.run(["umount", "-l", str(self.tmpfs)], capture_output=True)


async def _run(profile: Profile, root: Path, log: Callable[[str], None],
               net: Netns | None) -> Report:
    chaos = Chaos(profile, root, log, net)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends the run as Ctrl-C does: through the finally blocks that stop the
    # nodes, close the proxies and remove the namespaces.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await chaos.main()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await chaos.close()


def choose_network(names: list[str], mode: str, log: Callable[[str], None]) -> Netns | None:
    """The namespaces for ``names`` (made), or None for loopback.

    ``mode`` is ``on`` (namespaces or an error), ``off`` (loopback) or ``auto``
    (namespaces when the machine allows them, else loopback and one line saying why).

    Raises:
        RuntimeError: ``on`` and namespaces cannot be made here.
    """
    if mode == "off":
        return None
    reason = unavailable_reason()
    net: Netns | None = None
    if reason is None:
        gone = cleanup_leftovers()
        if gone:
            log(f"removed what earlier runs left: {', '.join(gone)}")
        net = Netns(names)
        try:
            net.create()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            reason, net = f"could not make the namespaces ({exc})", None
    if net is None:
        if mode == "on":
            raise RuntimeError(f"--netns on: {reason}")
        log(f"network namespaces not used, nodes on 127.0.0.1: {reason}")
    return net


def run_chaos(profile: Profile, root: Path, log: Callable[[str], None] = print,
              netns: str = "auto") -> Report:
    """Run one chaos run in ``root`` (its data dirs and logs stay there); ``netns`` is
    ``auto``, ``on`` or ``off`` (:func:`choose_network`). The namespaces are removed at
    the end, whatever ends the run (an error, Ctrl-C, SIGTERM)."""
    root.mkdir(parents=True, exist_ok=True)
    net = choose_network([n for n, _j in node_specs(profile)], netns, log)
    try:
        return asyncio.run(_run(profile, root, log, net))
    finally:
        if net is not None:
            net.destroy()
