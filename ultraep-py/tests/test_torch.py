"""`ultraep.torch.ExpertParallelMoE` on 4 CPU processes with gloo, against the Hugging Face block it
wraps, run in one process on the same weights and tokens.

Each family's group runs once (a module fixture): two training steps (forward and backward) of
the same layer, whose results the tests below check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ep_group  # imported after the checks above: it needs torch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def reference(family: str, reverse: bool = False) -> dict[str, torch.Tensor]:
    """The block on every rank's tokens at once, in this process; with ``reverse``, on the same
    tokens in the opposite order (each result put back in the original order), so that every sum
    over tokens adds its terms in another order."""
    torch.set_num_threads(1)
    block = ep_group.build_block(family)
    x = torch.cat([ep_group.tokens(rank) for rank in range(ep_group.RANKS)])
    probe = torch.cat([ep_group.probe(rank) for rank in range(ep_group.RANKS)])
    flip = (lambda t: t.flip(0, 1)) if reverse else (lambda t: t)
    x = flip(x).requires_grad_()
    out = block(x)
    (out * flip(probe)).sum().backward()
    return {
        "out": flip(out.detach()),
        "x_grad": flip(x.grad),
        "gate_up_grad": block.experts.gate_up_proj.grad,
        "down_grad": block.experts.down_proj.grad,
        "router_grad": block.gate.weight.grad,
    }


@pytest.fixture(scope="module", params=ep_group.FAMILIES)
def family_run(request, tmp_path_factory):
    family = request.param
    directory = tmp_path_factory.mktemp(family)
    results = ep_group.run(family, Path(directory), "train")
    return family, results, reference(family), reference(family, reverse=True)


def ranks_part(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank `rank`'s batch rows of a tensor of every rank's tokens."""
    return tensor.chunk(ep_group.RANKS)[rank]


def test_outputs_equal_the_single_process_block(family_run):
    family, results, expected, _ = family_run
    differing = total = small_rows = 0
    for rank, result in enumerate(results):
        out = result["runs"][0]["out"]
        want = ranks_part(expected["out"], rank)
        # Every expert output is the block's own math on the same rows with the same weights (a
        # replica's weights are its master's bytes), weighted and summed in the block's order. The
        # one difference is which rows share a matrix product: on a CPU, single-threaded FP32
        # products give a row the same bits whichever rows share it, except when a product has
        # fewer than 4 rows, where a matrix-vector kernel accumulates in another order. So a token
        # may differ only if one of its rows went through such a product (within FP32 rounding:
        # rtol 1e-6, atol 1e-7, for outputs of about 1e-1); every other token is bit-identical.
        torch.testing.assert_close(
            out, want, rtol=1e-6, atol=1e-7, msg=lambda m, rank=rank: f"{family} rank {rank}: {m}"
        )
        differing += int((out != want).any(dim=-1).sum())
        total += out.shape[0] * out.shape[1]
        small_rows += sum(rows for rows in result["runs"][0]["report"].instance_rows if rows < 4)
    print(
        f"{family}: {total - differing} of {total} tokens bit-identical; {small_rows} rows in products of fewer than 4"
    )
    assert differing <= small_rows, (
        f"{family}: {differing} tokens differ, but only {small_rows} rows went through products "
        "of fewer than 4 rows"
    )


def test_gradients_equal_the_single_process_block(family_run):
    family, results, expected, reordered = family_run

    # Gradients are sums whose order differs: a master's gradient adds its replicas' gradients
    # (each over its own tokens) rather than one sum over all its tokens, and the router's is the
    # sum of 4 ranks' gradients. How far reordering alone moves them is measured on the block
    # itself: the same block on the same tokens in the opposite order. ultraep's gradients must
    # lie within 4 times that distance of the block's (and within 1e-7 of the largest entry,
    # for a gradient the reordering leaves exact).
    def close(actual: torch.Tensor, wanted: torch.Tensor, other: torch.Tensor, what: str) -> None:
        allowed = 4 * float((other - wanted).abs().max()) + 1e-7 * float(wanted.abs().max())
        found = float((actual - wanted).abs().max())
        print(f"{family} {what}: {found:.3g} from the block, {allowed:.3g} allowed")
        assert found <= allowed, f"{family} {what}: {found} from the block, {allowed} allowed"

    per_rank = ep_group.EXPERTS // ep_group.RANKS
    for name in ("gate_up_grad", "down_grad"):
        gathered = torch.cat([result["runs"][0][name] for result in results])
        assert gathered.shape[0] == per_rank * ep_group.RANKS
        close(gathered, expected[name], reordered[name], name)
    for rank, result in enumerate(results):
        close(
            result["runs"][0]["router_grad"],
            expected["router_grad"],
            reordered["router_grad"],
            "router gradient",
        )
        close(
            result["runs"][0]["x_grad"],
            ranks_part(expected["x_grad"], rank),
            ranks_part(reordered["x_grad"], rank),
            f"rank {rank} input gradient",
        )


def test_two_balanced_runs_are_bit_identical(family_run):
    _, results, _, _ = family_run
    for result in results:
        first, second = result["runs"]
        # The second run finds its replicas already in their slots: nothing is copied.
        assert first["report"].copies > 0
        assert second["report"].copies == 0
        for name in ("out", "x_grad", "gate_up_grad", "down_grad", "router_grad"):
            assert torch.equal(first[name], second[name]), name


def test_imbalance_falls_from_about_3_to_at_most_1_02_with_replicas_used(family_run):
    family, results, _, _ = family_run
    reports = [result["runs"][0]["report"] for result in results]
    assert all(report.imbalance == reports[0].imbalance for report in reports)
    assert 2.8 <= reports[0].initial_imbalance <= 3.3, reports[0]
    assert reports[0].imbalance <= 1.02, reports[0]
    # What the ranks computed, not only what the plan says.
    tokens = [report.tokens for report in reports]
    assert max(tokens) / (sum(tokens) / len(tokens)) <= 1.02, tokens
    replica_tokens = sum(report.replica_tokens for report in reports)
    assert replica_tokens > 0, f"{family}: no token ran on a replica"
    assert sum(report.bytes_received for report in reports) > 0
    assert reports[0].bytes_moved > 0


@pytest.mark.parametrize("scenario", ["die", "die-by-domain"])
def test_a_rank_that_dies_mid_forward_makes_the_others_raise(tmp_path, scenario):
    """In both planning modes: the gathered matrix, and planning by domain (whose collectives
    run inside the engine, through the layer's callbacks)."""
    results = ep_group.run("qwen3_moe", tmp_path, scenario, limit=120.0)
    assert results[2] is None, "rank 2 died before writing a result"
    for rank in (0, 1, 3):
        name, message = results[rank]["error"]
        assert name == "PeerLostError", (rank, name, message)
        assert f"rank {rank} of the expert-parallel group failed" in message
        # The group's timeout is 30 s; a closed connection is noticed well before it.
        assert results[rank]["seconds"] < 45.0, results[rank]["seconds"]


def test_experts_moved_between_steps_keep_their_weights_and_adam_state(tmp_path):
    """Three Adam steps, with most experts moved to other ranks after the first: every expert
    ends with the weights and moments of the same run without the move, wherever it lives now,
    and every output matches."""
    (tmp_path / "kept").mkdir()
    (tmp_path / "moved").mkdir()
    kept = ep_group.run("qwen3_moe", tmp_path / "kept", "adam")
    moved = ep_group.run("qwen3_moe", tmp_path / "moved", "adam-moved")
    experts = len(moved[0]["homes"])
    target = ep_group.moved_homes(experts)
    assert all(result["homes"] == target for result in moved)
    assert all("number of masters" in result["refused"] for result in moved)
    assert moved[0]["moved"] == sum(
        1 for expert in range(experts) if target[expert] != expert // (experts // ep_group.RANKS)
    )
    assert moved[0]["moved"] > experts // 2
    for rank in range(ep_group.RANKS):
        for before, after in zip(kept[rank]["outputs"], moved[rank]["outputs"], strict=True):
            # Replicas sit elsewhere in the new layout, so rows share other matrix products.
            torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    kept_states = {e: states for result in kept for e, states in result["experts"].items()}
    moved_states = {e: states for result in moved for e, states in result["experts"].items()}
    assert sorted(kept_states) == sorted(moved_states) == list(range(experts))
    for expert in range(experts):
        for want, got in zip(kept_states[expert], moved_states[expert], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_planning_by_domain_gives_the_whole_matrixs_plan(tmp_path):
    """Two domains of two ranks: a layer that plans by domain (an all-reduce of the counts, its
    domain's plan, every rank's replicas and a few cells gathered) computes what the layer that
    gathers the whole load matrix computes, bit for bit, on the first step (no replica is in a
    slot yet, so both planners see the same problem)."""
    (tmp_path / "whole").mkdir()
    (tmp_path / "by-domain").mkdir()
    whole = ep_group.run("qwen3_moe", tmp_path / "whole", "domains")
    by_domain = ep_group.run("qwen3_moe", tmp_path / "by-domain", "domains-by-domain")
    for rank in range(ep_group.RANKS):
        want, got = whole[rank]["runs"][0], by_domain[rank]["runs"][0]
        assert got["report"].replicas == want["report"].replicas > 0
        assert got["report"].imbalance == want["report"].imbalance
        for name in ("out", "x_grad", "gate_up_grad", "down_grad", "router_grad"):
            assert torch.equal(got[name], want[name]), (rank, name)
        # The second step runs too (replicas may then sit elsewhere: the whole-matrix planner
        # prefers slots that already hold an expert).
        torch.testing.assert_close(
            by_domain[rank]["runs"][1]["out"], whole[rank]["runs"][1]["out"], rtol=1e-4, atol=1e-5
        )


def test_masters_changed_through_data_never_leave_a_stale_replica(tmp_path):
    """An optimizer step is noticed even when it writes through ``.data`` (no version counter
    moves): the next forward copies every replica again and computes with the new weights. A
    write by hand through ``.data`` outside any optimizer step needs ``masters_updated()``, as the
    guide says; without it the replicas are stale, which this test shows too."""
    results = [result["stale"] for result in ep_group.run("qwen3_moe", tmp_path, "stale")]
    for found in results:
        for case in ("optimizer", "by hand, told"):
            copies, replicas, error = found[case]
            assert replicas > 0 and copies == replicas, (case, found)
            assert error < 1e-5, (case, found)
        copies, replicas, error = found["by hand, not told"]
        assert copies == 0 and replicas > 0
    # Somewhere a stale replica computed: the documented limit.
    assert max(found["by hand, not told"][2] for found in results) > 1e-3


def test_ranks_that_compute_no_row_still_run_the_backward(tmp_path):
    """All tokens on rank 0's experts and no replica: the three other ranks receive no row, and
    their backward still joins every all-to-all (else the group hangs); every gradient is the
    block's."""
    results = [result["cold"] for result in ep_group.run("qwen3_moe", tmp_path, "cold", 120.0)]
    assert results[0]["rows"] > 0
    assert all(result["rows"] == 0 for result in results[1:])
    for result in results:
        assert result["out"] < 1e-6 and result["x_grad"] < 1e-5, results


def test_frozen_experts_give_the_right_input_gradients(tmp_path):
    """Experts frozen, tokens not: the layer still keeps its replicas for the backward (one slot,
    taken by the next block's replica in between), so the input gradient is the blocks' own; and
    a frozen expert stays frozen."""
    results = [result["frozen"] for result in ep_group.run("-", tmp_path, "frozen", 120.0)]
    assert results[0]["replicas"] >= 2
    for result in results:
        assert result["trainable experts"] == 0.0
        assert result["x_grad"] < 1e-5, results


def test_backwards_that_never_reach_the_experts_give_their_slots_back(tmp_path):
    """Three backwards through the router only (the experts' part never runs), with room for two
    microbatches: each is abandoned when its graph is freed, and the next training step runs and
    gives the block's gradients."""
    results = [result["partial"] for result in ep_group.run("qwen3_moe", tmp_path, "partial")]
    expected = reference("qwen3_moe")
    per_rank = ep_group.EXPERTS // ep_group.RANKS
    gathered = torch.cat([result["after"]["gate_up_grad"] for result in results])
    assert gathered.shape[0] == per_rank * ep_group.RANKS
    torch.testing.assert_close(
        gathered,
        expected["gate_up_grad"],
        rtol=1e-5,
        atol=1e-6 * float(expected["gate_up_grad"].abs().max()),
    )
