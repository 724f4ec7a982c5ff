"""The slow loop from Python: a decaying load history and masters swapped between domains."""

from __future__ import annotations

import numpy as np
import pytest
import ultraep


def test_rehome_swaps_masters_across_domains_until_they_are_even():
    history = ultraep.LoadHistory(4, shift=3)
    for _ in range(200):
        history.record(np.array([[100, 90, 10, 20]], dtype=np.uint32))
    assert history.expected.tolist() == [800, 720, 80, 160]
    homes, moves, before, after = ultraep.rehome([0, 1, 2, 3], [0, 0, 1, 1], history.expected)
    # The hottest expert (0) and the other domain's warmer one (3) trade ranks: each domain now
    # expects 880.
    assert homes.tolist() == [3, 1, 2, 0]
    assert moves.tolist() == [[0, 0, 3], [3, 3, 0]]
    assert before == pytest.approx(1520 / 880)
    assert after == pytest.approx(1.0)


def test_every_rank_computes_the_same_homes():
    rng = np.random.default_rng(5)
    loads = [rng.integers(0, 1000, size=(8, 32), dtype=np.uint32) for _ in range(10)]
    results = []
    for _ in range(2):
        history = ultraep.LoadHistory(32)
        for step in loads:
            history.record(step)
        homes = [expert // 4 for expert in range(32)]
        results.append(ultraep.rehome(homes, [0] * 4 + [1] * 4, history.expected, max_moves=4))
    assert results[0][0].tolist() == results[1][0].tolist()
    assert len(results[0][1]) <= 4


def test_bad_input_raises():
    with pytest.raises(ValueError):
        ultraep.LoadHistory(0)
    with pytest.raises(ValueError):
        ultraep.LoadHistory(4, shift=40)
    history = ultraep.LoadHistory(4)
    with pytest.raises(ValueError):
        history.record(np.zeros((2, 3), dtype=np.uint32))
    with pytest.raises(ValueError):
        ultraep.rehome([0, 1], [0, 1], np.zeros(3, dtype=np.uint64))
