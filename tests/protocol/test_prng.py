from __future__ import annotations

import pytest

from protocol.prng import Prng


def test_prng_replays_from_its_seed() -> None:
    a, b = Prng(b"seed"), Prng(b"seed")
    assert [a.below(1000) for _ in range(50)] == [b.below(1000) for _ in range(50)]
    assert Prng(b"seed").randbytes(64) != Prng(b"other").randbytes(64)


def test_prng_stays_in_range_and_covers_it() -> None:
    rng = Prng(b"range")
    draws = [rng.below(7) for _ in range(2000)]
    assert set(draws) == set(range(7))
    floats = [rng.uniform(0.5, 1.5) for _ in range(2000)]
    assert all(0.5 <= x < 1.5 for x in floats)
    assert 0.9 < sum(floats) / len(floats) < 1.1


def test_prng_shuffle_sample_choice() -> None:
    rng = Prng(b"shuffle")
    items = list(range(20))
    rng.shuffle(items)
    assert sorted(items) == list(range(20)) and items != list(range(20))
    assert len(set(rng.sample(range(10), 4))) == 4
    assert rng.sample(range(3), 10) != [] and len(rng.sample(range(3), 10)) == 3
    assert rng.choice(["only"]) == "only"
    with pytest.raises(ValueError):
        rng.below(0)


def test_prng_randbytes_streams_across_calls() -> None:
    assert Prng(b"s").randbytes(100) == Prng(b"s").randbytes(30) + Prng(b"s").randbytes(100)[30:]
