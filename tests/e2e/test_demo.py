"""``entraide demo`` runs a five-node federation end to end and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's output: it runs once for the module and must exit 0."""
    root = tmp_path_factory.mktemp("demo")
    result = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--dir", str(root)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_demo_runs_end_to_end(demo_out: str) -> None:
    out = demo_out
    # The AMBER entry (ON → FED, QC) is sealed at the nodes outside its audience.
    amber = next(line for line in out.splitlines() if line.startswith("ON: AMBER"))
    assert amber.count("sealed") == 2 and amber.count("read") == 2
    assert "BROKEN" not in out and "FAILED" not in out
    assert out.count(" ok") >= 5
    # Every other row is readable everywhere.
    rows = [line for line in out.splitlines() if line.split(":")[0] in {"FED", "QC", "AB", "BC"}
            and ("GREEN" in line or "CLEAR" in line)]
    assert len(rows) == 4 and all(row.count("read ") == 4 for row in rows)


def _row(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix))


def test_demo_aid_scene_is_read_by_its_audience_only(demo_out: str) -> None:
    out = demo_out
    assert "BC asks FED and QC (RED) for forensics and incident coordination" in out
    assert "QC offers forensics: « Deux analystes en criminalistique" in out
    assert "FED offers incident coordination" in out
    assert "BC accepts QC's offer: the request is in-progress" in out
    assert "it is in the Sigma export of FED, QC, ON, AB, BC" in out
    assert "BC closes the request (closed):" in out and "  fr: Dossiers rétablis" in out
    assert "ON and AB hold the request sealed and relay it" in out
    # Columns FED QC ON AB BC: the RED thread is read by FED, QC and BC, sealed at ON, AB.
    for prefix, read, sealed in [("BC: RED aid request", 2, 2), ("QC: offer forensics", 2, 2),
                                 ("FED: offer coordination", 2, 2),
                                 ("BC: accepts QC's offer", 2, 2),
                                 ("BC: closes with a summary", 2, 2),
                                 ("ON: GREEN sigma rule", 4, 0)]:
        row = _row(out, prefix)
        assert row.count("read ") == read and row.count("sealed ") == sealed, row
        assert row.count("author") == 1, row
    assert _row(out, "BC: RED aid request").split()[-1] == "author"
