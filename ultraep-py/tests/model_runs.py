"""Whole causal language models parallelized by ``ultraep.torch.parallelize`` on one rank of the
test group, against the unwrapped model run in the same process on every rank's tokens.

Each rank has its own token sequences. The unwrapped reference adds the ranks' losses, so its
gradients are the sums the parallelized model gets once the replicated parameters' gradients are
all-reduced (the experts' already add every rank's tokens).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

RANKS = 4
VOCAB = 128
MODELS = ("qwen3_moe", "deepseek_v3")


def build_model(family: str, seed: int = 11) -> nn.Module:
    """A 3-layer causal LM of the family (every layer MoE for Qwen3-MoE; one dense layer, then
    MoE layers with a shared expert, for DeepSeek-V3), FP32, seeded."""
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        config = Qwen3MoeConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=64,
            moe_intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=8,
            num_experts_per_tok=2,
        )
        model_class = Qwen3MoeForCausalLM
    else:
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

        config = DeepseekV3Config(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=64,
            moe_intermediate_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=1,
            topk_group=1,
            n_shared_experts=1,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
        )
        model_class = DeepseekV3ForCausalLM
    torch.manual_seed(seed)
    model = model_class(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def sequences(rank: int, salt: int = 0) -> torch.Tensor:
    """Rank `rank`'s token ids, [2, 16]: skewed towards low ids, so that a few experts are hot."""
    generator = torch.Generator().manual_seed(5000 + 97 * salt + rank)
    return (torch.rand(2, 16, generator=generator) ** 3 * VOCAB).long()


def _is_expert(name: str) -> bool:
    return ".experts." in name


def _shard(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    per_rank = tensor.shape[0] // RANKS
    return tensor[rank * per_rank : (rank + 1) * per_rank]


def _reduce_replicated(model: nn.Module) -> None:
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and not _is_expert(name):
            dist.all_reduce(parameter.grad)


def _largest_error(
    model: nn.Module, reference: nn.Module, rank: int, what: str
) -> dict[str, float]:
    """The largest difference of every parameter (``what``: ``"grad"`` or ``"data"``) relative
    to the largest reference entry, this rank's shard for experts."""
    wanted = dict(reference.named_parameters())
    found = {}
    for name, parameter in model.named_parameters():
        got = getattr(parameter, what)
        want = getattr(wanted[name], what)
        if want is not None and _is_expert(name):
            want = _shard(want, rank)
        if got is None and want is None:
            continue
        if got is None or want is None:
            found[name] = float("inf")
            continue
        scale = float(want.abs().max()) or 1.0
        found[name] = float((got - want).abs().max()) / scale
    return found


def _worst(errors: dict[str, float]) -> float:
    return max(errors.values(), default=0.0)


def run_models(rank: int) -> dict[str, object]:
    """Every check of the whole-model tests for every family; returns the figures."""
    from ultraep.torch import model_report, parallelize

    results: dict[str, object] = {}
    for family in MODELS:
        reference = build_model(family)
        model = build_model(family)
        layers = parallelize(model, slots=2, microbatches=4)
        results[f"{family} layers"] = len(layers)

        # Greedy generation, before any training: every rank generates from its own prompt.
        prompt = sequences(rank, salt=9)[:1, :6]
        with torch.no_grad():
            expected = reference.generate(
                prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False
            )
            generated = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        results[f"{family} generation equal"] = bool(torch.equal(generated, expected))

        # Three AdamW steps on every rank's tokens.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3)
        losses = []
        for step in range(3):
            loss = model(sequences(rank, step), labels=sequences(rank, step)).loss
            loss.backward()
            _reduce_replicated(model)
            optimizer.step()
            optimizer.zero_grad()
            total = loss.detach().clone()
            dist.all_reduce(total)
            expected_loss = sum(
                reference(sequences(r, step), labels=sequences(r, step)).loss for r in range(RANKS)
            )
            expected_loss.backward()
            reference_optimizer.step()
            reference_optimizer.zero_grad()
            losses.append((float(total), float(expected_loss)))
        results[f"{family} losses"] = losses
        results[f"{family} parameters"] = _worst(_largest_error(model, reference, rank, "data"))
        report = model_report(layers)
        results[f"{family} report"] = (
            [r.imbalance for r in report.layers if r is not None],
            [r.initial_imbalance for r in report.layers if r is not None],
            report.pool_bytes,
            report.restored_bytes,
        )

        # Microbatches in flight, in several backward orders: gradients of the sum of the
        # microbatches' losses, as the reference computes them.
        for name, order in (
            ("F1 F2 B1 B2", ["F0", "F1", "B0", "B1"]),
            ("F1 F2 B2 B1", ["F0", "F1", "B1", "B0"]),
            ("F1 F2 F3 F4 B3 B1 B4 B2", ["F0", "F1", "F2", "F3", "B2", "B0", "B3", "B1"]),
            ("1F1B: F1 F2 B1 F3 B2 F4 B3 B4", ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]),
        ):
            results[f"{family} {name}"] = _microbatches(model, reference, rank, order)

        # Gradient checkpointing (non-reentrant, transformers' default): the same gradients.
        model.train()
        reference.train()
        model.gradient_checkpointing_enable()
        reference.gradient_checkpointing_enable()
        results[f"{family} checkpointing"] = _microbatches(
            model, reference, rank, ["F0", "F1", "B1", "B0"]
        )
        model.gradient_checkpointing_disable()
        reference.gradient_checkpointing_disable()
        # Reentrant checkpointing: the forward runs under no_grad, then again in the backward as
        # a forward of its own.
        kwargs = {"use_reentrant": True}
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        reference.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        results[f"{family} reentrant checkpointing"] = _microbatches(
            model, reference, rank, ["F0", "B0"]
        )
        model.gradient_checkpointing_disable()
        reference.gradient_checkpointing_disable()

        # Frozen experts: no expert gradient, and every other gradient (through the experts'
        # input gradients) as the reference's, with one slot, which every layer's replicas take
        # in turn before the backwards read theirs back.
        frozen, frozen_reference = build_model(family), build_model(family)
        for name, parameter in [*frozen.named_parameters(), *frozen_reference.named_parameters()]:
            if _is_expert(name):
                parameter.requires_grad_(False)
        parallelize(frozen, slots=1, microbatches=4)
        results[f"{family} frozen experts"] = _microbatches(
            frozen, frozen_reference, rank, ["F0", "F1", "B1", "B0"]
        )
        results[f"{family} frozen experts still frozen"] = not any(
            parameter.requires_grad
            for name, parameter in frozen.named_parameters()
            if _is_expert(name)
        )

    # One microbatch more than the pool was built for is refused, naming the limit.
    small = build_model("qwen3_moe")
    parallelize(small, slots=2, microbatches=2)
    kept = [small(sequences(rank, 20 + i), labels=sequences(rank, 20 + i)).loss for i in range(2)]
    try:
        small(sequences(rank, 22), labels=sequences(rank, 22))
        results["limit"] = None
    except Exception as error:  # noqa: BLE001 - the test inspects what was raised
        results["limit"] = (type(error).__name__, str(error))
    del kept
    return results


def _microbatches(model: nn.Module, reference: nn.Module, rank: int, order: list[str]) -> float:
    """Runs forwards and backwards in ``order`` (``F<i>``: microbatch i's forward, ``B<i>`` its
    backward), then compares the accumulated gradients with the reference's; returns the largest
    relative error."""
    model.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    losses: dict[int, torch.Tensor] = {}
    count = 0
    for action in order:
        index = int(action[1:])
        ids = sequences(rank, 30 + index)
        if action[0] == "F":
            losses[index] = model(ids, labels=ids).loss
            count += 1
        else:
            losses.pop(index).backward()
    _reduce_replicated(model)
    expected = sum(
        reference(sequences(r, 30 + index), labels=sequences(r, 30 + index)).loss
        for r in range(RANKS)
        for index in range(count)
    )
    expected.backward()
    return _worst(_largest_error(model, reference, rank, "grad"))
