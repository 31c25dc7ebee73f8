"""``entraide demo`` runs a five-node federation end to end and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    # The AMBER entry (ON → FED, QC) is sealed at the nodes outside its audience.
    amber = next(line for line in out.splitlines() if line.startswith("ON: AMBER"))
    assert amber.count("sealed") == 2 and amber.count("read") == 2
    assert "BROKEN" not in out and "FAILED" not in out
    assert out.count(" ok") >= 5
    # Every other row is readable everywhere.
    rows = [line for line in out.splitlines() if line.split(":")[0] in {"FED", "QC", "AB", "BC"}
            and ("GREEN" in line or "CLEAR" in line)]
    assert len(rows) == 4 and all(row.count("read ") == 4 for row in rows)
