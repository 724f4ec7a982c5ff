"""Host-driven engines from Python, one per rank of an 8-rank group in this process: the caller
gathers the rows, executes the transfer program on numpy arrays standing for each rank's
tensors, reroutes its tokens, and sums replica gradients through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import ultraep

RANKS, PER_RANK, TOP_K = 8, 4, 2
EXPERTS = RANKS * PER_RANK


def engines(training: bool = True) -> list[ultraep.Engine]:
    homes = [expert // PER_RANK for expert in range(EXPERTS)]
    return [
        ultraep.Engine(
            rank,
            homes,
            layers=2,
            top_k=TOP_K,
            hidden=16,
            expert_width=16,
            dtype="f32",
            training=training,
            min_replica_tokens=8,
        )
        for rank in range(RANKS)
    ]


def router_ids(rank: int, tokens: int = 256) -> np.ndarray:
    """Every token wants expert 5 (rank 1's) and one other expert."""
    others = (np.arange(tokens, dtype=np.uint32) * 7 + rank * 3 + 9) % EXPERTS
    others[others == 5] = 6
    return np.stack([np.full(tokens, 5, dtype=np.uint32), others], axis=1).ravel()


def gathered(group: list[ultraep.Engine]) -> np.ndarray:
    # What all_gather_into_tensor gives every rank: the rows, rank after rank.
    return np.concatenate([engine.gather_row(router_ids(engine.rank)) for engine in group])


def test_replicas_receive_their_masters_bytes_and_tokens_their_quotas():
    group = engines()
    state = group[0].state_bytes
    rng = np.random.default_rng(0)
    masters = {
        (layer, expert): rng.integers(0, 255, size=state, dtype=np.uint8)
        for layer in range(2)
        for expert in range(EXPERTS)
    }
    slots = np.zeros((RANKS, 2, state), dtype=np.uint8)
    rows = gathered(group)
    reports = [engine.step(0, 1, rows) for engine in group]
    assert all(report == reports[0] for report in reports), "every rank made the same plan"
    assert reports[0].initial_imbalance > 2.0
    assert reports[0].imbalance < 1.1
    program = group[0].transfer_program()
    for engine in group[1:]:
        assert (engine.transfer_program() == program).all()
    for tag, expert, src, src_slot, dst, dst_slot, offset, size, after in program:
        if after >= 0:
            assert program[after][4] == src, "a relay forwards what it received"
        source = masters[(1, expert)] if src_slot < 0 else slots[src, src_slot]
        slots[dst, dst_slot, offset : offset + size] = source[offset : offset + size]
    instances = group[0].instances(0, 1)
    replicas = instances[instances[:, 2] >= 0]
    assert len(replicas) > 0
    for expert, rank, slot, _ in replicas:
        assert (slots[rank, slot] == masters[(1, expert)]).all()
    # Every rank reroutes its own ids; together the instances get exactly their quotas.
    received = np.zeros(len(instances), dtype=np.int64)
    for engine in group:
        routed = engine.reroute(0, 1, router_ids(engine.rank))
        assert (instances[routed, 0] == router_ids(engine.rank)).all()
        np.add.at(received, routed.astype(np.int64), 1)
    assert (received == instances[:, 3]).all()


def test_replica_gradients_are_summed_through_the_engine():
    group = engines()
    rows = gathered(group)
    for engine in group:
        engine.step(0, 0, rows)
    for engine in group:
        engine.restore(0, 0)
    for engine in group:
        engine.reduce_gradients(0, 0)
    sends = group[0].gradient_sends()
    assert len(sends) > 0
    floats = group[0].state_bytes  # f32 gradients of f32 weights: as many bytes, / 4 values
    for expert in np.unique(sends[:, 0]):
        mine = sends[sends[:, 0] == expert]
        master_rank = int(mine[0, 3])
        received = {
            int(rank): np.full(floats // 4, rank + 1.0, dtype=np.float32) for rank in mine[:, 1]
        }
        master = np.full(floats // 4, 0.5, dtype=np.float32)
        group[master_rank].sum_replica_gradients(int(expert), master, received)
        assert (master == 0.5 + sum(rank + 1.0 for rank in received)).all()


def test_a_rank_that_planned_another_load_is_caught_at_the_next_gather():
    group = engines(training=False)
    rows = gathered(group)
    for engine in group:
        engine.step(0, 0, rows)
    odd = rows.copy()
    odd[1] += 1  # rank 0's count of expert 1, as only rank 3 saw it
    group[3].step(1, 0, odd)
    for engine in group[:3] + group[4:]:
        engine.step(1, 0, rows)
    rows = gathered(group)
    for engine in group:
        with pytest.raises(ultraep.DivergedError, match="differ"):
            engine.step(2, 0, rows)


def test_bad_input_raises():
    engine = engines()[0]
    with pytest.raises(ultraep.RefusedError, match="whole tokens"):
        engine.gather_row(np.arange(3, dtype=np.uint32))
    with pytest.raises(TypeError):
        engine.gather_row(np.arange(4, dtype=np.int64))
    with pytest.raises(ultraep.RefusedError, match="gathered"):
        engine.step(0, 0, np.zeros(5, dtype=np.uint32))
    with pytest.raises(ValueError, match="dtype|preset|bf16"):
        ultraep.Engine(0, [0], layers=1, top_k=1, hidden=16, expert_width=16, dtype="f64")


def test_a_layout_change_moves_homes_only_at_the_switch():
    homes = [expert // PER_RANK for expert in range(EXPERTS)]
    target = list(homes)
    target[5], target[30] = target[30], target[5]  # expert 5 to rank 7, expert 30 to rank 1
    group = [
        ultraep.Engine(
            rank, homes, layers=2, top_k=TOP_K, hidden=16, expert_width=16, staging_slots=1
        )
        for rank in range(RANKS)
    ]
    for engine in group:
        moves = engine.begin_layout_change(1, target)
        # Layer 1's masters are a rank's indices 4-7: each arrival takes its departure's index.
        assert moves.tolist() == [[5, 1, 7, 2, 6], [30, 7, 1, 2, 5]]
        with pytest.raises(ultraep.RefusedError, match="not staged"):
            engine.switch_layout()
        assert engine.master_home(1, 5) == (1, 5)
        assert engine.advance_layout_change(1) == (1, 1, 2)
        assert engine.advance_layout_change(1) == (1, 2, 2)
        engine.switch_layout()
        assert engine.master_home(1, 5) == (7, 6)
        assert engine.homes(1).tolist() == target
        assert engine.homes(0).tolist() == homes
    # The next step plans layer 1 in the new layout on every rank alike.
    rows = gathered(group)
    for engine in group:
        engine.step(0, 1, rows)
        masters = engine.instances(0, 1)
        assert masters[(masters[:, 0] == 5) & (masters[:, 2] < 0), 1].tolist() == [7]


def test_a_layout_change_that_moves_a_rank_s_count_is_refused():
    engine = engines()[0]
    uneven = [0] + [expert // PER_RANK for expert in range(1, EXPERTS)]
    uneven[4] = 0
    with pytest.raises(ultraep.RefusedError, match="number of masters"):
        engine.begin_layout_change(0, uneven)
