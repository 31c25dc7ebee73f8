"""``entraide ledger export`` and ``ledger import``: backup from one data dir, restore
into another, on stopped nodes; a tampered export changes nothing; a running node's
ledger is refused with one line."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.config.datadir import DataDir
from agent.config.settings import load_node_config
from agent.node.node import Node
from agent.storage.schema import lock_ledger
from protocol.entries import TLP
from protocol.payloads import Observation

NO_API = "http://127.0.0.1:1"  # nothing answers: `ledger verify` works offline


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    return json.loads(out)


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("entraide: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def submit(root: Path, first: int, count: int) -> None:
    async def go() -> None:
        async with Node.open(root) as node:
            await node.submit_observations(
                [Observation(type="ipv4-addr", value=f"198.51.100.{first + i}")
                 for i in range(count)], TLP.GREEN)

    asyncio.run(go())


def verify(capsys: pytest.CaptureFixture[str], root: Path) -> Any:
    return run_json(capsys, "ledger", "verify", "--data-dir", str(root), "--json",
                    "--api", NO_API)


@pytest.fixture
def nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """QC with three own entries, and ON, which trusts QC and has never run."""
    monkeypatch.delenv("ENTRAIDE_HOME", raising=False)
    monkeypatch.delenv("ENTRAIDE_PASSPHRASE", raising=False)
    qc, on = tmp_path / "qc", tmp_path / "on"
    assert run(capsys, "init", "--data-dir", str(qc), "--name", "QC")[0] == 0
    assert run(capsys, "init", "--data-dir", str(on), "--name", "ON")[0] == 0
    card = run_json(capsys, "id", "--data-dir", str(qc), "--json")["card"]
    assert run(capsys, "peers", "add", "--data-dir", str(on), "--card", card)[0] == 0
    submit(qc, 1, 3)
    return qc, on


def test_ledger_export_then_import_into_another_node(
    nodes: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qc, on = nodes
    export = tmp_path / "qc.export"
    counts = run_json(capsys, "ledger", "export", str(export), "--data-dir", str(qc), "--json")
    assert counts == {"file": str(export), "entries": 3, "fork_proofs": 0}
    result = run_json(capsys, "ledger", "import", str(export), "--data-dir", str(on), "--json")
    assert (result["records"], result["stored"], result["invalid"]) == (3, 3, 0)
    assert result["complete"]
    report = verify(capsys, on)
    assert report["ok"] and report["entries"] == 3
    # Again: everything is already there.
    status, out, _ = run(capsys, "ledger", "import", str(export), "--data-dir", str(on))
    assert status == 0 and "0 entries stored, 3 already here" in out


def test_ledger_import_refuses_a_tampered_export_and_changes_nothing(
    nodes: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qc, on = nodes
    first = tmp_path / "first.export"
    assert run(capsys, "ledger", "export", str(first), "--data-dir", str(qc))[0] == 0
    assert run(capsys, "ledger", "import", str(first), "--data-dir", str(on))[0] == 0
    submit(qc, 10, 2)
    tampered = tmp_path / "tampered.export"
    assert run(capsys, "ledger", "export", str(tampered), "--data-dir", str(qc))[0] == 0
    data = bytearray(tampered.read_bytes())
    data[-200] ^= 0x01  # inside the last entry, before the trailer
    tampered.write_bytes(bytes(data))
    status, out, err = run(capsys, "ledger", "import", str(tampered), "--data-dir", str(on))
    assert status == 1 and out == ""
    assert_one_line_error(err, "do not verify", "nothing imported")
    assert verify(capsys, on)["entries"] == 3
    truncated = tmp_path / "truncated.export"
    truncated.write_bytes(tampered.read_bytes()[:100])
    status, _, err = run(capsys, "ledger", "import", str(truncated), "--data-dir", str(on))
    assert status == 1
    assert_one_line_error(err, "nothing imported")
    assert verify(capsys, on)["entries"] == 3


def test_ledger_export_and_import_refuse_a_ledger_in_use(
    nodes: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qc, _on = nodes
    path = load_node_config(DataDir(qc)).ledger_path(DataDir(qc))
    export = tmp_path / "qc.export"
    fd = lock_ledger(path)  # as a running node holds it
    try:
        status, _, err = run(capsys, "ledger", "export", str(export), "--data-dir", str(qc))
        assert status == 1
        assert_one_line_error(err, "in use", "needs the node stopped")
        assert not export.exists()
    finally:
        os.close(fd)
    assert run(capsys, "ledger", "export", str(export), "--data-dir", str(qc))[0] == 0
    fd = lock_ledger(path)
    try:
        status, _, err = run(capsys, "ledger", "import", str(export), "--data-dir", str(qc))
        assert status == 1
        assert_one_line_error(err, "in use", "needs the node stopped")
    finally:
        os.close(fd)


def test_ledger_export_without_a_ledger_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENTRAIDE_HOME", raising=False)
    root = tmp_path / "nb"
    assert run(capsys, "init", "--data-dir", str(root), "--name", "NB")[0] == 0
    status, _, err = run(capsys, "ledger", "export", str(tmp_path / "x"), "--data-dir", str(root))
    assert status == 1
    assert_one_line_error(err, "no ledger yet")
