"""``entraide doctor``: check a node before a 3 a.m. incident does.

One line per check, ``ok``, ``warn``, ``fail`` or ``skip`` (with the reason), and exit 1
when any check fails (``--json``: ``{"ok", "checks": [{"name", "status", "detail"}]}``).

The checks (docs/operations.md, "Doctor"):

- ``data_dir``: the data dir is 0700 (no access for group or others).
- ``key_file``: ``node.key`` is 0600 (the node refuses a key others can read).
- ``schema``: the ledger's schema version against this software's.
- ``disk``: free space where the data dir lives.
- ``fd_limit``: the open-file limit of the running node (read from ``/proc`` through the
  ledger lock's holder) or, when it does not run, of this shell, against what a node
  needs.
- ``restored``: a node restored from a backup that has not caught up its own chain.
- ``node``: the running node's API answers ``/api/v1/health``.
- ``peers``: from the running node's status: which peers are connected, last seen when.
- ``clock_skew``: each peer's clock (its HTTP ``Date`` header, against ours at the middle
  of the round trip); entries carry signed timestamps, so a skewed clock misorders them.
- ``forks``: forks recorded and not cleared (an origin quarantined until an admin acts).

Each check is a small function of what it looks at, so tests feed it both sides.
"""

from __future__ import annotations

import argparse
import calendar
import email.utils
import json
import os
import resource
import shutil
import sqlite3
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from agent.cli.client import api_base, call_api, cli_token
from agent.cli.lang import _, localize_error
from agent.config.datadir import DataDir
from agent.config.settings import load_node_config, load_trust_list
from agent.errors import ConfigError, NodeNotRunningError
from agent.storage.backup import RESTORED_MARKER
from agent.storage.schema import SCHEMA_VERSION, schema_version
from protocol.errors import EntraideError

__all__ = [
    "FD_NEEDED",
    "FD_WARN",
    "Check",
    "check_clock_skew",
    "check_data_dir",
    "check_disk",
    "check_fd_limit",
    "check_forks",
    "check_key_file",
    "check_peers",
    "check_schema",
    "doctor_command",
    "run_checks",
]

Status = Literal["ok", "warn", "fail", "skip"]

GIB = 1 << 30
DISK_FAIL_BYTES, DISK_WARN_BYTES = 1 * GIB, 5 * GIB
DISK_FAIL_FRACTION, DISK_WARN_FRACTION = 0.05, 0.10
FD_NEEDED = 4096
"""Below this the node fails under load: two readers of 1,024 connections, the API's
own clients, every peer's socket, the ledger's and the workers' files."""
FD_WARN = 16384
SKEW_WARN_S, SKEW_FAIL_S = 5.0, 60.0
PEER_SILENT_WARN_S = 300.0
_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str


# --- checks on files ---------------------------------------------------------------


def check_data_dir(mode: int) -> Check:
    """The data dir's permission bits: nothing for group or others."""
    perms = stat.S_IMODE(mode)
    if perms & 0o077:
        return Check("data_dir", "fail", _("mode {mode}: group or others can reach the "
                                           "node's files; run chmod 700 on the data dir")
                     .format(mode=f"{perms:04o}"))
    return Check("data_dir", "ok", f"mode {perms:04o}")


def check_key_file(mode: int | None) -> Check:
    """``node.key``'s permission bits: 0600 or stricter."""
    if mode is None:
        return Check("key_file", "fail", _("node.key is missing"))
    perms = stat.S_IMODE(mode)
    if perms & 0o077:
        return Check("key_file", "fail", _("node.key mode {mode}: readable beyond its owner "
                                           "(the node refuses it); run chmod 600 node.key")
                     .format(mode=f"{perms:04o}"))
    return Check("key_file", "ok", f"node.key mode {perms:04o}")


def check_schema(version: int | None, current: int = SCHEMA_VERSION) -> Check:
    """The ledger's schema version (None: no ledger yet)."""
    if version is None:
        return Check("schema", "warn", _("no ledger yet (the node has never run)"))
    if version > current:
        return Check("schema", "fail", _("ledger schema {version} is newer than this "
                                         "software's {current}: run the newer release")
                     .format(version=version, current=current))
    if version < current:
        return Check("schema", "warn", _("ledger schema {version}; the node migrates it to "
                                         "{current} when it starts")
                     .format(version=version, current=current))
    return Check("schema", "ok", _("ledger schema {version}").format(version=version))


def check_disk(free: int, total: int) -> Check:
    """Free bytes on the data dir's file system."""
    fraction = free / total if total else 0.0
    detail = _("{gib} GiB free ({percent})").format(gib=f"{free / GIB:.1f}",
                                                   percent=f"{fraction:.0%}")
    if free < DISK_FAIL_BYTES or fraction < DISK_FAIL_FRACTION:
        return Check("disk", "fail", detail + _(": the ledger stops writing when the disk "
                                                "fills"))
    if free < DISK_WARN_BYTES or fraction < DISK_WARN_FRACTION:
        return Check("disk", "warn", detail)
    return Check("disk", "ok", detail)


def check_fd_limit(soft: int, whose: str) -> Check:
    """The soft open-file limit (``whose``: the running node's, or this shell's)."""
    unlimited = soft == resource.RLIM_INFINITY or soft < 0
    if not unlimited and soft < FD_NEEDED:
        return Check("fd_limit", "fail", _("{whose} open-file limit {soft} < {needed} "
                                           "needed; set LimitNOFILE=65536 "
                                           "(deploy/entraide.service)")
                     .format(whose=whose, soft=soft, needed=FD_NEEDED))
    if not unlimited and soft < FD_WARN:
        return Check("fd_limit", "warn", _("{whose} open-file limit {soft}; {warn} or more "
                                           "recommended")
                     .format(whose=whose, soft=soft, warn=FD_WARN))
    return Check("fd_limit", "ok", _("{whose} open-file limit {soft}").format(
        whose=whose, soft=_("unlimited") if unlimited else soft))


# --- checks on the running node ----------------------------------------------------


def check_peers(peers: list[dict[str, Any]], now_ms: int) -> Check:
    """The status API's ``peers``: fail when none is connected, warn when some are not."""
    dialled = [p for p in peers if p.get("url")]
    if not peers:
        return Check("peers", "warn", _("the trust list is empty: this node shares with no "
                                        "one"))
    if not dialled:
        return Check("peers", "ok", _("{n} peers, none dialled (no URLs)").format(
            n=len(peers)))
    up = [p for p in peers if p.get("connected")]
    down = [p for p in dialled if not p.get("connected")]
    if not down:
        return Check("peers", "ok", _("{up} of {n} peers connected").format(
            up=len(up), n=len(dialled)))
    parts = [f"{p.get('name')} ({_seen(p.get('last_seen'), now_ms)})" for p in down[:10]]
    detail = _("{up} of {n} peers connected; down: {down}").format(
        up=len(up), n=len(dialled), down=", ".join(parts))
    return Check("peers", "fail" if not up else "warn", detail)


def _seen(last_seen: Any, now_ms: int) -> str:
    if not isinstance(last_seen, str):
        return _("never seen")
    try:
        when = calendar.timegm(time.strptime(last_seen[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return _("last seen {when}").format(when=last_seen[:40])
    return _("last seen {s} s ago").format(s=f"{max(0.0, now_ms / 1000 - when):.0f}")


def check_clock_skew(skews: dict[str, float | None]) -> Check:
    """Each peer's clock minus ours, in seconds (None: the peer did not answer)."""
    measured = {name: s for name, s in skews.items() if s is not None}
    if not measured:
        reason = _("no peer URL in the trust list") if not skews else _("no peer answered")
        return Check("clock_skew", "skip", reason)
    name, worst = max(measured.items(), key=lambda item: abs(item[1]))
    detail = _("largest skew {skew} s ({name}), {n} peers measured").format(
        skew=f"{worst:+.1f}", name=name, n=len(measured))
    if abs(worst) > SKEW_FAIL_S:
        return Check("clock_skew", "fail", detail + _(": fix the clock (NTP)"))
    if abs(worst) > SKEW_WARN_S:
        return Check("clock_skew", "warn", detail)
    return Check("clock_skew", "ok", detail)


def check_forks(forks: list[dict[str, Any]]) -> Check:
    """The status API's ``forks``: pending means not cleared."""
    pending = [f for f in forks if not f.get("cleared")]
    if pending:
        names = ", ".join(str(f.get("origin_name") or f.get("origin"))[:40] for f in pending[:10])
        return Check("forks", "warn", _("{n} forks pending ({names}): see 'entraide forks "
                                        "list'").format(n=len(pending), names=names))
    return Check("forks", "ok", _("no pending forks"))


# --- gathering ---------------------------------------------------------------------


def _ledger_version(path: Path) -> int | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    try:
        return schema_version(conn)
    finally:
        conn.close()


def _lock_holder(lock: Path) -> int | None:
    """The pid holding ``flock`` on ``lock`` (the running node), from /proc/locks."""
    try:
        inode = os.stat(lock).st_ino
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" \
                        and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None


def _fd_limit(ledger: Path) -> tuple[int, str]:
    pid = _lock_holder(Path(f"{ledger}.lock"))
    if pid is not None:
        try:
            with open(f"/proc/{pid}/limits") as f:
                for line in f:
                    if line.startswith("Max open files"):
                        value = line.split()[3]
                        return (-1 if value == "unlimited" else int(value)), \
                            _("the running node's (pid {pid})").format(pid=pid)
        except (OSError, ValueError, IndexError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0], _("this shell's (node not running)")


def _probe_skew(url: str) -> float | None:
    """Our clock against the peer's ``Date`` header, at the middle of the round trip."""
    request = urllib.request.Request(url, method="GET")
    started = time.time()
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_S) as response:
            date = response.headers.get("Date")
    except urllib.error.HTTPError as exc:  # a 404 still carries the peer's clock
        date = exc.headers.get("Date")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    ended = time.time()
    if not date:
        return None
    try:
        peer = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    return peer - (started + ended) / 2


def run_checks(data_dir: DataDir, api: str | None, token: str | None,
               probe: Callable[[str], float | None] = _probe_skew) -> list[Check]:
    """Every check, in order, for the node in ``data_dir``.

    Raises:
        ConfigError: no node in ``data_dir``, or its configuration does not load.
    """
    data_dir.require_node()
    config = load_node_config(data_dir)
    ledger = config.ledger_path(data_dir)
    key_mode = data_dir.key_path.stat().st_mode if data_dir.key_path.exists() else None
    checks = [check_data_dir(data_dir.root.stat().st_mode), check_key_file(key_mode)]
    try:
        checks.append(check_schema(_ledger_version(ledger)))
    except (sqlite3.Error, EntraideError) as exc:
        checks.append(Check("schema", "fail", _("the ledger does not open: {error}").format(
            error=localize_error(str(exc)))))
    usage = shutil.disk_usage(data_dir.root)
    checks.append(check_disk(usage.free, usage.total))
    checks.append(check_fd_limit(*_fd_limit(ledger)))
    if (data_dir.root / RESTORED_MARKER).exists():
        checks.append(Check("restored", "warn", _("restored from a backup: it must catch up "
                                                  "its own entries from its peers before it "
                                                  "signs again")))
    base = (api or api_base(data_dir)).rstrip("/")
    status: dict[str, Any] | None = None
    try:
        call_api(base, "", "GET", "/api/v1/health")
        checks.append(Check("node", "ok", _("the API answers at {base}").format(base=base)))
        status = call_api(base, cli_token(data_dir, token), "GET", "/api/v1/status")
    except NodeNotRunningError:
        checks.append(Check("node", "fail", _("no node answers at {base} (is 'entraide "
                                               "run' running?)").format(base=base)))
    except EntraideError as exc:
        checks.append(Check("node", "fail", f"{base}: {localize_error(str(exc))}"))
    if isinstance(status, dict):
        checks.append(check_peers(list(status.get("peers") or []), int(time.time() * 1000)))
        checks.append(check_forks(list(status.get("forks") or [])))
    else:
        reason = _("the node is not running") if status is None else _("no status")
        checks += [Check("peers", "skip", reason), Check("forks", "skip", reason)]
    try:
        trust = load_trust_list(data_dir)
        skews = {p.name: probe(p.url) for p in trust if p.url}
    except ConfigError as exc:
        checks.append(Check("clock_skew", "skip", f"peers.toml: {localize_error(str(exc))}"))
    else:
        checks.append(check_clock_skew(skews))
    return checks


def doctor_command(args: argparse.Namespace, data_dir: DataDir) -> int:
    """Print every check; exit 1 when one fails.

    Raises:
        ConfigError: no node in the data dir, or its configuration does not load.
    """
    checks = run_checks(data_dir, args.api, args.token)
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
    return 1 if failed else 0
