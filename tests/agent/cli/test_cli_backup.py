"""``entraide backup`` and ``entraide restore``: a backup taken while the node writes is
consistent and restores into a new data dir whole; a damaged, tampered or foreign archive
and an occupied data dir are refused with one line and change nothing."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config.datadir import DataDir
from agent.config.settings import load_node_config
from agent.node.node import Node
from agent.storage.backup import RESTORED_MARKER, read_manifest
from agent.storage.schema import SCHEMA_VERSION, lock_ledger
from protocol.entries import TLP
from protocol.payloads import Observation

NO_API = "http://127.0.0.1:1"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("entraide: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def observations(first: int, count: int) -> list[Observation]:
    return [Observation(type="ipv4-addr", value=f"198.51.100.{first + i}") for i in range(count)]


def entries(capsys: pytest.CaptureFixture[str], root: Path) -> int:
    status, out, err = run(capsys, "ledger", "verify", "--data-dir", str(root), "--json",
                           "--api", NO_API)
    assert status == 0, err
    report: dict[str, Any] = json.loads(out)
    assert report["ok"]
    return int(report["entries"])


@pytest.fixture
def qc(tmp_path: Path, capsys: pytest.CaptureFixture[str],
       monkeypatch: pytest.MonkeyPatch) -> Path:
    """QC with a token and three own entries; its node is stopped."""
    monkeypatch.delenv("ENTRAIDE_HOME", raising=False)
    root = tmp_path / "qc"
    assert run(capsys, "init", "--data-dir", str(root), "--name", "QC")[0] == 0
    assert run(capsys, "token", "create", "--data-dir", str(root), "--scope", "read")[0] == 0

    async def go() -> None:
        async with Node.open(root) as node:
            await node.submit_observations(observations(1, 3), TLP.GREEN)

    asyncio.run(go())
    return root


def test_backup_while_the_node_writes_restores_a_consistent_node(
    qc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "qc.backup"

    async def write_during_backup() -> int:
        async with Node.open(qc) as node:  # the node runs: it holds the ledger's lock
            backup = asyncio.create_task(asyncio.to_thread(
                main, ["backup", str(archive), "--data-dir", str(qc), "--json"]))
            for i in range(10):
                await node.submit_observations(observations(10 + i, 1), TLP.GREEN)
            return await backup

    assert asyncio.run(write_during_backup()) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["node"]["name"] == "QC" and report["schema_version"] == SCHEMA_VERSION
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    names = {m["name"] for m in report["members"]}
    assert {"entraide.toml", "peers.toml", "tokens.toml", "node.key", "node.pub",
            "ledger.sqlite3"} <= names

    restored = tmp_path / "restored"
    status, out, err = run(capsys, "restore", str(archive), "--data-dir", str(restored))
    assert status == 0, err
    assert "Restored node QC" in out
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    for name in ("entraide.toml", "peers.toml", "tokens.toml", "node.key", "node.pub"):
        assert (restored / name).read_bytes() == (qc / name).read_bytes()
    assert stat.S_IMODE((restored / "node.key").stat().st_mode) == 0o600
    assert (restored / RESTORED_MARKER).exists()
    count = entries(capsys, restored)
    assert 3 <= count <= 13  # a snapshot: whatever was committed when the copy began


def test_restore_refuses_an_occupied_data_dir_and_a_running_node(
    qc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "qc.backup"
    assert run(capsys, "backup", str(archive), "--data-dir", str(qc))[0] == 0
    before = sorted(p.name for p in qc.iterdir())
    status, _, err = run(capsys, "restore", str(archive), "--data-dir", str(qc))
    assert status == 1
    assert_one_line_error(err, "holds a node", "--force")
    path = load_node_config(DataDir(qc)).ledger_path(DataDir(qc))
    fd = lock_ledger(path)  # as a running node holds it
    try:
        status, _, err = run(capsys, "restore", str(archive), "--data-dir", str(qc), "--force")
        assert status == 1
        assert_one_line_error(err, "in use", "needs the node stopped")
    finally:
        os.close(fd)
    assert sorted(p.name for p in qc.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if "restore" in p.name]  # no staging left
    status, out, err = run(capsys, "restore", str(archive), "--data-dir", str(qc), "--force")
    assert status == 0, err
    assert "Moved the previous data dir" in out
    assert entries(capsys, qc) == 3
    assert [p for p in tmp_path.iterdir() if p.name.startswith("qc.before-restore-")]


def _tampered(archive: Path, target: Path, member: str, change: Any) -> None:
    """Copy ``archive`` to ``target`` with ``member``'s bytes passed through ``change``."""
    with tarfile.open(archive) as src, tarfile.open(target, "w") as dst:
        for info in src:
            f = src.extractfile(info)
            assert f is not None
            data = f.read()
            if info.name == member:
                data = change(data)
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def test_restore_refuses_damaged_and_tampered_archives_and_changes_nothing(
    qc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "qc.backup"
    assert run(capsys, "backup", str(archive), "--data-dir", str(qc))[0] == 0
    manifest = read_manifest(archive)
    assert manifest.node.name == "QC"
    target = tmp_path / "target"

    def flip(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    def rename_node(data: bytes) -> bytes:
        return data.replace(b'"QC"', b'"ON"')

    truncated = tmp_path / "truncated"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a tar file at all" * 100)
    cases: list[tuple[Path, str]] = [(truncated, "truncated"),
                                     (garbage, "not an Entraide backup")]
    for member, change, fragment in (("ledger.sqlite3", flip, "SHA-256"),
                                     ("node.key", flip, "SHA-256"),
                                     ("manifest.json", rename_node, "does not match")):
        bad = tmp_path / f"bad-{member}"
        _tampered(archive, bad, member, change)
        cases.append((bad, fragment))
    for bad, fragment in cases:
        status, out, err = run(capsys, "restore", str(bad), "--data-dir", str(target))
        assert status == 1, bad
        assert out == ""
        assert_one_line_error(err, fragment, "nothing restored")
        assert not target.exists()
        assert not [p for p in tmp_path.iterdir() if "restore" in p.name]


def test_backup_refuses_a_data_dir_without_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "x.backup"
    status, _, err = run(capsys, "backup", str(archive), "--data-dir", str(tmp_path / "none"))
    assert status == 1
    assert_one_line_error(err, "no Entraide node")
    assert not archive.exists()
