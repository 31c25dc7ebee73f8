"""deploy/: the systemd unit passes ``systemd-analyze verify`` and holds its hardening;
the container file is slim, non-root, keeps the data dir in a volume, checks health and
bakes in no secret; the Prometheus rules and the Grafana dashboard name only metrics the
node exports (and ``promtool check rules`` passes where it is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config.settings import ApiConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "entraide.service"
CONTAINER = DEPLOY / "Containerfile"
RULES = DEPLOY / "prometheus" / "entraide-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "entraide-dashboard.json"

EXTERNAL = {"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
"""Series from Prometheus itself and node_exporter, not from the node."""
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
_PROMQL_FUNCTIONS = {"sum", "rate", "increase", "deriv", "histogram_quantile", "and", "max"}


def _node_metric_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "agent").rglob("*.py"):
        names.update(re.findall(r"[\"'](entraide_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def _metrics_in(expr: str) -> set[str]:
    """The series names an expression reads (strings, labels, ranges, groupings and
    functions dropped)."""
    bare = re.sub(r"\"[^\"]*\"", "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(by|on|without|ignoring) \([^)]*\)", "", bare)
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", bare)) - _PROMQL_FUNCTIONS
    return {_HISTOGRAM_SUFFIX.sub("", w) for w in words}


def _check_known(exprs: list[str]) -> set[str]:
    known = _node_metric_names()
    used = set().union(*(_metrics_in(e) for e in exprs))
    unknown = {m for m in used if m not in known and m not in EXTERNAL}
    assert not unknown, f"metrics the node does not export: {sorted(unknown)}"
    return used


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_deploy_unit_is_hardened() -> None:
    s = _unit_settings()
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes",
                       "PrivateTmp": "yes", "ProtectHome": "yes", "CapabilityBoundingSet": "",
                       "LimitNOFILE": "65536", "Restart": "on-failure",
                       "MemoryDenyWriteExecute": "yes", "User": "entraide",
                       "ReadWritePaths": "/var/lib/entraide",
                       "Environment": "ENTRAIDE_HOME=/var/lib/entraide"}.items():
        assert value in s.get(key, []), (key, s.get(key))
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert any(v.startswith("@system-service") for v in s["SystemCallFilter"])
    assert s["EnvironmentFile"][0].endswith("passphrase.env")
    assert "PASSPHRASE=" not in "".join(s.get("Environment", []))  # never inline


def test_deploy_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # verify checks that ExecStart exists: point it at this environment's entraide.
    entraide = Path(sys.executable).with_name("entraide")
    if not entraide.exists():
        pytest.skip(f"{entraide} is not installed (pip install -e .)")
    unit = tmp_path / "entraide.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/entraide", str(entraide)))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    report = [line for line in (result.stdout + result.stderr).splitlines()
              if "entraide.service" in line]
    assert result.returncode == 0 and not report, result.stdout + result.stderr


def _container_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINER.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def test_deploy_container_is_slim_non_root_with_volume_health_and_no_secret() -> None:
    rows = _container_instructions()
    known = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "VOLUME", "EXPOSE",
             "HEALTHCHECK", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    assert all(word in known for word, _ in rows), rows
    last_from = max(i for i, (word, _) in enumerate(rows) if word == "FROM")
    final = rows[last_from:]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", final[0][1])
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "ENTRAIDE_HOME=/var/lib/entraide" in env
    volumes = [json.loads(rest) for word, rest in final if word == "VOLUME"]
    assert ["/var/lib/entraide"] in volumes
    health = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert len(health) == 1
    assert f"http://127.0.0.1:{ApiConfig().port}/api/v1/health" in health[0]
    assert json.loads(next(rest for word, rest in final if word == "ENTRYPOINT")) == ["entraide"]
    for word, rest in rows:
        assert not re.search(r"PASSPHRASE\s*=|TOKEN\s*=|node\.key|tokens\.toml", rest,
                             re.IGNORECASE) or word == "CMD", (word, rest)
        if word == "COPY":
            assert not re.search(r"\.venv|entraide-data|\s\.\s", f" {rest} "), rest


def test_deploy_prometheus_rules_use_real_metrics(tmp_path: Path) -> None:
    doc = yaml.safe_load(RULES.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert all({"alert", "expr", "labels", "annotations"} <= rule.keys() for rule in rules)
    used = _check_known([rule["expr"] for rule in rules])
    for needed in ("up", "entraide_peer_connected", "entraide_replication_backlog_entries",
                   "entraide_ledger_forked_origins", "entraide_verify_workers_up",
                   "entraide_peer_errors_total", "node_filesystem_avail_bytes",
                   # the listener limits (docs/security.md) and a full disk (507)
                   "entraide_listener_refused_total", "entraide_peer_handshake_failures_total",
                   "entraide_peer_log_lines_suppressed_total", "entraide_process_open_fds",
                   "entraide_process_max_fds", "entraide_listener_accept_errors_total",
                   "entraide_http_requests_total"):
        assert needed in used, needed
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed: metric names checked, syntax not")
    result = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_grafana_dashboard_uses_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    used = _check_known(exprs)
    assert "entraide_peer_connected" in used and "entraide_ledger_entries" in used
    assert {"entraide_listener_refused_total", "entraide_process_open_fds"} <= used


def test_deploy_metric_check_catches_an_unknown_name() -> None:
    with pytest.raises(AssertionError, match="entraide_no_such_metric"):
        _check_known(["rate(entraide_no_such_metric[5m]) > entraide_ledger_entries"])
