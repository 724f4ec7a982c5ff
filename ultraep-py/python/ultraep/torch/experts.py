"""The experts of one MoE block, spread over an expert-parallel group and balanced by ultraep: the
module that takes the place of the block's own experts module.

The block calls it as it called its experts, ``experts(hidden_states, top_k_index,
top_k_weights)``, and gets what they would have returned. Between the two, on the input's device:
the load (every rank's token count per expert) is gathered and planned, the replicas' weights move
into the shared slots, every token-expert pair is rerouted to its instance, the rows travel by
all-to-all, every instance computes its rows, and the results travel back and are weighted and
summed as the block's experts sum them. The host reads the gathered count matrix, nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .._ultraep import StepFigures
from .anatomy import ExpertsAnatomy, combine, gated_expert, on_weights, weightless
from .collective import GroupCollective
from .dispatch import (
    Dispatch,
    build,
    counts_by_source,
    local_indices,
    reroute,
    send_order,
    upload,
)
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
    instance_rows: list[int]
    """The rows each of this rank's instances computed: its masters by local index, then its
    slots. Each instance's rows go through one matrix product."""
    seconds: dict[str, float]
    """Host wall-clock seconds of each phase of this rank's forward: ``gather`` (the load's
    all-gather), ``plan`` (the engine's step), ``weights`` (the transfer program),
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


class DistributedExperts(nn.Module):
    """This rank's share of a block's experts (its masters, under the experts' own parameter
    names), computing every forward across the group. Built by :class:`ExpertParallelMoE` and
    :func:`parallelize`; see there."""

    def __init__(
        self,
        experts: nn.Module,
        anatomy: ExpertsAnatomy,
        shared: ExpertParallelGroup,
        layer: int,
        group: dist.ProcessGroup | None,
        plan_by_domain: bool,
    ) -> None:
        super().__init__()
        self._anatomy = anatomy
        self._group = shared
        self.layer_index = layer
        self.group = group
        self.rank = shared.rank
        self.ranks = shared.ranks
        self.experts_per_rank = shared.masters
        self.num_experts = anatomy.num_experts
        local = slice(self.rank * self.experts_per_rank, (self.rank + 1) * self.experts_per_rank)
        for name in anatomy.stacked:
            original = getattr(experts, name)
            shard = original.detach()[local].clone()
            # A frozen expert stays frozen.
            self.register_parameter(name, nn.Parameter(shard, requires_grad=original.requires_grad))
        # The experts' own math, holding no weights: the non-gated form calls it on views.
        # transformers' batched implementations (grouped_mm) take all of a module's weights at
        # once; the math here runs on one instance's weights at a time, in the eager loop, so
        # that every weight it saves lies in one slot.
        self._math = weightless(experts, 0, eager=True)
        self._act_fn = getattr(experts, "act_fn", None)
        self._master_row = shared.master_rows(layer)
        self._versions = self._master_versions()
        self._by_domain = (
            GroupCollective(group, self._masters()[0].device) if plan_by_domain else None
        )
        self.last_report: ForwardReport | None = None
        shared.members.append(self)

    @property
    def engine(self):
        """The engine this layer plans with (shared by every layer of a parallelized model)."""
        return self._group.engine

    def _masters(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self._anatomy.stacked]

    def _master_versions(self) -> tuple[tuple[int, int], ...]:
        # Every in-place change of a parameter (an optimizer step) bumps its version counter;
        # `.data` assignment changes its storage.
        return tuple((p._version, p.data_ptr()) for p in self._masters())

    def _masters_changed(self) -> bool:
        return self._master_versions() != self._versions

    def _note_masters(self) -> None:
        self._versions = self._master_versions()

    def masters_updated(self) -> None:
        """Says the masters changed other than in place (through ``.data``, say); every rank
        calls it. (An optimizer step, and any in-place change, are noticed by themselves.)"""
        self._group.settle()
        self.engine.masters_updated()
        self._group.optimizer_stepped = False
        for member in self._group.members:
            member._note_masters()

    def homes(self) -> list[int]:
        """The home rank of every expert, in the layout in force."""
        return [int(home) for home in self.engine.homes(self.layer_index)]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        clock = _PhaseClock()
        x = hidden_states
        ids = top_k_index.reshape(-1).to(torch.int64)
        # Counted by a scatter of fixed size: bincount would read the largest id on the host.
        torch._assert_async(
            ((ids >= 0) & (ids < self.num_experts)).all(),
            f"ultraep: the router chose expert ids beyond the block's {self.num_experts} experts",
        )
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=ids.device)
        counts.index_add_(0, ids, torch.ones_like(ids))
        group = self._group
        if torch.is_grad_enabled() and torch._C._current_graph_task_id() != -1:
            recomputed = self._group.step_to_recompute(self.layer_index, counts)
            if recomputed is not None:
                return self._recompute(recomputed, x, ids, counts, top_k_index, top_k_weights)
        if group.optimizer_stepped or any(member._masters_changed() for member in group.members):
            self.masters_updated()
        microbatch = group.next_microbatch(self.layer_index)
        figures = self._plan(microbatch, counts, clock)
        dispatch, instances = self._dispatch(microbatch)
        masters = self._masters()
        step = Step(
            group,
            self.layer_index,
            microbatch,
            dispatch,
            group.replica_slots_in(instances),
            self._master_row,
            masters,
            counts,
        )
        # A graph is built whenever anything the experts compute from needs a gradient: the
        # masters, or only the tokens and routing weights (frozen experts). Every rank decides
        # alike, so that every rank's backward runs the same collectives.
        training = torch.is_grad_enabled() and (
            any(m.requires_grad for m in masters) or x.requires_grad or top_k_weights.requires_grad
        )
        received = 0
        if figures.copies > 0:
            received = group.pool.run(self.engine.transfer_program(), masters, self._master_row)
        if training:
            # The anchor requires a gradient, so that the function's backward (which ends the
            # step on every rank) runs even where the masters are frozen.
            anchor = torch.empty(0, device=x.device, requires_grad=True)
            *slot_weights, link = ReplicaWeights.apply(step, anchor, *masters)
        else:
            slot_weights = group.pool.views()
        clock.lap("weights")

        hooks = saved_slot_hooks(step) if training else contextlib.nullcontext()
        out = self._through_instances(
            x, ids, top_k_index, top_k_weights, dispatch, slot_weights, None, hooks, clock
        )
        if training:
            out = LayerBoundary.apply(out, link, step)
        else:
            step.end_without_backward()
        clock.lap("combine")

        self.last_report = ForwardReport(
            microbatch=microbatch,
            initial_imbalance=figures.initial_imbalance,
            imbalance=figures.imbalance,
            replicas=figures.replicas,
            copies=figures.copies,
            bytes_moved=figures.bytes_moved,
            bytes_received=received,
            tokens=dispatch.tokens,
            replica_tokens=sum(dispatch.segments[self.experts_per_rank :]),
            instance_rows=list(dispatch.segments),
            seconds=clock.seconds,
        )
        return out

    def _recompute(
        self,
        step: Step,
        x: torch.Tensor,
        ids: torch.Tensor,
        counts: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
    ) -> torch.Tensor:
        """The forward again, inside this layer's backward (activation checkpointing recomputes
        the forward to get back the tensors it did not keep): the same plan, routing and slots as
        the forward being differentiated, so that every recomputed tensor is the one it replaces.
        No plan, no weight moves, no gathered load; the rows travel again."""
        # The router's choices are recomputed too, and must be the ones planned for: checked
        # on the host for CPU tensors, asynchronously on a GPU (no synchronisation).
        if counts.device.type == "cpu":
            if not torch.equal(counts, step.counts):
                raise self._group.refused(
                    f"layer {self.layer_index}: the recomputed router chose other experts than "
                    "the forward did (a router that draws random numbers cannot be recomputed)"
                )
        else:
            torch._assert_async((counts == step.counts).all())
        return self._through_instances(
            x,
            ids,
            top_k_index,
            top_k_weights,
            step.dispatch,
            self._group.pool.views(),
            step.physical_slots(),
            saved_slot_hooks(step),
            _PhaseClock(),
        )

    def _through_instances(
        self,
        x: torch.Tensor,
        ids: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
        dispatch: Dispatch,
        slot_weights: list[torch.Tensor],
        physical: list[int] | None,
        hooks: contextlib.AbstractContextManager,
        clock: _PhaseClock,
    ) -> torch.Tensor:
        """Every token-expert pair to its instance and back, under ``dispatch``: the reroute,
        the all-to-all there, the instances' math (under ``hooks``), the all-to-all back, and
        the weighted sum the block's experts make."""
        tokens, top_k = top_k_index.shape
        order = send_order(reroute(ids, dispatch), dispatch)
        clock.lap("reroute")
        route = TokenRoute(dispatch.sends, dispatch.receives, self.group, self.rank)
        grouped = route.exchange(x.index_select(0, order // top_k)).index_select(0, dispatch.gather)
        clock.lap("dispatch")
        with hooks:
            computed = self._expert_math(grouped, dispatch, self._masters(), slot_weights, physical)
        clock.lap("experts")
        back = torch.empty_like(computed).index_copy(0, dispatch.gather, computed)
        returned = route.reversed().exchange(back)
        per_pair = torch.empty_like(returned).index_copy(0, order, returned)
        return combine(
            per_pair.view(tokens, top_k, -1),
            top_k_weights,
            top_k_index,
            x.dtype,
            self._anatomy.implementation,
        )

    def _plan(self, microbatch: int, counts: torch.Tensor, clock: _PhaseClock) -> StepFigures:
        """Gathers the load and plans it: the one read of device values on the host."""
        engine, layer = self.engine, self.layer_index
        try:
            if self._by_domain is not None:
                host_counts = counts.to("cpu", torch.int64).numpy().astype(np.uint32)
                clock.lap("gather")
                # The collectives run inside the plan, between its phases.
                figures = self._retry_after_collecting(
                    lambda: engine.step_by_domain_from_counts(
                        microbatch, layer, host_counts, self._by_domain
                    )
                )
            else:
                digest = engine.digest
                # The digest's two 32-bit words, uploaded (the row is the counts, then them).
                (words,) = upload([np.array([digest & 0xFFFF_FFFF, digest >> 32])], counts.device)
                row = torch.cat([counts, words]).to(torch.int32)
                gathered = torch.empty(self.ranks * len(row), dtype=torch.int32, device=row.device)
                with group_operation(self.rank, "gathering the load (all_gather_into_tensor)"):
                    dist.all_gather_into_tensor(gathered, row, group=self.group)
                host = gathered.cpu().numpy().view(np.uint32)
                clock.lap("gather")
                figures = self._retry_after_collecting(lambda: engine.step(microbatch, layer, host))
        except RefusedError as error:
            if "in_flight" in str(error) or "in flight" in str(error).lower():
                raise RefusedError(
                    f"ultraep: layer {layer}: more microbatches in flight than the "
                    f"{self._group.microbatches} this layer was built for (microbatches=): "
                    f"{error}"
                ) from error
            raise
        clock.lap("plan")
        return figures

    def _retry_after_collecting(self, plan: Callable[[], StepFigures]) -> StepFigures:
        """Runs ``plan``; if the engine refuses it because earlier steps still hold their place
        or their slots, collects garbage (a graph freed in a reference cycle frees its steps only
        then), gives back what the freed steps held, and runs it once more. The engine's state is
        every rank's, so every rank retries alike."""
        try:
            return plan()
        except RefusedError as error:
            message = str(error)
            if "in_flight" not in message and "hold all of them" not in message:
                raise
        gc.collect()
        self._group.settle()
        return plan()

    def _dispatch(self, microbatch: int) -> tuple[Dispatch, np.ndarray]:
        """This rank's routing under the step's plan, and the plan's instances."""
        engine, layer = self.engine, self.layer_index
        instances = engine.instances(microbatch, layer)
        row, columns = engine.split(microbatch, layer)
        width = self.experts_per_rank + self._group.slots
        local_of = local_indices(instances, self._master_row, self.experts_per_rank)
        if columns is not None:
            by_source = counts_by_source(columns, local_of, self.ranks, width)
        else:
            by_source = self._exchange_counts(instances, row, local_of, width)
        dispatch = build(
            instances,
            row,
            by_source,
            self._master_row,
            self.experts_per_rank,
            self.ranks,
            self._masters()[0].device,
        )
        return dispatch, instances

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
            dist.all_to_all_single(
                theirs, upload([mine.ravel()], device)[0].view(mine.shape), group=self.group
            )
        return theirs.cpu().numpy()

    def _expert_math(
        self,
        rows: torch.Tensor,
        dispatch: Dispatch,
        masters: list[torch.Tensor],
        slot_weights: list[torch.Tensor],
        physical: list[int] | None = None,
    ) -> torch.Tensor:
        """The experts' forward on ``rows`` (grouped by local instance, routing weight 1). A
        replica the plan numbered slot ``s`` is read from slot ``physical[s]`` (a recompute after
        a restore that moved replicas), else from slot ``s``."""
        count = self.experts_per_rank
        physical = physical or list(range(self._group.slots))
        if self._anatomy.gated:
            outputs, start = [], 0
            for index, size in enumerate(dispatch.segments):
                if size == 0:
                    continue
                if index < count:
                    gate_up, down = masters[0][index], masters[1][index]
                else:
                    slot = physical[index - count]
                    gate_up, down = slot_weights[0][slot], slot_weights[1][slot]
                outputs.append(
                    gated_expert(rows[start : start + size], gate_up, down, self._act_fn)
                )
                start += size
            if not outputs:
                return _no_rows(rows)
            return torch.cat(outputs)
        # Any other layout: the experts' own module, once on the masters' rows and once on the
        # slots' rows, with the weights as views.
        on_masters = sum(dispatch.segments[:count])
        parts = []
        for weights, first, last, offset in (
            (masters, 0, on_masters, 0),
            (slot_weights, on_masters, len(rows), count),
        ):
            if last > first:
                index = dispatch.local_index[first:last] - offset
                if offset and physical != list(range(len(physical))):
                    # Replicas a restore moved: the slot each now sits in.
                    (moved,) = upload([np.array(physical)], index.device)
                    index = moved[index]
                parts.append(
                    on_weights(self._math, self._anatomy.stacked, weights, rows[first:last], index)
                )
        if not parts:
            return _no_rows(rows)
        return torch.cat(parts)

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
        mine = torch.tensor([len(tensors)], dtype=torch.int64, device=device)
        with group_operation(self.rank, "comparing the tensors to move"):
            dist.all_gather_into_tensor(counts, mine, group=self.group)
        if len(set(counts.tolist())) > 1:
            raise RefusedError(
                f"ranks would move {counts.tolist()} tensors per expert: call change_layout on "
                "every rank at the same point, after the optimizer step, with gradients kept or "
                "dropped alike"
            )


def _no_rows(rows: torch.Tensor) -> torch.Tensor:
    """No output row, still part of the graph when ``rows`` is: a rank whose instances receive
    no row must run the backward's all-to-alls like every other rank."""
    return rows[:0] * 0
