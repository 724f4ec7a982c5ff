"""The planner from Python: plans, the library's errors as Python exceptions, and parity with
the ``ultraep plan`` command on generated problems."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import ultraep


def skewed(ranks: int, experts: int, seed: int) -> np.ndarray:
    """Loads where the first expert of every rank is hot, rank 0's hottest."""
    rng = np.random.default_rng(seed)
    loads = rng.integers(0, 40, size=(ranks, experts), dtype=np.uint32)
    per_rank = experts // ranks
    for rank in range(ranks):
        loads[:, rank * per_rank] += np.uint32(400 // (rank + 1))
    return loads


def planner(ranks: int = 8, per_rank: int = 4, **settings) -> ultraep.Planner:
    homes = [expert // per_rank for expert in range(ranks * per_rank)]
    settings.setdefault("min_replica_tokens", 16)
    return ultraep.Planner(homes, [0] * ranks, slots_per_rank=2, **settings)


def test_a_plan_balances_and_keeps_every_token():
    loads = skewed(8, 32, seed=1)
    plan = planner().plan(loads)
    assert plan.initial_imbalance > 1.5
    assert plan.imbalance < plan.initial_imbalance
    assert plan.replicas > 0
    instances = plan.instances
    quotas = np.zeros(32, dtype=np.int64)
    np.add.at(quotas, instances[:, 0], instances[:, 3])
    assert (quotas == loads.sum(axis=0)).all(), "quotas add up to every expert's load"
    assert plan.rank_loads.sum() == loads.sum()
    split = plan.split
    assert split[:, 3].sum() == loads.sum(), "every token is split to an instance"


def test_int32_and_torch_like_arrays_are_read_alike():
    loads = skewed(8, 32, seed=2)
    a = planner().plan(loads)
    b = planner().plan(loads.astype(np.int32))
    assert (a.instances == b.instances).all()


def test_one_ranks_split_is_its_part_of_the_contiguous_split():
    loads = skewed(8, 32, seed=3)
    plan = planner(split="contiguous").plan(loads)
    whole = plan.split
    for rank in range(8):
        row, columns = plan.rank_split(rank)
        assert (row == whole[whole[:, 0] == rank]).all()
        mine = whole[whole[:, 2] == rank]
        assert sorted(map(tuple, columns)) == sorted(map(tuple, mine))


@pytest.mark.parametrize(
    ("loads", "error", "message"),
    [
        (np.zeros((8, 32), dtype=np.float32), TypeError, "uint32 or int32"),
        (np.zeros((8, 32), dtype=np.int64), TypeError, "uint32 or int32"),
        (np.zeros((8, 31), dtype=np.uint32), ValueError, "shape"),
        (np.zeros((8,), dtype=np.uint32), TypeError, "2-D"),
        (-np.ones((8, 32), dtype=np.int32), ValueError, "negative"),
        (np.zeros((32, 8), dtype=np.uint32).T, ValueError, "C-contiguous"),
    ],
)
def test_bad_loads_raise_with_the_reason(loads, error, message):
    with pytest.raises(error, match=message):
        planner().plan(loads)


def test_a_bad_layout_raises_the_library_message():
    with pytest.raises(ValueError, match="home rank"):
        ultraep.Planner([0, 5], [0, 0])
    with pytest.raises(ValueError, match="split"):
        ultraep.Planner([0, 1], [0, 0], split="sideways")


def command_plan(problem: dict, tmp_path) -> dict:
    """What ``ultraep plan`` prints for ``problem``."""
    binary = os.environ.get("ULTRAEP_BIN")
    if not binary:
        pytest.fail("ULTRAEP_BIN must name the ultraep command (cargo xtask test sets it)")
    path = tmp_path / "problem.json"
    path.write_text(json.dumps(problem))
    output = subprocess.run(
        [binary, "plan", "--input", str(path), "--min-replica-tokens", "16"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(output.stdout)


@pytest.mark.parametrize("seed", range(6))
def test_the_same_plan_as_the_ultraep_plan_command(seed, tmp_path):
    ranks, per_rank = (4, 2) if seed % 2 else (8, 4)
    loads = skewed(ranks, ranks * per_rank, seed)
    homes = [expert // per_rank for expert in range(ranks * per_rank)]
    domains = [rank // 4 for rank in range(ranks)]
    problem = {
        "num_ranks": ranks,
        "experts_per_rank": per_rank,
        "slots_per_rank": 2,
        "domain_size": 4,
        "loads": loads.tolist(),
    }
    expected = command_plan(problem, tmp_path)
    plan = ultraep.Planner(homes, domains, slots_per_rank=2, min_replica_tokens=16).plan(loads)
    instances = []
    for expert, rank, slot, quota in plan.instances:
        instance = {"expert": int(expert), "rank": int(rank), "replica": bool(slot >= 0)}
        if slot >= 0:
            instance["slot"] = int(slot)
        instance["quota"] = int(quota)
        instances.append(instance)
    split = [
        {"source": int(s), "expert": int(e), "rank": int(r), "tokens": int(t)}
        for s, e, r, t in plan.split
    ]
    assert instances == expected["instances"]
    assert split == expected["split"]
    assert plan.rank_loads.tolist() == expected["rank_loads"]
    assert plan.replicas == expected["replicas"]
    assert plan.imbalance == expected["imbalance"]
    assert plan.initial_imbalance == expected["initial_imbalance"]
    assert plan.tokens_leaving_source == expected["tokens_leaving_source"]


def test_cpu_torch_tensors_are_planned_in_place():
    torch = pytest.importorskip("torch")
    loads = skewed(8, 32, seed=4)
    expected = planner().plan(loads).instances
    for dtype in (torch.int32, torch.uint32):
        tensor = torch.from_numpy(loads.astype(np.int64)).to(dtype)
        # numpy views the tensor's memory: the planner reads the tensor itself.
        assert np.shares_memory(np.asarray(tensor), tensor.numpy())
        assert (planner().plan(tensor).instances == expected).all()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda torch: torch.zeros((8, 32), dtype=torch.float32), TypeError, "uint32 or int32"),
        (lambda torch: torch.zeros((8, 32), dtype=torch.int64), TypeError, "uint32 or int32"),
        (lambda torch: -torch.ones((8, 32), dtype=torch.int32), ValueError, "negative"),
        (lambda torch: torch.zeros((32, 8), dtype=torch.int32).t(), ValueError, "C-contiguous"),
        (lambda torch: torch.zeros((8, 64), dtype=torch.int32)[:, ::2], ValueError, "C-contiguous"),
        (lambda torch: torch.zeros((4, 32), dtype=torch.int32), ValueError, "shape"),
    ],
)
def test_bad_torch_tensors_raise_with_the_reason(make, error, message):
    torch = pytest.importorskip("torch")
    with pytest.raises(error, match=message):
        planner().plan(make(torch))


def test_a_weight_read_dearer_than_the_tokens_it_moves_makes_no_replica():
    # Four ranks, one expert each: expert 0 takes 50 tokens, the others 10 (as in the Rust
    # test of the cost objective). A read worth 100 tokens never pays; one worth 5 does.
    loads = np.zeros((4, 4), dtype=np.uint32)
    loads[:, 0] = 10
    for rank in range(4):
        loads[rank, rank] += 10
    costly = ultraep.Planner(
        [0, 1, 2, 3], [0] * 4, slots_per_rank=1, min_replica_tokens=1, instance_cost=100
    )
    cheap = ultraep.Planner(
        [0, 1, 2, 3], [0] * 4, slots_per_rank=1, min_replica_tokens=1, instance_cost=5
    )
    assert costly.plan(loads).replicas == 0
    assert cheap.plan(loads).replicas == 3
    # Without a fixed part, any token cost plans as the token objective does.
    tokens = ultraep.Planner([0, 1, 2, 3], [0] * 4, slots_per_rank=1, min_replica_tokens=1)
    scaled = ultraep.Planner(
        [0, 1, 2, 3], [0] * 4, slots_per_rank=1, min_replica_tokens=1, token_cost=88_080
    )
    assert (tokens.plan(loads).instances == scaled.plan(loads).instances).all()
