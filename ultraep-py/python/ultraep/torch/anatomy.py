"""What the layer needs to know of a block's experts module, read and checked at construction.

ultraep replaces a MoE block's *experts module* and nothing else: the block's own forward still
runs its router (with its hooks, biases, groups and scaling), its shared experts and their gates,
and whatever it does around the experts. It calls the experts as transformers 5 does,
``experts(hidden_states, top_k_index, top_k_weights)``, and ultraep returns exactly what the
experts module would have, computed across the group.

For that, the experts' output must be, per token, the sum over its k choices of the routing
weight times one expert's function of the token, added as transformers' implementations add them.
Each stacked parameter must have the experts as its first dimension. The expert function has two
forms. The *gated* form (``gate_up_proj`` ``[experts, 2 * width, hidden]`` split in two halves,
``act_fn(gate) * up``, ``down_proj`` ``[experts, hidden, width]``, no bias) is computed here, one
matrix product pair per instance on its contiguous rows, with no host synchronisation. Any other
stacked layout runs the block's own experts module on the instance's weights (views, never
copies): exact by construction, with whatever host synchronisation that module does. Both are
checked against the experts module itself on a probe at construction: a module whose output does
not decompose so, or whose probe differs in any bit, is refused, by name.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from .errors import UnsupportedBlockError

# Where transformers' configs and routers keep the number of experts a token picks.
_TOP_K_NAMES = (
    "top_k",
    "num_experts_per_tok",
    "num_experts_per_token",
    "moe_topk",
    "moe_k",
    "top_k_experts",
    "moe_top_k",
)


@dataclasses.dataclass(frozen=True)
class ExpertsAnatomy:
    """The parts of one experts module."""

    family: str
    """The experts module's class name."""
    num_experts: int
    stacked: tuple[str, ...]
    """The per-expert parameters (first dimension: the experts), in the order an expert's state
    lists them."""
    gated: bool
    """Whether the experts are the gated form computed here."""
    implementation: str | None
    """transformers' ``_experts_implementation`` (``None`` or ``"eager"``: the per-expert loop)."""

    def shapes(self, experts: nn.Module) -> dict[str, tuple[int, ...]]:
        """Every stacked parameter's shape for one expert, in state order."""
        return {name: tuple(getattr(experts, name).shape[1:]) for name in self.stacked}


def gated_expert(
    rows: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module
) -> torch.Tensor:
    """One gated expert on ``rows`` (weight 1): the operations of transformers' eager loop."""
    gate, up = nn.functional.linear(rows, gate_up).chunk(2, dim=-1)
    return nn.functional.linear(act_fn(gate) * up, down)


def weightless(experts: nn.Module, count: int, *, eager: bool = False) -> nn.Module:
    """A copy of ``experts`` that holds no parameters and counts ``count`` experts: the block's own
    expert math, to be called with weights set as plain attributes; with ``eager``, in
    transformers' per-expert loop whatever implementation the block's config picks (the copy
    gets its own config)."""
    math = copy.copy(experts)
    math.__dict__["_parameters"] = {}
    math.__dict__["_buffers"] = dict(experts._buffers)
    math.__dict__["_modules"] = dict(experts._modules)
    math.num_experts = count
    config = getattr(experts, "config", None)
    if eager and config is not None:
        math.config = copy.copy(config)
        math.config._experts_implementation = "eager"
    return math


def on_weights(
    math: nn.Module,
    stacked: tuple[str, ...],
    weights: list[torch.Tensor],
    rows: torch.Tensor,
    index: torch.Tensor,
) -> torch.Tensor:
    """The experts module's own math (``math``, from :func:`weightless`) on ``rows``, row ``i``
    through expert ``index[i]`` of ``weights`` with routing weight 1."""
    math.num_experts = weights[0].shape[0]
    for name, tensor in zip(stacked, weights, strict=True):
        math.__dict__[name] = tensor
    try:
        ones = torch.ones((len(rows), 1), dtype=rows.dtype, device=rows.device)
        return math(rows, index.unsqueeze(1), ones)
    finally:
        for name in stacked:
            del math.__dict__[name]


def combine(
    per_pair: torch.Tensor,
    weights: torch.Tensor,
    selected: torch.Tensor,
    dtype: torch.dtype,
    implementation: str | None,
) -> torch.Tensor:
    """Each token's expert outputs (``[tokens, k, hidden]``, in the router's order, weight 1),
    weighted and summed as transformers' implementation ``implementation`` sums them."""
    weighted = per_pair * weights.unsqueeze(-1)
    if implementation not in (None, "eager"):
        # The batched implementations add a token's k weighted outputs in one sum.
        return weighted.sum(dim=1).to(dtype)
    # The eager loop adds each expert's weighted output into a zeroed output, expert by expert
    # in ascending order.
    weighted = weighted.to(dtype)
    by_expert = torch.argsort(selected, dim=1, stable=True)
    weighted = weighted.gather(1, by_expert.unsqueeze(-1).expand_as(weighted))
    out = torch.zeros(weighted.shape[0], weighted.shape[2], dtype=dtype, device=weighted.device)
    for position in range(weighted.shape[1]):
        out = out + weighted[:, position]
    return out


def _stacked_names(experts: nn.Module, count: int) -> tuple[str, ...]:
    return tuple(
        name
        for name, parameter in experts.named_parameters(recurse=False)
        if parameter.dim() >= 1 and parameter.shape[0] == count
    )


def _is_gated(experts: nn.Module, stacked: tuple[str, ...]) -> bool:
    if stacked != ("gate_up_proj", "down_proj") or not hasattr(experts, "act_fn"):
        return False
    # A class of its own gating (a clamped or soft-capped SwiGLU) is not the plain form, even
    # where a probe's values stay below its limits.
    apply_gate = getattr(type(experts), "_apply_gate", None)
    if apply_gate is not None and apply_gate.__name__ != "_default_apply_gate":
        return False
    count, double_width, hidden = experts.gate_up_proj.shape
    return tuple(experts.down_proj.shape) == (count, hidden, double_width // 2)


def top_k_of(block: nn.Module) -> int | None:
    """The number of experts a token picks, as the block's router or config says."""
    for owner in (
        getattr(block, "gate", None),
        getattr(block, "router", None),
        block,
        getattr(block, "config", None),
        getattr(getattr(block, "experts", None), "config", None),
    ):
        for name in _TOP_K_NAMES:
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def anatomy_of(experts: nn.Module, family: str, hidden: int | None = None) -> ExpertsAnatomy:
    """Reads ``experts`` (the experts module of a block of class ``family``, which takes rows of
    ``hidden`` values when the experts do not say) and checks, on probes, that ultraep computes
    exactly what it does.

    Raises:
        UnsupportedBlockError: naming the family and what does not fit.
    """
    if isinstance(experts, (nn.ModuleList, nn.ModuleDict)):
        raise UnsupportedBlockError(
            f"{family}: experts kept as separate modules, not stacked weights"
        )
    count = getattr(experts, "num_experts", None)
    if not isinstance(count, int) or count < 1:
        raise UnsupportedBlockError(f"{family}: the experts module does not say num_experts")
    stacked = _stacked_names(experts, count)
    others = [name for name, _ in experts.named_parameters(recurse=False) if name not in stacked]
    if not stacked or others:
        raise UnsupportedBlockError(
            f"{family}: expert parameters not all stacked by expert (first dimension "
            f"{count}): {others or 'none stacked'}"
        )
    if any(True for _ in experts.children() if any(True for _ in _.parameters())):
        raise UnsupportedBlockError(f"{family}: the experts module has submodules with weights")
    implementation = getattr(getattr(experts, "config", None), "_experts_implementation", None)
    anatomy = ExpertsAnatomy(
        family=family,
        num_experts=count,
        stacked=stacked,
        gated=_is_gated(experts, stacked),
        implementation=implementation,
    )
    if anatomy.gated and _probe(experts, anatomy, hidden) is not None:
        anatomy = dataclasses.replace(anatomy, gated=False)
    problem = _probe(experts, anatomy, hidden)
    if problem is not None:
        raise UnsupportedBlockError(f"{family}: {problem}")
    return anatomy


def _probe(experts: nn.Module, anatomy: ExpertsAnatomy, hidden: int | None) -> str | None:
    """Runs the experts module and ultraep's decomposition of it on random rows at three scales
    (the largest drive clamps and soft caps past their limits), on the weights' device; returns
    what differs, or ``None`` when every bit agrees."""
    first = getattr(experts, anatomy.stacked[0])
    device, dtype = first.device, first.dtype
    hidden = _hidden_size(experts, anatomy) or hidden
    if hidden is None:
        return "cannot tell the hidden size from the experts or the block's config"
    count = anatomy.num_experts
    top_k = min(2, count)
    generator = torch.Generator(device="cpu").manual_seed(0)
    scales = torch.tensor([1.0] * 2 + [64.0] * 2 + [4096.0] * 2).unsqueeze(1)
    rows = (torch.randn(6, hidden, generator=generator) * scales).to(device, dtype)
    index = torch.stack([torch.randperm(count, generator=generator)[:top_k] for _ in range(6)]).to(
        device
    )
    weights = torch.rand(6, top_k, generator=generator).to(device, dtype)
    weights_list = [getattr(experts, name).detach() for name in anatomy.stacked]
    math = weightless(experts, count)
    try:
        with torch.no_grad():
            theirs = experts(rows, index, weights)
            per_pair = torch.empty(6, top_k, theirs.shape[-1], dtype=theirs.dtype, device=device)
            for expert in range(count):
                token, position = (index == expert).nonzero(as_tuple=True)
                if len(token) == 0:
                    continue
                if anatomy.gated:
                    out = gated_expert(
                        rows[token], weights_list[0][expert], weights_list[1][expert], math.act_fn
                    )
                else:
                    single = [weight[expert : expert + 1] for weight in weights_list]
                    out = on_weights(
                        math, anatomy.stacked, single, rows[token], torch.zeros_like(token)
                    )
                per_pair[token, position] = out.to(per_pair.dtype)
            ours = combine(per_pair, weights, index, theirs.dtype, anatomy.implementation)
    except (TypeError, ValueError, RuntimeError, IndexError) as error:
        return (
            "the experts module is not called as experts(hidden_states, top_k_index, "
            f"top_k_weights) with stacked weights ({type(error).__name__}: {error})"
        )
    if theirs.shape != ours.shape:
        return f"the experts return {tuple(theirs.shape)}, not one row per token"
    if torch.equal(theirs, ours):
        return None
    if anatomy.implementation not in (None, "eager"):
        # A batched kernel (grouped_mm on a GPU) adds each product in its own order: the same
        # math as one matrix product per expert, within a few units in the last place.
        epsilon = torch.finfo(theirs.dtype).eps
        scale = float(theirs.abs().max())
        if float((theirs - ours).abs().max()) <= 8 * epsilon * scale:
            return None
    return (
        "its output is not the routing-weighted sum of one expert's function per choice "
        f"(largest difference on a probe: {float((theirs - ours).abs().max()):.3g})"
    )


def _hidden_size(experts: nn.Module, anatomy: ExpertsAnatomy) -> int | None:
    """The width of the rows the experts take: from the config, else the gated shape."""
    config = getattr(experts, "config", None)
    for name in ("hidden_size", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    for name in ("hidden_dim", "hidden_size"):
        value = getattr(experts, name, None)
        if isinstance(value, int):
            return value
    if anatomy.gated:
        return int(experts.gate_up_proj.shape[2])
    return None
