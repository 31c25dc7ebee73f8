"""The chaos report's pure parts: faults listed by start time, a failed vector check
naming the origins whose heads differ, PASS only when every invariant holds."""

from __future__ import annotations

from chaos.run import Report, _vector_diff


def test_report_lists_faults_by_start_time_and_fails_on_one_failed_invariant() -> None:
    rep = Report("test")
    rep.events += ["t= 15.0s clock_skew: AB", "t=  3.0s reset: every link",
                   "t=  9.0s kill: QC"]
    rep.check("no node wedged", True, "every node")
    assert rep.ok
    text = rep.text()
    assert text.index("t=  3.0s") < text.index("t=  9.0s") < text.index("t= 15.0s")
    assert text.endswith("result: PASS")
    rep.check("healed within the deadline", False, "not within 30 s")
    assert not rep.ok
    assert "[FAIL] healed within the deadline: not within 30 s" in rep.text()
    assert rep.text().endswith("result: FAIL")


def test_report_vector_diff_names_origins_behind_and_forks() -> None:
    a, b = "AA" * 32, "BB" * 32
    behind = {"QC": {a: (3, "x"), b: (1, "y")}, "ON": {a: (2, "w"), b: (1, "y")}}
    assert _vector_diff(behind) == "origin AAAAAAAA: ON 2, QC 3"
    missing = {"QC": {a: (3, "x")}, "ON": {}}
    assert _vector_diff(missing) == "origin AAAAAAAA: ON 0, QC 3"
    fork = {"QC": {a: (3, "x")}, "ON": {a: (3, "z")}}
    assert _vector_diff(fork) == "origin AAAAAAAA: ON 3, QC 3 (same seq, different hashes)"
