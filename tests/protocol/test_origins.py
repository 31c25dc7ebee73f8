from __future__ import annotations

import pytest

from protocol.origins import OriginLog, subtract_ranges, vector_digest


@pytest.mark.parametrize(("lo", "hi", "taken", "left"), [
    (1, 10, [], [(1, 10)]),
    (1, 10, [(1, 10)], []),
    (1, 10, [(3, 4), (7, 7)], [(1, 2), (5, 6), (8, 10)]),
    (1, 10, [(0, 2), (9, 20)], [(3, 8)]),
    (5, 10, [(6, 6), (1, 3), (6, 8)], [(5, 5), (9, 10)]),
    (5, 4, [], []),
])
def test_vector_subtract_ranges(lo: int, hi: int, taken: list[tuple[int, int]],
                                left: list[tuple[int, int]]) -> None:
    assert subtract_ranges(lo, hi, taken) == left


def test_vector_digest_depends_on_heads_and_forks() -> None:
    base = vector_digest([(b"a" * 8, 3, b"h" * 32)], [])
    assert len(base) == 16
    assert base == vector_digest([(b"a" * 8, 3, b"h" * 32)], [])
    assert base != vector_digest([(b"a" * 8, 4, b"h" * 32)], [])
    assert base != vector_digest([(b"a" * 8, 3, b"i" * 32)], [])
    assert base != vector_digest([(b"a" * 8, 3, b"h" * 32)], [b"f" * 8])


def test_vector_origin_log_steps_become_eligible_in_time() -> None:
    log = OriginLog(b"k" * 8)
    assert log.note_known(5, at=1.0, now=0.0, step_cap=4)
    assert not log.note_known(3, at=0.0, now=0.0, step_cap=4)  # nothing new
    log.note_known(9, at=2.0, now=0.0, step_cap=4)
    log.update_eligible(1.5)
    assert (log.known, log.eligible, log.next_step()) == (9, 5, 2.0)
    log.update_eligible(2.0)
    assert log.eligible == 9 and log.next_step() is None


def test_vector_origin_log_steps_are_capped() -> None:
    log = OriginLog(b"k" * 8)
    for seq in range(1, 100):
        log.note_known(seq, at=float(seq), now=0.0, step_cap=4)
    assert len(log.steps) == 4
    log.update_eligible(1000)
    assert log.eligible == 99


def test_vector_origin_log_remembers_a_bounded_window() -> None:
    log = OriginLog(b"k" * 8)
    for seq in range(1, 11):
        log.remember(seq, bytes([seq]) * 32, window=4)
    assert sorted(log.recent) == [7, 8, 9, 10]
