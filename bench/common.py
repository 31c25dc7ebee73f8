"""What every scenario shares: figures and targets, timing, percentiles, the baselines
(raw PyNaCl sign/verify, SQLite batched inserts), the machine description, the table
and the JSON result file.

A scenario is a function ``run(ctx: Context) -> Result``. It measures its own
baseline in the same run, so its figures can be read as ratios that survive a noisy
machine; the absolute numbers are printed too.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.signing

from agent.cli.localfed import process_cpu_seconds as cpu_seconds
from agent.workers.gcsettings import THRESHOLDS

__all__ = [
    "REPO",
    "Context",
    "Figure",
    "Result",
    "cpu_seconds",
    "machine_info",
    "percentile",
    "private_mb",
    "rss_peak_mb",
    "settled_gc",
    "sign_rate",
    "sqlite_insert_rate",
    "table",
    "verify_rate",
    "write_results",
]

REPO = Path(__file__).resolve().parent.parent
SIGNED_BYTES = 256
"""Message size for the raw sign/verify baselines: about what an entry signs."""


# --- figures and results ------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure, with its target when the issue sets one.

    ``op`` is ``">="`` or ``"<="``; ``target`` None means informational only.
    """

    key: str
    label: str
    value: float
    unit: str = ""
    op: str | None = None
    target: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool | None:
        if self.op is None or self.target is None or math.isnan(self.value):
            return None
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def as_json(self) -> dict[str, Any]:
        doc = {**asdict(self), "ok": self.ok}
        if math.isnan(self.value):
            doc["value"] = None  # strict JSON has no NaN
        return doc


@dataclass
class Result:
    """What one scenario produced."""

    scenario: str
    figures: list[Figure] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def add(self, key: str, label: str, value: float, unit: str = "", *,
            op: str | None = None, target: float | None = None, note: str = "") -> Figure:
        fig = Figure(key, label, float(value), unit, op, target, note)
        self.figures.append(fig)
        return fig

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)

    def as_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "params": self.params, "wall_s": self.wall_s,
                "notes": self.notes, "figures": [f.as_json() for f in self.figures]}


@dataclass
class Context:
    """Run-wide settings handed to each scenario."""

    quick: bool
    workdir: Path
    log: Callable[[str], None]

    def tempdir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))


def stderr_log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the load generators' heap ------------------------------------------------------


@contextlib.contextmanager
def settled_gc() -> Iterator[None]:
    """The load generator's heap settled as a node's is (agent/workers/gcsettings.py)
    for the block, then restored: what lives now is frozen and collections are spaced
    out, so that no full collection over the bench's own data pauses its clients in
    the middle of a timed window (that pause would be read as the node's latency)."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


# --- statistics ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --- baselines ----------------------------------------------------------------------


def _timed_rate(step: Callable[[], None], seconds: float, chunk: int = 200) -> float:
    """Operations per second of ``step`` run in chunks for about ``seconds``."""
    done = 0
    start = time.perf_counter()
    while True:
        for _ in range(chunk):
            step()
        done += chunk
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def sign_rate(seconds: float = 1.0) -> float:
    """Raw Ed25519 signatures per second on one core (PyNaCl, ``SIGNED_BYTES`` each)."""
    key = nacl.signing.SigningKey(b"\x07" * 32)
    message = b"m" * SIGNED_BYTES
    return _timed_rate(lambda: key.sign(message), seconds)


def verify_rate(seconds: float = 1.0) -> float:
    """Raw Ed25519 verifications per second on one core (PyNaCl ``VerifyKey.verify``)."""
    key = nacl.signing.SigningKey(b"\x07" * 32)
    message = b"m" * SIGNED_BYTES
    signed = key.sign(message)
    verify_key = key.verify_key
    return _timed_rate(lambda: verify_key.verify(signed.message, signed.signature), seconds)


def sqlite_insert_rate(rows: int = 200_000, batch: int = 1000, value_bytes: int = 300,
                       directory: Path | None = None) -> float:
    """Rows per second into a WAL SQLite file (synchronous=NORMAL), ``batch`` rows per
    transaction: a 32-byte primary key and a ``value_bytes`` blob, about an entry."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        conn = sqlite3.connect(Path(tmp) / "baseline.sqlite3", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
            value = b"v" * value_bytes
            keys = [i.to_bytes(8, "big") * 4 for i in range(rows)]
            start = time.perf_counter()
            for at in range(0, rows, batch):
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO t VALUES (?, ?)",
                                 ((k, value) for k in keys[at:at + batch]))
                conn.execute("COMMIT")
            return rows / (time.perf_counter() - start)
        finally:
            conn.close()


# --- processes ----------------------------------------------------------------------


def rss_peak_mb(pid: int) -> tuple[float, float]:
    """(peak RSS, current RSS) of a live process in MiB, from /proc (VmHWM, VmRSS)."""
    peak = current = float("nan")
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return peak, current


def private_mb(pid: int) -> float:
    """A live process's private memory in MiB (RssAnon: its heap, not the file pages
    it maps, which the page cache shares with every process reading the file)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- the machine --------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and library versions, the commit."""
    mem_mb = None
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            mem_mb = int(info.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_mb": mem_mb,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "libraries": {d: _version(d) for d in ("pynacl", "aiohttp", "aiosqlite", "msgpack",
                                               "pydantic", "pydantic-core")},
        "commit": _git_commit(),
    }


# --- output -------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _target(fig: Figure) -> str:
    if fig.op is None or fig.target is None:
        return ""
    return f"{fig.op} {_fmt(fig.target)}"


def table(results: Iterable[Result]) -> str:
    """The results as a Markdown table: scenario, figure, value, unit, target, status."""
    rows = [("scenario", "figure", "value", "unit", "target", "")]
    for result in results:
        for fig in result.figures:
            status = {True: "ok", False: "MISS", None: ""}[fig.ok]
            rows.append((result.scenario, fig.label, _fmt(fig.value), fig.unit, _target(fig),
                         status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in
                 enumerate(zip(row, widths, strict=True))]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_results(results: Sequence[Result], out_dir: Path, *, quick: bool,
                  started: datetime, machine: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``<out_dir>/<UTC timestamp>.json`` (or rewrite ``path``); return its path."""
    if path is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = started.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = out_dir / f"{stamp}{'-quick' if quick else ''}.json"
        n = 1
        while path.exists():
            n += 1
            path = out_dir / f"{stamp}{'-quick' if quick else ''}-{n}.json"
    doc = {
        "started": started.astimezone(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "scenarios": [r.as_json() for r in results],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
