"""The key's passphrase is read once and is gone from the environment of the daemon and
of every process it starts (issue 17: it stayed in the daemon's and every worker's
environment, readable in /proc/PID/environ)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli.localfed import child_pids, free_ports

SECRET = "correct horse battery staple 7f3a"


def _cli(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "agent.cli", *args], env=env, check=True,
                   capture_output=True, text=True, timeout=60)


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_passphrase_env_is_gone_from_the_daemon_and_its_helpers(tmp_path: Path) -> None:
    env = {**os.environ, "NODE_PW": SECRET}
    api, peer = free_ports(2)
    data = str(tmp_path / "node")
    _cli("init", "--data-dir", data, "--name", "QC", "--passphrase-env", "NODE_PW",
         "--api-port", str(api), "--peer-port", str(peer), "--peer-host", "127.0.0.1",
         env=env)
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--data-dir", data,
         "--passphrase-env", "NODE_PW"],
        env={**env, "ENTRAIDE_PASSPHRASE": SECRET}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"running" not in (line := process.stderr.readline() if process.stderr else b""):
            assert line or process.poll() is None, "the node did not start"
            assert time.monotonic() < deadline, "the node did not start in time"
        # The verify workers start with the node; wait for them so they are checked too.
        while len(child_pids(process.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [process.pid, *child_pids(process.pid)]
        assert len(pids) >= 2, "no helper process to check"
        for pid in pids:
            environ = _environ(pid)
            assert SECRET.encode() not in environ, f"process {pid} still holds the passphrase"
            assert b"NODE_PW=" not in environ and b"ENTRAIDE_PASSPHRASE=" not in environ
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
