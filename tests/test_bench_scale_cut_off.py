"""bench scale's churn run: which nodes the schedule alone cuts off from the overlay."""

from __future__ import annotations

from bench.scale import _cut_off


def _line(n: int) -> dict[int, set[int]]:
    return {i: {j for j in (i - 1, i + 1) if 0 <= j < n} for i in range(n)}


def test_a_node_whose_every_neighbour_is_away_at_once_is_cut_off() -> None:
    # 0-1-2-3-4-5-6: node 2's neighbours 1 and 3 away together from 1.5 to 2.0.
    away = {1: (1.0, 2.0), 3: (1.5, 3.0)}
    assert _cut_off(_line(7), away) == {0, 2}  # 0 too: the smaller part, with 1 away


def test_neighbours_away_one_after_the_other_cut_nothing_in_a_ring() -> None:
    ring = {i: {(i - 1) % 6, (i + 1) % 6} for i in range(6)}
    assert _cut_off(ring, {1: (1.0, 2.0), 3: (2.0, 3.0)}) == set()
