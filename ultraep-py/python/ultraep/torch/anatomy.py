"""What the layer needs to know of a MoE block: where its router, experts and shared experts are,
how the router's output reads, and how one expert computes. One :class:`BlockAnatomy` per block,
read at construction; a block the layer cannot run exactly is refused there, by name.

The expert math has two forms. The *gated* form (``gate_up_proj`` ``[experts, 2 * width,
hidden]`` split in two halves, ``act_fn(gate) * up``, ``down_proj`` ``[experts, hidden, width]``,
no bias) is computed here, one matrix product pair per instance on its contiguous rows, with no
host synchronisation; it is checked against the block's own experts on a probe at construction,
bit for bit. Any other stacked layout runs the block's own experts module on the instance's
weights (views, never copies): exact by construction, with whatever host synchronisation that
module does.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .errors import UnsupportedBlockError


@dataclasses.dataclass(frozen=True)
class Routing:
    """The router's decision for a batch of tokens."""

    weights: torch.Tensor
    """``[tokens, k]``: the weight of each chosen expert in the token's output."""
    selected: torch.Tensor
    """``[tokens, k]``: the chosen experts' ids."""
    logits: torch.Tensor | None
    """The router's logits, when the block returns them (for an auxiliary loss)."""


@dataclasses.dataclass(frozen=True)
class BlockAnatomy:
    """Where the parts of one MoE block are, and how they are called."""

    family: str
    """The block's class name."""
    router: nn.Module
    route: Callable[[torch.Tensor], Routing]
    """The router on ``[tokens, hidden]`` inputs."""
    experts: nn.Module
    stacked: tuple[str, ...]
    """The experts' per-expert parameters (first dimension: the experts), in the order an expert's
    state lists them."""
    num_experts: int
    top_k: int
    gated: bool
    """Whether the experts are the gated form computed here (see the module's documentation)."""
    shared: Callable[[torch.Tensor], torch.Tensor] | None
    """What the block adds to every token besides the routed experts (shared experts), on the
    ``[tokens, hidden]`` input."""
    shared_modules: tuple[nn.Module, ...]
    """The modules ``shared`` calls (kept on every rank, like the router)."""
    returns_logits: bool
    """Whether the block returns ``(hidden_states, router_logits)`` rather than hidden states."""


def _standard_route(router: nn.Module) -> Callable[[torch.Tensor], Routing]:
    def route(x: torch.Tensor) -> Routing:
        logits, weights, selected = router(x)
        return Routing(weights, selected, logits)

    return route


def _stacked_names(experts: nn.Module, count: int) -> tuple[str, ...]:
    return tuple(
        name
        for name, parameter in experts.named_parameters(recurse=False)
        if parameter.dim() >= 1 and parameter.shape[0] == count
    )


def _is_gated(experts: nn.Module, stacked: tuple[str, ...]) -> bool:
    if stacked != ("gate_up_proj", "down_proj") or not hasattr(experts, "act_fn"):
        return False
    count, double_width, hidden = experts.gate_up_proj.shape
    return tuple(experts.down_proj.shape) == (count, hidden, double_width // 2)


def gated_expert(
    rows: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module
) -> torch.Tensor:
    """One gated expert on ``rows`` (weight 1): the operations of transformers' eager loop."""
    gate, up = nn.functional.linear(rows, gate_up).chunk(2, dim=-1)
    return nn.functional.linear(act_fn(gate) * up, down)


def weightless(experts: nn.Module, count: int) -> nn.Module:
    """A copy of ``experts`` that holds no parameters and counts ``count`` experts: the block's own
    expert math, to be called with weights set as plain attributes."""
    math = copy.copy(experts)
    math.__dict__["_parameters"] = {}
    math.__dict__["_buffers"] = dict(experts._buffers)
    math.__dict__["_modules"] = dict(experts._modules)
    math.num_experts = count
    return math


def _check_gated_matches(anatomy: BlockAnatomy) -> bool:
    """Whether the gated form computes exactly what the block's experts module computes, on a
    probe of a few rows through two experts (on the weights' device, at construction)."""
    experts = anatomy.experts
    gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    generator = torch.Generator(device="cpu").manual_seed(0)
    rows = torch.randn(6, gate_up.shape[2], generator=generator).to(gate_up.device, gate_up.dtype)
    index = torch.tensor([[0], [1], [0], [1], [1], [0]], device=gate_up.device)
    ones = torch.ones((6, 1), dtype=rows.dtype, device=rows.device)
    with torch.no_grad():
        theirs = experts(rows, index, ones)
        ours = torch.empty_like(theirs)
        for expert in (0, 1):
            chosen = (index[:, 0] == expert).nonzero()[:, 0]
            ours[chosen] = gated_expert(rows[chosen], gate_up[expert], down[expert], experts.act_fn)
    return bool(torch.equal(theirs, ours))


def anatomy_of(block: nn.Module) -> BlockAnatomy:
    """Reads ``block``'s parts.

    Raises:
        UnsupportedBlockError: if the block is not a MoE block of a supported layout; the message
            names the family and what does not fit.
    """
    family = type(block).__name__
    experts = getattr(block, "experts", None)
    router = getattr(block, "gate", None)
    if experts is None or router is None:
        raise UnsupportedBlockError(
            f"{family}: no routed experts under `experts` with a router under `gate`"
        )
    if isinstance(experts, nn.ModuleList):
        raise UnsupportedBlockError(
            f"{family}: experts kept as a list of modules; ultraep needs stacked expert weights"
        )
    count = getattr(experts, "num_experts", None)
    top_k = getattr(router, "top_k", None)
    if not isinstance(count, int) or not isinstance(top_k, int):
        raise UnsupportedBlockError(
            f"{family}: the experts do not say num_experts, or the router its top_k"
        )
    stacked = _stacked_names(experts, count)
    if not stacked:
        raise UnsupportedBlockError(f"{family}: no stacked expert parameters")
    if getattr(block, "jitter_noise", 0):
        raise UnsupportedBlockError(
            f"{family}: router jitter noise draws per token; set router_jitter_noise=0"
        )
    shared_module = getattr(block, "shared_experts", None)
    shared = None
    shared_modules: tuple[nn.Module, ...] = ()
    if shared_module is not None:
        shared = shared_module
        shared_modules = (shared_module,)
    anatomy = BlockAnatomy(
        family=family,
        router=router,
        route=_standard_route(router),
        experts=experts,
        stacked=stacked,
        num_experts=count,
        top_k=top_k,
        gated=_is_gated(experts, stacked),
        shared=shared,
        shared_modules=shared_modules,
        returns_logits=False,
    )
    if anatomy.gated and not _check_gated_matches(anatomy):
        anatomy = dataclasses.replace(anatomy, gated=False)
    return anatomy
