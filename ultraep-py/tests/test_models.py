"""Whole causal language models of two families (Qwen3-MoE: every layer MoE; DeepSeek-V3: a
dense layer, then MoE layers with a shared expert), parallelized by ``ultraep.torch.parallelize``
with one slot pool on 4 gloo processes, against the unwrapped model run in one process on every
rank's tokens (``model_runs``)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ep_group
import model_runs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

# The largest gradient or parameter difference, relative to the largest reference entry: FP32
# sums in another order (replicas' gradients added to their masters', rows in other products).
TOLERANCE = 5e-6
ORDERS = (
    "F1 F2 B1 B2",
    "F1 F2 B2 B1",
    "F1 F2 F3 F4 B3 B1 B4 B2",
    "1F1B: F1 F2 B1 F3 B2 F4 B3 B4",
)


@pytest.fixture(scope="module")
def model_results(tmp_path_factory) -> list[dict[str, object]]:
    directory = tmp_path_factory.mktemp("models")
    return [result["models"] for result in ep_group.run("-", Path(directory), "models", 600.0)]


@pytest.mark.parametrize("family", model_runs.MODELS)
def test_every_moe_layer_shares_one_pool(model_results, family):
    for results in model_results:
        assert results[f"{family} layers"] == 3
        imbalances, initial, pool_bytes, _ = results[f"{family} report"]
        assert len(imbalances) == 3
        # One pool of 2 slots for the 3 layers: 2 x (3 x 64 x 32) FP32 values.
        assert pool_bytes == 2 * 3 * 64 * 32 * 4
        assert max(imbalances) < max(initial)


@pytest.mark.parametrize("family", model_runs.MODELS)
def test_greedy_generation_is_the_unwrapped_models(model_results, family):
    assert all(results[f"{family} generation equal"] for results in model_results)


@pytest.mark.parametrize("family", model_runs.MODELS)
def test_adamw_steps_give_the_unwrapped_models_losses_and_parameters(model_results, family):
    for results in model_results:
        for got, want in results[f"{family} losses"]:
            assert abs(got - want) <= 1e-5 * abs(want), (got, want)
        assert results[f"{family} parameters"] <= TOLERANCE


@pytest.mark.parametrize("family", model_runs.MODELS)
@pytest.mark.parametrize("order", ORDERS)
def test_microbatches_in_flight_in_any_order_give_the_right_gradients(model_results, family, order):
    for results in model_results:
        assert results[f"{family} {order}"] <= TOLERANCE


@pytest.mark.parametrize("family", model_runs.MODELS)
def test_gradient_checkpointing_gives_the_right_gradients(model_results, family):
    # Two microbatches in flight, the second's backward first: its recompute finds its replicas
    # moved by the other's restore (DeepSeek-V3's shared expert recomputes before the boundary).
    # And reentrant checkpointing, whose first forward runs under no_grad.
    for results in model_results:
        assert results[f"{family} checkpointing"] <= TOLERANCE
        assert results[f"{family} reentrant checkpointing"] <= TOLERANCE


@pytest.mark.parametrize("family", model_runs.MODELS)
def test_frozen_experts_stay_frozen_and_pass_the_right_input_gradients(model_results, family):
    for results in model_results:
        assert results[f"{family} frozen experts still frozen"]
        assert results[f"{family} frozen experts"] <= TOLERANCE


def test_one_microbatch_more_than_the_pool_serves_is_refused_naming_the_limit(model_results):
    for results in model_results:
        name, message = results["limit"]
        assert name == "RefusedError", message
        assert "more microbatches in flight than the 2" in message
        assert "microbatches=" in message
