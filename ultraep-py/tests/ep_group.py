"""A small expert-parallel group on CPU processes (gloo), for the torch tests.

`run` starts one process per rank with the spawn start method and waits for each with a time
limit; every process writes what it saw to `result-<rank>.pt`. Processes are started and joined
one by one (not with `torch.multiprocessing.spawn`, which ends the survivors as soon as one
process fails: the dying-rank test needs them to run on and report).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
import weakref
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

RANKS = 4
HIDDEN, WIDTH, EXPERTS, TOP_K = 64, 32, 8, 2
TOKENS_PER_RANK = 256
# The weight of a constant input feature in the router rows of experts 0 and 1 (both on rank 0):
# it sends most tokens there, for an initial max/mean of about 3.
HOT_BIAS = 4.5
FAMILIES = ("qwen3_moe", "mixtral", "deepseek_v3")


def build_block(family: str) -> nn.Module:
    """The family's MoE block with seeded FP32 weights and a router biased towards rank 0."""
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

        config = Qwen3MoeConfig(
            hidden_size=HIDDEN,
            moe_intermediate_size=WIDTH,
            num_experts=EXPERTS,
            num_experts_per_tok=TOP_K,
            norm_topk_prob=True,
        )
        block = Qwen3MoeSparseMoeBlock(config)
    elif family == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        config = MixtralConfig(
            hidden_size=HIDDEN,
            intermediate_size=WIDTH,
            num_local_experts=EXPERTS,
            num_experts_per_tok=TOP_K,
            router_jitter_noise=0.0,
        )
        block = MixtralSparseMoeBlock(config)
    elif family == "deepseek_v3":
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        config = DeepseekV3Config(
            hidden_size=HIDDEN,
            moe_intermediate_size=WIDTH,
            n_routed_experts=EXPERTS,
            num_experts_per_tok=TOP_K,
            n_group=1,
            topk_group=1,
            n_shared_experts=1,
        )
        block = DeepseekV3MoE(config)
    else:
        raise ValueError(family)
    # The eager implementation: the per-expert loop the layer's results are compared with.
    config._experts_implementation = "eager"
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in sorted(block.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        router = torch.randn(EXPERTS, HIDDEN, generator=generator) * 0.3
        router[:, 0] = 0.0
        router[0, 0] = router[1, 0] = HOT_BIAS
        block.gate.weight.copy_(router)
    return block


def tokens(rank: int) -> torch.Tensor:
    """Rank `rank`'s hidden states, [2, TOKENS_PER_RANK / 2, HIDDEN]; feature 0 is constant."""
    generator = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(TOKENS_PER_RANK, HIDDEN, generator=generator)
    x[:, 0] = 1.0
    return x.view(2, TOKENS_PER_RANK // 2, HIDDEN)


def probe(rank: int) -> torch.Tensor:
    """The fixed direction the loss projects rank `rank`'s output on."""
    generator = torch.Generator().manual_seed(2000 + rank)
    return torch.randn(2, TOKENS_PER_RANK // 2, HIDDEN, generator=generator)


def _train_step(layer: nn.Module, rank: int) -> dict[str, object]:
    x = tokens(rank).requires_grad_()
    out = layer(x)
    (out * probe(rank)).sum().backward()
    router_grad = layer.gate.weight.grad.clone()
    dist.all_reduce(router_grad, group=None)
    result = {
        "out": out.detach(),
        "x_grad": x.grad,
        "gate_up_grad": layer.experts.gate_up_proj.grad.clone(),
        "down_grad": layer.experts.down_proj.grad.clone(),
        "router_grad": router_grad,
        "report": layer.last_report,
    }
    layer.zero_grad(set_to_none=True)
    return result


def _adam_step(layer: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> torch.Tensor:
    """One training step of the experts with Adam; returns the output."""
    x = tokens(rank)
    out = layer(x)
    (out * probe(rank)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.detach()


def moved_homes(experts: int) -> list[int]:
    """A layout that keeps every rank's number of experts but moves most of them."""
    per_rank = experts // RANKS
    return [(expert // per_rank + expert) % RANKS for expert in range(experts)]


def _by_expert(layer: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, list]:
    """This rank's experts: their weights and Adam moments, by expert."""
    rank = dist.get_rank()
    found: dict[int, list] = {}
    for expert, home in enumerate(layer.homes()):
        if home != rank:
            continue
        row = layer.engine.master_home(layer.layer_index, expert)[1]
        found[expert] = [
            tensor[row].clone()
            for parameter in (layer.experts.gate_up_proj, layer.experts.down_proj)
            for tensor in (
                parameter.data,
                optimizer.state[parameter]["exp_avg"],
                optimizer.state[parameter]["exp_avg_sq"],
            )
        ]
    return found


def _family_runs(rank: int) -> dict[str, dict[str, float]]:
    """Every supported family in FP32 and BF16: the wrapped block against the block itself on
    every rank's tokens (computed here too); the largest differences, relative to the largest
    reference value, of the output, the input gradient, the experts' gradients (this rank's
    shard) and every other parameter's gradient (summed over the ranks)."""
    import families
    from ultraep.torch import ExpertParallelMoE, UnsupportedBlockError

    found: dict[str, dict[str, float]] = {}
    for family, expected in families.EXPECTED.items():
        if expected.startswith("refused"):
            continue
        for dtype in (torch.float32, torch.bfloat16):
            case = f"{family} {str(dtype).removeprefix('torch.')}"
            reference = families.build(family).to(dtype)
            try:
                wrapped = ExpertParallelMoE(
                    families.build(family).to(dtype), slots=2, min_replica_tokens=1
                )
            except UnsupportedBlockError as error:
                found[case] = {"refused": str(error)}
                continue
            extra = {}
            if family.endswith(".hash"):
                ids = torch.arange(RANKS * 64).view(RANKS * 2, 32) % 64
                extra = {"input_ids": ids}
            everyone = torch.cat([family_tokens(r) for r in range(RANKS)]).to(dtype)
            everyone.requires_grad_()
            try:
                expected_out = reference(everyone, **extra)
            except RuntimeError as error:
                # The block itself does not run in this dtype (a router that keeps FP32
                # weights): nothing to compare with.
                found[case] = {"block fails": str(error)}
                continue
            expected_out = expected_out[0] if isinstance(expected_out, tuple) else expected_out
            probes = torch.cat([family_tokens(r, 1) for r in range(RANKS)]).to(dtype)
            (expected_out.float() * probes.float()).sum().backward()
            mine = family_tokens(rank).to(dtype).requires_grad_()
            mine_extra = {k: v.chunk(RANKS)[rank] for k, v in extra.items()}
            out = wrapped(mine, **mine_extra)
            out = out[0] if isinstance(out, tuple) else out
            (out.float() * family_tokens(rank, 1).to(dtype).float()).sum().backward()

            def error(got: torch.Tensor, want: torch.Tensor) -> float:
                scale = float(want.float().abs().max()) or 1.0
                return float((got.float() - want.float()).abs().max()) / scale

            per_rank = 2  # each rank's [2, 32, hidden] tokens
            errors = {
                "out": error(
                    out.detach(), expected_out.detach()[rank * per_rank : (rank + 1) * per_rank]
                ),
                "x_grad": error(mine.grad, everyone.grad[rank * per_rank : (rank + 1) * per_rank]),
            }
            masters = wrapped.experts.experts_per_rank
            shard = slice(rank * masters, (rank + 1) * masters)
            reference_parameters = dict(reference.named_parameters())
            for name, parameter in wrapped.block.named_parameters():
                want = reference_parameters[name].grad
                got = parameter.grad
                if name.startswith("experts."):
                    want = want[shard] if want is not None else None
                elif got is not None:
                    got = got.clone()
                    dist.all_reduce(got)
                if want is None and got is None:
                    continue
                if want is None or got is None:
                    errors[name] = float("inf")
                    continue
                errors[name] = error(got, want)
            found[case] = errors
    return found


# The tensor methods that read values on the host: each is a device-to-host copy and a stream
# synchronisation on a GPU.
_HOST_READS = ("cpu", "numpy", "tolist", "item", "__bool__", "__int__", "__float__", "__index__")


class HostReads:
    """Counts, while on, every read of tensor values on the host (one per tensor: ``t.cpu()``
    then ``.numpy()`` of the result is one read), with its bytes. ``t.to("cpu")`` counts too."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, int]] = []
        self.on = False
        # The host copies already counted, by identity (weakly: a dead copy's id may come back
        # as another tensor's).
        self._copies: dict[int, weakref.ref] = {}
        for name in _HOST_READS + ("to",):
            original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name: str, original):
        def counted(tensor: torch.Tensor, *args: object, **kwargs: object):
            result = original(tensor, *args, **kwargs)
            copy = self._copies.get(id(tensor))
            if self.on and (copy is None or copy() is not tensor):
                to_host = name != "to" or (
                    isinstance(result, torch.Tensor)
                    and result.device.type == "cpu"
                    and any(str(arg).startswith("cpu") for arg in (*args, *kwargs.values()))
                )
                if to_host:
                    self.reads.append((name, tensor.numel() * tensor.element_size()))
                    if isinstance(result, torch.Tensor):
                        self._copies[id(result)] = weakref.ref(result)
            return result

        return counted


def _budget(rank: int) -> dict[str, object]:
    """One forward and backward of a balanced layer at 1,024 and 8,192 tokens per rank: the host
    reads it makes, and what its forward keeps for the backward besides the weights."""
    from ultraep.torch import ExpertParallelMoE

    counter = HostReads()
    found: dict[str, object] = {}
    for tokens_per_rank in (16, 1024, 8192):
        layer = ExpertParallelMoE(build_block("qwen3_moe"), slots=2, min_replica_tokens=1)
        generator = torch.Generator().manual_seed(100 + rank)
        x = torch.randn(1, tokens_per_rank, HIDDEN, generator=generator)
        x[..., 0] = 1.0
        x.requires_grad_()
        weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        weights.add(layer.experts._group.pool.state.untyped_storage().data_ptr())
        kept: dict[int, int] = {}

        def pack(
            tensor: torch.Tensor, weights: set[int] = weights, kept: dict[int, int] = kept
        ) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                kept[storage.data_ptr()] = storage.nbytes()
            return tensor

        counter.reads.clear()
        counter.on = True
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = layer(x)
        out.sum().backward()
        counter.on = False
        found[f"reads {tokens_per_rank}"] = list(counter.reads)
        found[f"kept {tokens_per_rank}"] = sum(kept.values())
        found[f"pairs {tokens_per_rank}"] = layer.last_report.tokens
        found[f"report {tokens_per_rank}"] = layer.last_report
    return found


class DataSGD(torch.optim.Optimizer):
    """Plain SGD that writes through ``.data``, as some optimizers do: no version counter of the
    parameter moves."""

    def __init__(self, parameters, lr: float) -> None:
        super().__init__(parameters, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.data.add_(parameter.grad, alpha=-group["lr"])


def _stale(rank: int) -> dict[str, object]:
    """Masters updated through ``.data``, by an optimizer and by hand: is any replica stale in the
    next forward? Each case returns the next forward's copies and its largest difference from the
    block with the updated weights (gathered from every rank)."""
    from ultraep.torch import ExpertParallelMoE

    found: dict[str, object] = {}
    for case in ("optimizer", "by hand, told", "by hand, not told"):
        layer = ExpertParallelMoE(build_block("qwen3_moe"), slots=2, min_replica_tokens=1)
        x = tokens(rank)
        layer(x).sum().backward()
        masters = [layer.experts.gate_up_proj, layer.experts.down_proj]
        if case == "optimizer":
            DataSGD(masters, lr=0.5).step()
        else:
            with torch.no_grad():
                for master in masters:
                    master.data.add_(master.grad, alpha=-0.5)
            if case == "by hand, told":
                layer.masters_updated()
        with torch.no_grad():
            out = layer(x)
            reference = build_block("qwen3_moe")
            for name, master in zip(("gate_up_proj", "down_proj"), masters, strict=True):
                gathered = [torch.empty_like(master) for _ in range(RANKS)]
                dist.all_gather(gathered, master.detach().contiguous())
                getattr(reference.experts, name).copy_(torch.cat(gathered))
            expected = reference(x)
        found[case] = (
            layer.last_report.copies,
            layer.last_report.replicas,
            float((out - expected).abs().max() / expected.abs().max()),
        )
    return found


def _partial(rank: int) -> dict[str, object]:
    """Backwards that begin and never reach the experts (``torch.autograd.grad`` of the router's
    weight only), more of them than the layer has microbatches: each is abandoned when its graph
    is freed, its slots go back, and a full training step afterwards still gives the block's
    gradients."""
    from ultraep.torch import ExpertParallelMoE

    layer = ExpertParallelMoE(
        build_block("qwen3_moe"), slots=2, microbatches=2, min_replica_tokens=1
    )
    for _ in range(3):
        out = layer(tokens(rank))
        torch.autograd.grad((out * probe(rank)).sum(), [layer.gate.weight])
        del out
    found: dict[str, object] = {"after": _train_step(layer, rank)}
    return found


def _frozen(rank: int) -> dict[str, float]:
    """Two blocks in a row, their experts frozen, one slot per rank: the second block's replica
    takes the slot the first block's replica computed with, before the backward needs it again
    for the input gradient. The largest difference of the input gradient from the unwrapped
    blocks', relative."""
    from ultraep.torch import parallelize

    class TwoBlocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = build_block("qwen3_moe")
            self.second = build_block("qwen3_moe")
            with torch.no_grad():
                # Other experts than the first block's: a replica of them overwrites a slot.
                self.second.experts.gate_up_proj.mul_(-1.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.first(x)
            # The constant feature again, so that the second block is as skewed as the first.
            y = torch.cat([torch.ones_like(y[..., :1]), y[..., 1:]], dim=-1)
            return self.second(y)

    model, reference = TwoBlocks(), TwoBlocks()
    for parameter in [*model.parameters(), *reference.parameters()]:
        parameter.requires_grad_(False)
    layers = parallelize(model, slots=1, min_replica_tokens=1)
    x = tokens(rank).requires_grad_()
    (model(x) * probe(rank)).sum().backward()
    everyone = torch.cat([tokens(r) for r in range(RANKS)]).requires_grad_()
    (reference(everyone) * torch.cat([probe(r) for r in range(RANKS)])).sum().backward()
    want = everyone.grad.chunk(RANKS)[rank]
    return {
        "replicas": float(sum(layer.last_report.replicas for layer in layers)),
        "x_grad": float((x.grad - want).abs().max() / want.abs().max()),
        "trainable experts": float(any(p.requires_grad for p in model.parameters())),
    }


def _cold(rank: int) -> dict[str, float]:
    """Every token to experts 0 and 1 (both on rank 0) and no replica allowed: ranks 1 to 3
    compute no row, and still run every collective of the backward. The largest differences from
    the block on every rank's tokens, relative."""
    from ultraep.torch import ExpertParallelMoE

    def block() -> nn.Module:
        moe = build_block("qwen3_moe")
        with torch.no_grad():
            moe.gate.weight[0, 0] = moe.gate.weight[1, 0] = 50.0
        return moe

    layer = ExpertParallelMoE(block(), slots=2, min_replica_tokens=10**6)
    x = tokens(rank).requires_grad_()
    out = layer(x)
    (out * probe(rank)).sum().backward()
    reference = block()
    everyone = torch.cat([tokens(r) for r in range(RANKS)]).requires_grad_()
    expected = reference(everyone)
    (expected * torch.cat([probe(r) for r in range(RANKS)])).sum().backward()

    def error(got: torch.Tensor, want: torch.Tensor) -> float:
        return float((got - want).abs().max() / want.abs().max())

    return {
        "rows": float(layer.last_report.tokens),
        "out": error(out.detach(), expected.detach().chunk(RANKS)[rank]),
        "x_grad": error(x.grad, everyone.grad.chunk(RANKS)[rank]),
    }


def family_tokens(rank: int, salt: int = 0) -> torch.Tensor:
    """Rank `rank`'s hidden states for the family tests (or, with `salt`, a loss direction)."""
    generator = torch.Generator().manual_seed(3000 + 100 * salt + rank)
    return torch.randn(2, 32, HIDDEN, generator=generator)


def _worker(rank: int, family: str, directory: str, scenario: str) -> None:
    import ultraep
    from ultraep.torch import DistributedExperts, ExpertParallelMoE

    torch.set_num_threads(1)
    path = Path(directory)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{path / 'store'}",
        rank=rank,
        world_size=RANKS,
        timeout=timedelta(seconds=30),
    )
    result: dict[str, object] = {}
    try:
        options: dict[str, object] = {}
        if scenario.startswith(("domains", "die")) and scenario.endswith("by-domain"):
            # Two domains of two ranks, planned by domain.
            options = {"domains": [0, 0, 1, 1], "plan_by_domain": True}
        elif scenario.startswith("domains"):
            options = {"domains": [0, 0, 1, 1]}
        if scenario == "partial":
            result["partial"] = _partial(rank)
            torch.save(result, path / f"result-{rank}.pt")
            return
        if scenario == "frozen":
            result["frozen"] = _frozen(rank)
            torch.save(result, path / f"result-{rank}.pt")
            return
        if scenario == "cold":
            result["cold"] = _cold(rank)
            torch.save(result, path / f"result-{rank}.pt")
            return
        if scenario == "stale":
            result["stale"] = _stale(rank)
            torch.save(result, path / f"result-{rank}.pt")
            return
        if scenario == "budget":
            result["budget"] = _budget(rank)
            torch.save(result, path / f"result-{rank}.pt")
            return
        if scenario == "models":
            import model_runs

            result["models"] = model_runs.run_models(rank)
            torch.save(result, path / f"result-{rank}.pt")
            return
        if scenario == "families":
            result["families"] = _family_runs(rank)
            torch.save(result, path / f"result-{rank}.pt")
            return
        layer = ExpertParallelMoE(build_block(family), slots=2, min_replica_tokens=1, **options)
        if scenario == "train" or scenario.startswith("domains"):
            result["runs"] = [_train_step(layer, rank) for _ in range(2)]
        elif scenario in ("adam", "adam-moved"):
            optimizer = torch.optim.Adam(
                [layer.experts.gate_up_proj, layer.experts.down_proj], lr=1e-3
            )
            outputs = [_adam_step(layer, optimizer, rank)]
            if scenario == "adam-moved":
                # A layout that changes two ranks' numbers of experts is refused, and nothing
                # moves: the comparison with the run without moves would show it.
                uneven = layer.homes()
                uneven[0] = (uneven[0] + 1) % RANKS
                try:
                    layer.change_layout(uneven, optimizer)
                    result["refused"] = None
                except ultraep.RefusedError as error:
                    result["refused"] = str(error)
                homes = moved_homes(len(layer.homes()))
                result["moved"] = layer.change_layout(homes, optimizer)
            outputs += [_adam_step(layer, optimizer, rank) for _ in range(2)]
            result["outputs"] = outputs
            result["homes"] = layer.homes()
            result["experts"] = _by_expert(layer, optimizer)
        elif scenario.startswith("die"):
            _train_step(layer, rank)
            if rank == 2:

                def die(*args: object) -> None:
                    os._exit(3)

                if scenario == "die":
                    # Dies in the middle of the next forward: after the load is gathered and
                    # planned, before any token moves.
                    DistributedExperts._dispatch = die  # type: ignore[method-assign]
                else:
                    # Dies before planning by domain: the others fail inside the engine's step,
                    # in the collectives it calls back.
                    DistributedExperts._plan = die  # type: ignore[method-assign]
            started = time.monotonic()
            try:
                _train_step(layer, rank)
                result["error"] = None
            except Exception as error:  # noqa: BLE001 - the test inspects what was raised
                result["error"] = (type(error).__name__, str(error))
            result["seconds"] = time.monotonic() - started
        torch.save(result, path / f"result-{rank}.pt")
    except Exception:
        (path / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        # A lost peer leaves the group unusable, and tearing it down could wait on the dead rank.
        os._exit(0)


def run(family: str, directory: Path, scenario: str, limit: float = 240.0) -> list[dict]:
    """Runs `scenario` on RANKS processes; returns each rank's result (None if it wrote none)."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(rank, family, str(directory), scenario))
        for rank in range(RANKS)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + limit
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
    errors = sorted(directory.glob("error-*.txt"))
    if errors:
        raise AssertionError("\n".join(error.read_text() for error in errors))
    if hung:
        raise AssertionError(f"ranks {hung} still ran after {limit} s")
    results = []
    for rank in range(RANKS):
        file = directory / f"result-{rank}.pt"
        results.append(torch.load(file, weights_only=False) if file.exists() else None)
    return results
