"""The expert-parallel MoE layer: a Hugging Face MoE block's router and expert math, its experts
sharded over a process group, balanced by ultraep in every forward, on the input's device."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .anatomy import BlockAnatomy, anatomy_of, gated_expert, weightless
from .collective import GroupCollective
from .dispatch import Dispatch, build, counts_by_source, local_indices, reroute, send_order
from .errors import RefusedError, group_operation
from .exchange import TokenRoute
from .group import ExpertParallelGroup
from .step import LayerBoundary, ReplicaWeights, Step, saved_slot_hooks


@dataclasses.dataclass(frozen=True)
class ForwardReport:
    """What one forward did. The plan's figures are the group's (every rank has the same); the
    token and byte counts are this rank's."""

    microbatch: int
    """The forward's microbatch number in its layer (each forward is one)."""
    initial_imbalance: float
    """max/mean of the ranks' tokens with every token at its expert's master."""
    imbalance: float
    """max/mean of the ranks' tokens under the plan."""
    replicas: int
    """Replicas in the plan."""
    copies: int
    """Replica slots the group filled for this forward (a slot that already held the expert's
    current weights is not copied again)."""
    bytes_moved: int
    """Bytes of expert weights the group moved for this forward."""
    bytes_received: int
    """Bytes of expert weights this rank received."""
    tokens: int
    """Token-expert pairs this rank computed."""
    replica_tokens: int
    """Of those, the pairs computed on this rank's replicas."""
    seconds: dict[str, float]
    """Host wall-clock seconds of each phase of this rank's forward: ``router``, ``gather`` (the
    load's all-gather), ``plan`` (the engine's step), ``weights`` (the transfer program),
    ``reroute``, ``dispatch``, ``experts``, ``combine``. On a GPU, kernels run asynchronously:
    these are launch times unless the caller synchronises."""


class _PhaseClock:
    """Host seconds spent in each phase of a forward, lap by lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


class ExpertParallelMoE(nn.Module):
    """A Hugging Face MoE block made expert-parallel over ``group``, balanced by ultraep.

    Args:
        block: the MoE block (transformers 5: Qwen3-MoE, Mixtral, DeepSeek-V3 and the families in
            ``docs/pytorch.md``). Every rank passes the same weights; each keeps its own experts'
            shard, the router and the shared experts. A block the layer cannot run exactly is
            refused with :class:`UnsupportedBlockError`, naming what does not fit.
        group: the expert-parallel process group (default: the whole world). Expert ``e`` starts
            on rank ``e // (experts / ranks)`` of the group; :meth:`change_layout` moves experts
            between ranks later.
        slots: replica slots per rank (one pool, shared by every layer of a
            :func:`~ultraep.torch.parallelize`\\ d model).
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

    Every forward is its own microbatch, with its own plan; backwards may come in any order.
    The router and the shared experts are replicated: reduce their gradients over the group like
    any data-parallel parameter. An optimizer step is noticed (through PyTorch's optimizer hooks
    and the parameters' version counters); a change of the masters by other means needs
    :meth:`masters_updated` on every rank.

    Raises:
        ValueError: if the group does not fit (experts not divisible among the ranks, an
            unsupported dtype).
        UnsupportedBlockError: if the block is not one the layer can run exactly.
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
        _shared: tuple[ExpertParallelGroup, int] | None = None,
    ) -> None:
        super().__init__()
        anatomy = anatomy_of(block)
        self.family = anatomy.family
        if _shared is None:
            shared = ExpertParallelGroup(
                group,
                layers=1,
                num_experts=anatomy.num_experts,
                top_k=anatomy.top_k,
                shapes=expert_shapes(anatomy),
                gated=anatomy.gated,
                dtype=getattr(anatomy.experts, anatomy.stacked[0]).dtype,
                device=getattr(anatomy.experts, anatomy.stacked[0]).device,
                slots=slots,
                microbatches=microbatches,
                min_replica_tokens=min_replica_tokens,
                preset=preset,
                domains=domains,
            )
            layer = 0
        else:
            shared, layer = _shared
        self._group = shared
        self.layer_index = layer
        self.group = group
        self.rank = shared.rank
        self.ranks = shared.ranks
        self.experts_per_rank = shared.masters
        self._anatomy = anatomy
        self.gate = anatomy.router
        for index, module in enumerate(anatomy.shared_modules):
            self.add_module(f"shared_{index}", module)
        # This rank's shard of every stacked expert parameter, under the block's own names.
        local = slice(self.rank * self.experts_per_rank, (self.rank + 1) * self.experts_per_rank)
        self.experts = weightless(anatomy.experts, self.experts_per_rank)
        for name in anatomy.stacked:
            shard = getattr(anatomy.experts, name).detach()[local].clone()
            self.experts.register_parameter(name, nn.Parameter(shard))
        self._math = weightless(anatomy.experts, 0)
        self._master_row = shared.master_rows(layer)
        self._versions = self._master_versions()
        self._by_domain = (
            GroupCollective(group, self._masters()[0].device) if plan_by_domain else None
        )
        self.last_report: ForwardReport | None = None

    @property
    def engine(self):
        """The engine this layer plans with (shared by every layer of a parallelized model)."""
        return self._group.engine

    @property
    def last_backward(self):
        """What the last backward of this layer did for its replicas (a
        :class:`~ultraep.torch.BackwardReport`), or ``None``."""
        return self._group.last_backward[self.layer_index]

    def _masters(self) -> list[torch.Tensor]:
        return [getattr(self.experts, name) for name in self._anatomy.stacked]

    def _master_versions(self) -> tuple[tuple[int, int], ...]:
        # Every in-place change of a parameter (an optimizer step) bumps its version counter;
        # `.data` assignment changes its storage.
        return tuple((p._version, p.data_ptr()) for p in self._masters())

    def masters_updated(self) -> None:
        """Says the masters changed other than in place (through ``.data``, say); every rank
        calls it. (An optimizer step, and any in-place change, are noticed by themselves.)"""
        self._group.settle()
        self.engine.masters_updated()
        self._group.optimizer_stepped = False
        self._versions = self._master_versions()

    def homes(self) -> list[int]:
        """The home rank of every expert, in the layout in force."""
        return [int(home) for home in self.engine.homes(self.layer_index)]

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object):
        clock = _PhaseClock()
        anatomy = self._anatomy
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        routing = anatomy.route(x)
        selected = routing.selected
        tokens, top_k = selected.shape
        ids = selected.reshape(-1).to(torch.int64)
        counts = torch.bincount(ids, minlength=anatomy.num_experts)
        if counts.shape[0] != anatomy.num_experts:
            raise ValueError(
                f"the router chose expert ids beyond the block's {anatomy.num_experts} experts"
            )
        clock.lap("router")

        group = self._group
        if group.optimizer_stepped or self._master_versions() != self._versions:
            self.masters_updated()
        microbatch = group.next_microbatch(self.layer_index)
        figures = self._plan(microbatch, counts, clock)
        dispatch = self._dispatch(microbatch)
        step = Step(
            group,
            self.layer_index,
            microbatch,
            dispatch,
            group.replica_slots(microbatch, self.layer_index),
            self._master_row,
            self._masters(),
        )
        masters = self._masters()
        training = torch.is_grad_enabled() and any(m.requires_grad for m in masters)
        received = 0
        if figures["copies"] > 0:
            received = group.pool.run(self.engine.transfer_program(), masters, self._master_row)
        if training:
            *slot_weights, link = ReplicaWeights.apply(step, *masters)
        else:
            slot_weights = group.pool.views()
        clock.lap("weights")

        instance = reroute(ids, dispatch)
        order = send_order(instance, dispatch)
        clock.lap("reroute")
        route = TokenRoute(dispatch.sends, dispatch.receives, self.group, self.rank)
        received_rows = route.exchange(x.index_select(0, order // top_k))
        grouped = received_rows.index_select(0, dispatch.gather)
        clock.lap("dispatch")
        if training:
            with saved_slot_hooks(step):
                computed = self._expert_math(grouped, dispatch, masters, slot_weights)
        else:
            computed = self._expert_math(grouped, dispatch, masters, slot_weights)
        clock.lap("experts")
        back = torch.empty_like(computed).index_copy(0, dispatch.gather, computed)
        returned = route.reversed().exchange(back)
        per_pair = torch.empty_like(returned).index_copy(0, order, returned)
        out = self._combine(per_pair.view(tokens, top_k, -1), routing.weights, selected, x)
        if training:
            out = LayerBoundary.apply(out, link, step)
        else:
            step.end_without_backward()
        if anatomy.shared is not None:
            out = out + anatomy.shared(x)
        out = out.reshape(shape)
        clock.lap("combine")

        masters_count = self.experts_per_rank
        self.last_report = ForwardReport(
            microbatch=microbatch,
            initial_imbalance=figures["initial_imbalance"],
            imbalance=figures["imbalance"],
            replicas=int(figures["replicas"]),
            copies=int(figures["copies"]),
            bytes_moved=int(figures["bytes_moved"]),
            bytes_received=received,
            tokens=dispatch.tokens,
            replica_tokens=sum(dispatch.segments[masters_count:]),
            seconds=clock.seconds,
        )
        if anatomy.returns_logits:
            return out, routing.logits
        return out

    def _plan(self, microbatch: int, counts: torch.Tensor, clock: _PhaseClock) -> dict:
        """Gathers the load and plans it: the one read of device values on the host."""
        engine, layer = self.engine, self.layer_index
        try:
            if self._by_domain is not None:
                host_counts = counts.to("cpu", torch.int64).numpy().astype(np.uint32)
                clock.lap("gather")
                # The collectives run inside the plan, between its phases.
                figures = engine.step_by_domain_from_counts(
                    microbatch, layer, host_counts, self._by_domain
                )
            else:
                digest = engine.digest
                words = torch.tensor([digest & 0xFFFF_FFFF, digest >> 32], dtype=torch.int64).to(
                    torch.int32
                )
                row = torch.cat([counts.to(torch.int32), words.to(counts.device)])
                gathered = torch.empty(self.ranks * len(row), dtype=torch.int32, device=row.device)
                with group_operation(self.rank, "gathering the load (all_gather_into_tensor)"):
                    dist.all_gather_into_tensor(gathered, row, group=self.group)
                host = gathered.cpu().numpy().view(np.uint32)
                clock.lap("gather")
                figures = engine.step(microbatch, layer, host)
        except RefusedError as error:
            if "in flight" in str(error).lower() or "busy" in str(error).lower():
                raise RefusedError(
                    f"ultraep: layer {layer}: more microbatches in flight than the "
                    f"{self._group.microbatches} this layer was built for (microbatches=): "
                    f"{error}"
                ) from error
            raise
        clock.lap("plan")
        return figures

    def _dispatch(self, microbatch: int) -> Dispatch:
        """This rank's routing under the step's plan."""
        engine, layer = self.engine, self.layer_index
        instances = engine.instances(microbatch, layer)
        row, columns = engine.split(microbatch, layer)
        width = self.experts_per_rank + self._group.slots
        local_of = local_indices(instances, self._master_row, self.experts_per_rank)
        if columns is not None:
            by_source = counts_by_source(columns, local_of, self.ranks, width)
        else:
            by_source = self._exchange_counts(instances, row, local_of, width)
        return build(
            instances,
            row,
            by_source,
            self._master_row,
            self.experts_per_rank,
            self.ranks,
            self._masters()[0].device,
        )

    def _exchange_counts(
        self, instances: np.ndarray, row: np.ndarray, local_of: np.ndarray, width: int
    ) -> np.ndarray:
        """For a step planned by domain, whose plan holds only this rank's row: every rank tells
        every other how many rows it sends each of its instances (ranks x width counts)."""
        mine = np.zeros((self.ranks, width), dtype=np.int64)
        np.add.at(mine, (instances[row[:, 2], 1], local_of[row[:, 2]]), row[:, 3])
        device = self._masters()[0].device
        theirs = torch.empty((self.ranks, width), dtype=torch.int64, device=device)
        with group_operation(self.rank, "exchanging token counts (all_to_all_single)"):
            dist.all_to_all_single(theirs, torch.from_numpy(mine).to(device), group=self.group)
        return theirs.cpu().numpy()

    def _expert_math(
        self,
        rows: torch.Tensor,
        dispatch: Dispatch,
        masters: list[torch.Tensor],
        slot_weights: list[torch.Tensor],
    ) -> torch.Tensor:
        """The block's expert forward on ``rows`` (grouped by local instance, weight 1)."""
        count = self.experts_per_rank
        if self._anatomy.gated:
            act_fn = self._anatomy.experts.act_fn
            outputs, start = [], 0
            for index, size in enumerate(dispatch.segments):
                if size == 0:
                    continue
                if index < count:
                    gate_up, down = masters[0][index], masters[1][index]
                else:
                    gate_up, down = slot_weights[0][index - count], slot_weights[1][index - count]
                outputs.append(gated_expert(rows[start : start + size], gate_up, down, act_fn))
                start += size
            if not outputs:
                return rows.new_empty((0, masters[1].shape[1]))
            return torch.cat(outputs)
        # Any other layout: the block's own experts module, once on the masters' rows and once on
        # the slots' rows, with the weights as views.
        on_masters = sum(dispatch.segments[:count])
        parts = []
        for weights, first, last, offset in (
            (masters, 0, on_masters, 0),
            (slot_weights, on_masters, len(rows), count),
        ):
            if last == first:
                continue
            math = self._math
            math.num_experts = weights[0].shape[0]
            for name, tensor in zip(self._anatomy.stacked, weights, strict=True):
                math.__dict__[name] = tensor
            try:
                index = (dispatch.local_index[first:last] - offset).unsqueeze(1)
                ones = torch.ones((last - first, 1), dtype=rows.dtype, device=rows.device)
                parts.append(math(rows[first:last], index, ones))
            finally:
                for name in self._anatomy.stacked:
                    del math.__dict__[name]
        if not parts:
            return rows.new_empty((0, rows.shape[1]))
        return torch.cat(parts)

    def _combine(
        self,
        per_pair: torch.Tensor,
        routing_weights: torch.Tensor,
        selected: torch.Tensor,
        x: torch.Tensor,
    ) -> torch.Tensor:
        """Each token's expert outputs ([tokens, k, hidden], in the router's order), weighted and
        summed as the block's own expert implementation sums them, so that the result is the
        block's wherever the experts' outputs are."""
        weighted = per_pair * routing_weights.unsqueeze(-1)
        implementation = getattr(
            getattr(self._anatomy.experts, "config", None), "_experts_implementation", None
        )
        if implementation not in (None, "eager"):
            # The batched implementations of transformers add a token's k outputs in one sum.
            return weighted.sum(dim=1).to(x.dtype)
        # The eager loop adds each expert's weighted output into a zeroed output, expert by
        # expert in ascending order.
        weighted = weighted.to(x.dtype)
        by_expert = torch.argsort(selected, dim=1, stable=True)
        weighted = weighted.gather(1, by_expert.unsqueeze(-1).expand_as(weighted))
        out = torch.zeros_like(x)
        for position in range(weighted.shape[1]):
            out = out + weighted[:, position]
        return out

    def change_layout(
        self, homes: Sequence[int], optimizer: torch.optim.Optimizer | None = None
    ) -> int:
        """Moves experts to the ranks ``homes`` names (one per expert, as the slow loop's
        re-placement ``ultraep.rehome`` gives them: every rank keeps its number of experts).

        Every rank of the group calls it with the same ``homes`` at the same point, between steps:
        after the backward and the optimizer step. Each moved expert's weights go from its old
        rank to its new one, with its gradient if one is kept and, given ``optimizer``, every
        state tensor of it shaped like the parameter (Adam's moments); the engine then switches
        the layer to the new layout, and the next forward plans in it and refills the replica
        slots. Returns the number of experts that moved.

        Raises:
            RefusedError: if ``homes`` changes a rank's number of experts, a backward has not
                finished, or the ranks would move different tensors (then nothing moved).
            PeerLostError: if the group fails while the experts move (the group is then
                unusable, as after any failure).
        """
        layer = self.layer_index
        tensors: list[torch.Tensor] = []
        for parameter in self._masters():
            tensors.append(parameter.data)
            if parameter.grad is not None:
                tensors.append(parameter.grad)
            if optimizer is not None:
                state = optimizer.state.get(parameter, {})
                tensors.extend(
                    value
                    for _, value in sorted(state.items())
                    if isinstance(value, torch.Tensor) and value.shape == parameter.shape
                )
        self._check_same_tensors_everywhere(tensors)
        self._group.settle()
        moves = self.engine.begin_layout_change(layer, [int(home) for home in homes])
        # The engine's own program would copy the weights into staging slots; this layer moves
        # the parameters (and their optimizer state) itself, so the engine only counts them
        # staged, and switches before any byte moves: a refused switch (a backward not
        # finished) leaves every parameter as it was.
        try:
            self.engine.advance_layout_change(2**64 - 1)
            self.engine.switch_layout()
        except RefusedError:
            self.engine.abort_layout_change()
            raise
        pool = self._group.pool
        received: list[tuple[int, int, torch.Tensor]] = []
        operations = []
        for number, (expert, sender, receiver, _, index) in enumerate(moves.tolist()):
            for position, tensor in enumerate(tensors):
                tag = number * len(tensors) + position
                if sender == self.rank:
                    row = tensor[int(self._master_row[expert])]
                    operations.append(
                        dist.P2POp(dist.isend, row, pool.peer(receiver), self.group, tag)
                    )
                elif receiver == self.rank:
                    buffer = torch.empty_like(tensor[0])
                    received.append((position, index, buffer))
                    operations.append(
                        dist.P2POp(dist.irecv, buffer, pool.peer(sender), self.group, tag)
                    )
        with group_operation(self.rank, "moving experts to their new ranks"):
            if operations:
                for request in dist.batch_isend_irecv(operations):
                    request.wait()
        # Every row to be overwritten has been sent: install the arrivals.
        with torch.no_grad():
            for position, index, buffer in received:
                tensors[position][index] = buffer
        self._master_row = self._group.master_rows(layer)
        self.masters_updated()
        return len(moves)

    def _check_same_tensors_everywhere(self, tensors: list[torch.Tensor]) -> None:
        """Every rank moves the same number of tensors per expert (so that message tags match):
        a rank whose optimizer has no state yet, or that keeps gradients the others dropped,
        raises on every rank instead of hanging the group."""
        device = self._masters()[0].device
        counts = torch.empty(self.ranks, dtype=torch.int64, device=device)
        mine = torch.tensor([len(tensors)], dtype=torch.int64).to(device)
        with group_operation(self.rank, "comparing the tensors to move"):
            dist.all_gather_into_tensor(counts, mine, group=self.group)
        if len(set(counts.tolist())) > 1:
            raise RefusedError(
                f"ranks would move {counts.tolist()} tensors per expert: call change_layout on "
                "every rank at the same point, after the optimizer step, with gradients kept or "
                "dropped alike"
            )


def expert_shapes(anatomy: BlockAnatomy) -> dict[str, tuple[int, ...]]:
    """Every stacked parameter's shape for one expert, in state order."""
    return {name: tuple(getattr(anatomy.experts, name).shape[1:]) for name in anatomy.stacked}
