"""A short chaos run in the suite (issue 17): four real ``entraide run`` processes, each in
its own network namespace when the machine allows it (else on loopback), every link
through the fault proxy, a few fault kinds, steady submits; the invariants must hold
after healing. Deadlines are generous (a loaded 2-core machine); nothing is timed."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.netns import unavailable_reason
from chaos.run import Profile, run_chaos

pytestmark = pytest.mark.slow


def test_short_chaos_run_keeps_its_invariants(tmp_path: Path) -> None:
    profile = Profile("test", nodes=4, duration=25.0, fault_every=3.5, fault_length=3.0,
                      faults=("reset", "kill", "half_open", "sigstop", "blackhole",
                              "latency"),
                      submit_rate=3.0, heal_deadline=150.0, rss_limit_mb=600.0, seed=17)
    report = run_chaos(profile, tmp_path, log=lambda _line: None)
    print(report.text())
    assert len(report.events) >= 5
    assert report.figures["acknowledged submits"] > 20
    assert report.ok, report.text()
    names = [name for name, _ok, _detail in report.checks]
    for invariant in ("no node wedged", "no acknowledged entry lost",
                      "identical version vectors", "ledger verify ok",
                      "healed within the deadline", "memory bounded",
                      "every restart came back"):
        assert invariant in names
    in_netns = unavailable_reason() is None
    assert report.figures["network"].startswith("namespaces" if in_netns else "loopback")
