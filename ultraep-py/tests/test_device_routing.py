"""The torch layer's routing on tensors against the engine's own: on random router outputs (seeded
draws of skewed loads), every token-expert pair goes to the instance ``Engine.reroute`` gives it,
bit for bit, and leaves in destination order, as many to each rank as the sizes derived from the
plan say; every rank's receive sizes (from its split columns) match what the sources send."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ultraep
from ultraep.torch.dispatch import (
    build,
    counts_by_source,
    local_indices,
    reroute,
    send_order,
)

RANKS, PER_RANK, SLOTS = 4, 3, 2
EXPERTS = RANKS * PER_RANK
CASES = 40


def random_ids(rng: np.random.Generator, top_k: int) -> list[np.ndarray]:
    """Every rank's router ids: top-k distinct experts per token from one skewed popularity."""
    weights = rng.random(EXPERTS) ** rng.uniform(1, 6)
    weights /= weights.sum()
    result = []
    for _ in range(RANKS):
        tokens = int(rng.integers(0, 300))
        chosen = [rng.choice(EXPERTS, size=top_k, replace=False, p=weights) for _ in range(tokens)]
        flat = np.array(chosen, dtype=np.uint32).reshape(-1)
        result.append(flat)
    return result


@pytest.mark.parametrize("case", range(CASES))
def test_device_reroute_is_the_engines_reroute(case: int):
    rng = np.random.default_rng(case)
    top_k = int(rng.integers(1, 4))
    homes = [expert // PER_RANK for expert in range(EXPERTS)]
    min_replica_tokens = int(rng.integers(1, 8))
    group = [
        ultraep.Engine(
            rank,
            homes,
            layers=1,
            top_k=top_k,
            hidden=8,
            expert_width=8,
            dtype="f32",
            slots_per_rank=SLOTS,
            domains=[0] * RANKS,
            min_replica_tokens=min_replica_tokens,
        )
        for rank in range(RANKS)
    ]
    ids = random_ids(rng, top_k)
    rows = np.concatenate([engine.gather_row(ids[engine.rank]) for engine in group])
    for engine in group:
        engine.step(0, 0, rows)
    master_row = np.array([group[0].master_home(0, e)[1] for e in range(EXPERTS)])
    dispatches = []
    for engine in group:
        instances = engine.instances(0, 0)
        row, columns = engine.split(0, 0)
        local_of = local_indices(instances, master_row, PER_RANK)
        by_source = counts_by_source(columns, local_of, RANKS, PER_RANK + SLOTS)
        dispatch = build(
            instances, row, by_source, master_row, PER_RANK, RANKS, torch.device("cpu")
        )
        dispatches.append(dispatch)
        mine = torch.from_numpy(ids[engine.rank].astype(np.int64))
        expected = engine.reroute(0, 0, ids[engine.rank]).astype(np.int64)
        got = reroute(mine, dispatch).numpy()
        assert np.array_equal(got, expected), f"case {case} rank {engine.rank}"
        # The pairs leave grouped by destination rank, as many to each as the sizes say.
        order = send_order(torch.from_numpy(expected), dispatch).numpy()
        ranks_in_order = instances[expected[order], 1]
        assert np.all(np.diff(ranks_in_order) >= 0)
        assert np.bincount(ranks_in_order, minlength=RANKS).tolist() == dispatch.sends
    # What every rank expects to receive from each source (its columns) is what that source
    # sends it (its row).
    for target in range(RANKS):
        assert dispatches[target].receives == [
            dispatches[source].sends[target] for source in range(RANKS)
        ]
        assert sum(dispatches[target].segments) == sum(dispatches[target].receives)
