"""The expert-parallel MoE layer: a Hugging Face MoE block whose experts module is replaced by
:class:`~ultraep.torch.experts.DistributedExperts`, balanced by ultraep in every forward; and
:func:`parallelize`, which does it to every MoE block of a model, with one pool of slots."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from .anatomy import ExpertsAnatomy, anatomy_of, top_k_of
from .errors import UnsupportedBlockError
from .experts import DistributedExperts, ForwardReport
from .group import ExpertParallelGroup
from .step import BackwardReport


class ExpertParallelMoE(nn.Module):
    """A Hugging Face MoE block made expert-parallel over ``group``, balanced by ultraep.

    The block keeps running its own forward (its router with its hooks, its shared experts and
    their gates, its scaling); only its experts module is replaced, by this rank's share of the
    experts computing across the group. So the layer gives the block's own outputs, for every
    family whose experts module computes, per token, the routing-weighted sum of one expert's
    function per choice (checked on a probe at construction; see ``docs/pytorch.md`` for the
    families).

    Args:
        block: the MoE block: any module with its experts under ``experts`` (transformers 5).
            Every rank passes the same weights; each keeps its own experts' shard.
        group: the expert-parallel process group (default: the whole world). Expert ``e`` starts
            on rank ``e // (experts / ranks)`` of the group; :meth:`change_layout` moves experts
            between ranks later.
        slots: replica slots per rank.
        microbatches: forwards whose backward may be outstanding at once (pipeline schedules
            keep several in flight); one more is refused with a :class:`ultraep.RefusedError`
            naming this limit.
        min_replica_tokens: the smallest number of tokens a replica may get.
        preset: the hardware whose links the engine plans transfers for.
        domains: the scale-up domain label of every rank of the group (default: one domain).
            Replicas stay inside their master's domain.
        plan_by_domain: plan by domain: each rank sums the counts with an all-reduce, plans its
            own domain and gathers every rank's replicas and a few cells instead of the whole
            load matrix; the same plan. For groups that span domains.

    Every forward is its own microbatch, with its own plan; backwards may come in any order. The
    router and the shared experts stay replicated: reduce their gradients over the group like
    any data-parallel parameter. An optimizer step is noticed (through PyTorch's optimizer
    hooks and the parameters' version counters); a change of the masters by other means needs
    :meth:`masters_updated` on every rank.

    Raises:
        ValueError: if the group does not fit (experts not divisible among the ranks, an
            unsupported dtype).
        UnsupportedBlockError: if the block's experts are not ones ultraep can compute exactly
            (the message names the family and why).
        PeerLostError: from any forward or backward in which the group fails.
    """

    def __init__(
        self,
        block: nn.Module,
        group: dist.ProcessGroup | None = None,
        *,
        slots: int = 2,
        microbatches: int = 4,
        min_replica_tokens: int = 1,
        preset: str = "hgx-h100",
        domains: Sequence[int] | None = None,
        plan_by_domain: bool = False,
    ) -> None:
        super().__init__()
        anatomy = _anatomy_of_block(block)
        shared = _group_for(
            group,
            [(block, anatomy)],
            slots=slots,
            microbatches=microbatches,
            min_replica_tokens=min_replica_tokens,
            preset=preset,
            domains=domains,
        )
        _distribute(block, anatomy, shared, 0, group, plan_by_domain)
        self.block = block

    @property
    def experts(self) -> DistributedExperts:
        """This rank's share of the experts."""
        return self.block.experts

    @property
    def gate(self) -> nn.Module:
        """The block's router."""
        router = getattr(self.block, "gate", None)
        return router if router is not None else self.block.router

    @property
    def engine(self):
        return self.experts.engine

    @property
    def layer_index(self) -> int:
        return self.experts.layer_index

    @property
    def last_report(self) -> ForwardReport | None:
        """What the last forward did."""
        return self.experts.last_report

    @property
    def last_backward(self) -> BackwardReport | None:
        """What the last backward did for its replicas."""
        return self.experts._group.last_backward[self.experts.layer_index]

    def masters_updated(self) -> None:
        """See :meth:`DistributedExperts.masters_updated`."""
        self.experts.masters_updated()

    def homes(self) -> list[int]:
        """The home rank of every expert, in the layout in force."""
        return self.experts.homes()

    def change_layout(
        self, homes: Sequence[int], optimizer: torch.optim.Optimizer | None = None
    ) -> int:
        """See :meth:`DistributedExperts.change_layout`."""
        return self.experts.change_layout(homes, optimizer)

    def forward(self, *args: object, **kwargs: object):
        return self.block(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """What the last forward and backward of every parallelized layer did, and the pool."""

    layers: list[ForwardReport | None]
    """The last forward of every layer, in layer order."""
    backwards: list[BackwardReport | None]
    """The last backward of every layer, in layer order."""
    pool_bytes: int
    """Bytes of this rank's slot pool (one for all layers)."""

    @property
    def restored_bytes(self) -> int:
        """Bytes this rank received in the last backwards to bring replicas back that later
        layers had taken (0 when the pool kept every replica)."""
        return sum(report.restored_bytes for report in self.backwards if report is not None)


def parallelize(
    model: nn.Module,
    group: dist.ProcessGroup | None = None,
    *,
    slots: int = 2,
    microbatches: int = 4,
    min_replica_tokens: int = 1,
    preset: str = "hgx-h100",
    domains: Sequence[int] | None = None,
    plan_by_domain: bool = False,
) -> list[DistributedExperts]:
    """Makes every MoE block of ``model`` expert-parallel over ``group``, in place.

    Every module with an ``experts`` child (a transformers 5 MoE block, or a decoder layer that
    holds its experts itself) gets a :class:`DistributedExperts` in its place: this rank keeps
    its shard of every layer's experts, and all layers share one engine and one pool of
    ``slots`` replica slots per rank. In training, a layer whose replicas later layers took
    gets them back before its backward (the report counts the bytes); a layer whose replicas the
    pool kept moves nothing. The other arguments are :class:`ExpertParallelMoE`'s.

    Returns the layers' experts modules, in model order; :func:`model_report` summarises them.

    Raises:
        UnsupportedBlockError: naming the first block that cannot be parallelized and why (then
            nothing was changed), or if the model has no MoE block.
    """
    blocks = []
    for name, module in model.named_modules():
        experts = getattr(module, "experts", None)
        if isinstance(experts, nn.Module) and not isinstance(experts, DistributedExperts):
            try:
                blocks.append((module, _anatomy_of_block(module)))
            except UnsupportedBlockError as error:
                raise UnsupportedBlockError(f"{name}: {error}") from error
    if not blocks:
        raise UnsupportedBlockError(f"{type(model).__name__}: no module with experts found")
    kinds = {
        (
            anatomy.num_experts,
            tuple(anatomy.shapes(block.experts).items()),
            getattr(block.experts, anatomy.stacked[0]).dtype,
            getattr(block.experts, anatomy.stacked[0]).device,
        )
        for block, anatomy in blocks
    }
    if len(kinds) > 1:
        raise UnsupportedBlockError(
            f"{type(model).__name__}: MoE layers of different expert counts, shapes, dtypes or "
            "devices share no slot pool"
        )
    shared = _group_for(
        group,
        blocks,
        slots=slots,
        microbatches=microbatches,
        min_replica_tokens=min_replica_tokens,
        preset=preset,
        domains=domains,
    )
    return [
        _distribute(block, anatomy, shared, layer, group, plan_by_domain)
        for layer, (block, anatomy) in enumerate(blocks)
    ]


def model_report(layers: list[DistributedExperts]) -> ModelReport:
    """The last forward and backward of every layer that :func:`parallelize` returned."""
    shared = layers[0]._group
    return ModelReport(
        layers=[experts.last_report for experts in layers],
        backwards=[shared.last_backward[experts.layer_index] for experts in layers],
        pool_bytes=shared.pool.bytes,
    )


def _anatomy_of_block(block: nn.Module) -> ExpertsAnatomy:
    experts = getattr(block, "experts", None)
    family = type(block).__name__
    if not isinstance(experts, nn.Module):
        raise UnsupportedBlockError(f"{family}: no experts module under `experts`")
    hidden = getattr(getattr(block, "config", None), "hidden_size", None)
    return anatomy_of(experts, family, hidden if isinstance(hidden, int) else None)


def _group_for(
    group: dist.ProcessGroup | None,
    blocks: list[tuple[nn.Module, ExpertsAnatomy]],
    **options: object,
) -> ExpertParallelGroup:
    block, anatomy = blocks[0]
    experts = block.experts
    first = getattr(experts, anatomy.stacked[0])
    top_k = top_k_of(block)
    if top_k is None:
        raise UnsupportedBlockError(f"{anatomy.family}: cannot tell how many experts a token picks")
    return ExpertParallelGroup(
        group,
        layers=len(blocks),
        num_experts=anatomy.num_experts,
        top_k=top_k,
        shapes=anatomy.shapes(experts),
        gated=anatomy.gated,
        dtype=first.dtype,
        device=first.device,
        **options,  # type: ignore[arg-type]
    )


def _distribute(
    block: nn.Module,
    anatomy: ExpertsAnatomy,
    shared: ExpertParallelGroup,
    layer: int,
    group: dist.ProcessGroup | None,
    plan_by_domain: bool,
) -> DistributedExperts:
    experts = DistributedExperts(block.experts, anatomy, shared, layer, group, plan_by_domain)
    block.experts = experts
    return experts
