"""The expert-parallel MoE layer: a Hugging Face MoE block's router and expert math, its experts
sharded over a process group, balanced by ultraep in every forward."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .._ultraep import Engine
from .collective import GroupCollective
from .errors import group_operation
from .exchange import TokenRoute
from .replicas import ReplicaExchange, ReplicaWeights

_ENGINE_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "bf16"}


@dataclasses.dataclass(frozen=True)
class ForwardReport:
    """What one forward did. The plan's figures are the group's (every rank has the same); the
    token and byte counts are this rank's."""

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


def _local_math(experts: nn.Module, instances: int) -> nn.Module:
    """A copy of ``experts`` that holds no weights and counts ``instances`` experts: the block's own
    expert math, called on a rank's masters and slots stacked together."""
    math = copy.copy(experts)
    math.__dict__["_parameters"] = {}
    math.__dict__["_buffers"] = dict(experts._buffers)
    math.__dict__["_modules"] = dict(experts._modules)
    math.num_experts = instances
    return math


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
        block: the MoE block, with a router ``gate`` that returns ``(logits, weights, indices)``
            and stacked experts ``experts`` (``gate_up_proj`` of shape ``[experts, 2 * width,
            hidden]`` and ``down_proj`` of shape ``[experts, hidden, width]``), as in
            transformers 5 (Qwen3-MoE, Mixtral, DeepSeek-V3). A ``shared_experts`` module, if
            present, runs on every rank on its own tokens. Every rank passes the same weights;
            each keeps its own experts' shard, the router and the shared experts.
        group: the expert-parallel process group (default: the whole world). Expert ``e`` starts
            on rank ``e // (experts / ranks)`` of the group; :meth:`change_layout` moves experts
            between ranks later.
        slots: replica buffers per rank.
        min_replica_tokens: the smallest number of tokens a replica may get.
        preset: the hardware whose links the engine plans transfers for.
        domains: the scale-up domain label of every rank of the group (default: one domain).
            Replicas stay inside their master's domain.
        plan_by_domain: plan by domain (``Engine.step_by_domain``): each rank sums the counts
            with an all-reduce, plans its own domain and gathers every rank's replicas and a few
            cells instead of the whole load matrix; the same plan. For groups that span domains.

    The router and the shared experts are replicated: reduce their gradients over the group
    like any data-parallel parameter. The backward of a forward must run before the next
    forward of the same layer (the replica buffers are reused); a forward under
    ``torch.no_grad`` needs no backward.

    Raises:
        ValueError: if the block or the group does not fit (experts not divisible among the
            ranks, an unsupported dtype, router jitter in training).
        PeerLostError: from any forward or backward in which the group fails.
    """

    def __init__(
        self,
        block: nn.Module,
        group: dist.ProcessGroup | None = None,
        *,
        slots: int = 2,
        min_replica_tokens: int = 1,
        preset: str = "hgx-h100",
        domains: Sequence[int] | None = None,
        plan_by_domain: bool = False,
    ) -> None:
        super().__init__()
        experts = block.experts
        ranks = dist.get_world_size(group)
        rank = dist.get_rank(group)
        count, double_width, hidden = experts.gate_up_proj.shape
        width = double_width // 2
        if count % ranks != 0:
            raise ValueError(f"{count} experts do not divide among {ranks} ranks")
        if getattr(block, "jitter_noise", 0) and block.training:
            raise ValueError("router jitter noise is not supported: set router_jitter_noise=0")
        dtype = experts.gate_up_proj.dtype
        if dtype not in _ENGINE_DTYPES:
            raise ValueError(f"expert weights of dtype {dtype}: use float32, bfloat16 or float16")
        per_rank = count // ranks
        self.group = group
        self.rank = rank
        self.ranks = ranks
        self.experts_per_rank = per_rank
        self.slots = slots
        self.gate = block.gate
        self.shared_experts = getattr(block, "shared_experts", None)
        local = slice(rank * per_rank, (rank + 1) * per_rank)
        self.gate_up_proj = nn.Parameter(experts.gate_up_proj.detach()[local].clone())
        self.down_proj = nn.Parameter(experts.down_proj.detach()[local].clone())
        self._math = _local_math(experts, per_rank + slots)
        # Every expert's row in its home rank's stacked parameters.
        self._row_of = np.arange(count, dtype=np.int64) % per_rank
        self.engine = Engine(
            rank,
            [expert // per_rank for expert in range(count)],
            layers=1,
            top_k=int(self.gate.top_k),
            hidden=hidden,
            expert_width=width,
            preset=preset,
            domains=list(domains) if domains is not None else [0] * ranks,
            dtype=_ENGINE_DTYPES[dtype],
            training=True,
            slots_per_rank=slots,
            # A layout change may bring a rank as many experts as it has; host-driven staging
            # slots cost no memory (the layer moves the parameters itself).
            staging_slots=per_rank,
            min_replica_tokens=min_replica_tokens,
            hold_forward=True,
        )
        self._exchange = ReplicaExchange(
            self.engine,
            group,
            self._row_of,
            tuple(self.gate_up_proj.shape[1:]),
            tuple(self.down_proj.shape[1:]),
            slots,
            dtype,
            self.gate_up_proj.device,
        )
        if self._exchange.state[0].numel() * self._exchange.state.element_size() != (
            self.engine.state_bytes
        ):
            raise ValueError("the block's expert weights are not a gated MLP (gate, up, down)")
        self._versions = self._master_versions()
        self._by_domain = (
            GroupCollective(group, self.gate_up_proj.device) if plan_by_domain else None
        )
        self.last_report: ForwardReport | None = None

    def _master_versions(self) -> tuple[int, int]:
        # Every in-place change of a parameter (an optimizer step) bumps its version counter.
        return (self.gate_up_proj._version, self.down_proj._version)

    def masters_updated(self) -> None:
        """Says the masters changed other than in place; every rank calls it. (An optimizer step
        is noticed by itself.)"""
        self.engine.masters_updated()
        self._versions = self._master_versions()

    def homes(self) -> list[int]:
        """The home rank of every expert, in the layout in force."""
        return [int(home) for home in self.engine.homes(0)]

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
            ValueError: if ``homes`` changes a rank's number of experts, a backward has not
                finished, or the ranks would move different tensors (then nothing moved).
            PeerLostError: if the group fails while the experts move (the group is then
                unusable, as after any failure).
        """
        parameters = (self.gate_up_proj, self.down_proj)
        tensors: list[torch.Tensor] = []
        for parameter in parameters:
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
        moves = self.engine.begin_layout_change(0, [int(home) for home in homes])
        # The engine's own program would copy the weights into staging slots; this layer moves
        # the parameters (and their optimizer state) itself, so the engine only counts them
        # staged, and switches before any byte moves: a refused switch (a backward not
        # finished) leaves every parameter as it was.
        try:
            self.engine.advance_layout_change(2**64 - 1)
            self.engine.switch_layout()
        except ValueError:
            self.engine.abort_layout_change()
            raise
        received: list[tuple[int, int, torch.Tensor]] = []
        operations = []
        for number, (expert, sender, receiver, _, index) in enumerate(moves.tolist()):
            for position, tensor in enumerate(tensors):
                tag = number * len(tensors) + position
                if sender == self.rank:
                    row = tensor[int(self._row_of[expert])]
                    operations.append(
                        dist.P2POp(dist.isend, row, self._exchange.peer(receiver), self.group, tag)
                    )
                elif receiver == self.rank:
                    buffer = torch.empty_like(tensor[0])
                    received.append((position, index, buffer))
                    operations.append(
                        dist.P2POp(dist.irecv, buffer, self._exchange.peer(sender), self.group, tag)
                    )
        with group_operation(self.rank, "moving experts to their new ranks"):
            if operations:
                for request in dist.batch_isend_irecv(operations):
                    request.wait()
        # Every row to be overwritten has been sent: install the arrivals.
        with torch.no_grad():
            for position, index, buffer in received:
                tensors[position][index] = buffer
        for expert, _, _, _, index in moves.tolist():
            self._row_of[expert] = index
        self.masters_updated()
        return len(moves)

    def _check_same_tensors_everywhere(self, tensors: list[torch.Tensor]) -> None:
        """Every rank moves the same number of tensors per expert (so that message tags match):
        a rank whose optimizer has no state yet, or that keeps gradients the others dropped,
        raises on every rank instead of hanging the group."""
        counts = torch.empty(self.ranks, dtype=torch.int64, device=self.gate_up_proj.device)
        mine = torch.tensor([len(tensors)], dtype=torch.int64, device=counts.device)
        with group_operation(self.rank, "comparing the tensors to move"):
            dist.all_gather_into_tensor(counts, mine, group=self.group)
        if len(set(counts.tolist())) > 1:
            raise ValueError(
                f"ranks would move {counts.tolist()} tensors per expert: call change_layout on "
                "every rank at the same point, after the optimizer step, with gradients kept or "
                "dropped alike"
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        clock = _PhaseClock()
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        _, routing_weights, selected = self.gate(x)
        tokens, top_k = selected.shape
        ids = selected.detach().to("cpu", torch.int64).numpy().astype(np.uint32).ravel()
        clock.lap("router")

        if self._master_versions() != self._versions:
            self.masters_updated()
        if self._by_domain is not None:
            clock.lap("gather")
            # The collectives run inside the plan, between its phases.
            figures = self.engine.step_by_domain(0, 0, ids, self._by_domain)
        else:
            row = self.engine.gather_row(ids)
            gathered = torch.empty(self.ranks * len(row), dtype=torch.int32, device=x.device)
            with group_operation(self.rank, "gathering the load (all_gather_into_tensor)"):
                dist.all_gather_into_tensor(
                    gathered, torch.from_numpy(row.view(np.int32)).to(x.device), group=self.group
                )
            clock.lap("gather")
            figures = self.engine.step(0, 0, gathered.cpu().numpy().view(np.uint32))
        clock.lap("plan")

        stacked_gate_up, stacked_down = ReplicaWeights.apply(
            self.gate_up_proj, self.down_proj, self._exchange, self.engine.transfer_program()
        )
        clock.lap("weights")

        # The instance of every token-expert pair, its rank, and its index on that rank (masters
        # first, then slots).
        instances = self.engine.instances(0, 0)
        routed = self.engine.reroute(0, 0, ids).astype(np.int64)
        target = instances[routed, 1]
        slot = instances[routed, 2]
        index_there = np.where(
            slot >= 0, self.experts_per_rank + slot, self._row_of[instances[routed, 0]]
        )
        order = np.argsort(target, kind="stable")
        send_counts = np.bincount(target, minlength=self.ranks)
        pairs = torch.from_numpy(order).to(x.device)
        clock.lap("reroute")

        receive_counts = torch.empty(self.ranks, dtype=torch.int64)
        with group_operation(self.rank, "exchanging token counts (all_to_all_single)"):
            dist.all_to_all_single(receive_counts, torch.from_numpy(send_counts), group=self.group)
        route = TokenRoute(send_counts.tolist(), receive_counts.tolist(), self.group, self.rank)
        rows = route.exchange(x.index_select(0, pairs // top_k))
        local_index = route.exchange(torch.from_numpy(index_there[order]).to(x.device))
        clock.lap("dispatch")
        outputs = self._expert_math(rows, local_index, stacked_gate_up, stacked_down)
        clock.lap("experts")
        returned = route.reversed().exchange(outputs)

        unsorted = torch.empty_like(pairs)
        unsorted[pairs] = torch.arange(len(pairs), device=x.device)
        per_pair = returned.index_select(0, unsorted).view(tokens, top_k, -1)
        out = self._combine(per_pair, routing_weights, selected, x).reshape(shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden_states)
        clock.lap("combine")

        replica_tokens = int((local_index >= self.experts_per_rank).sum())
        self.last_report = ForwardReport(
            initial_imbalance=figures["initial_imbalance"],
            imbalance=figures["imbalance"],
            replicas=int(figures["replicas"]),
            copies=int(figures["copies"]),
            bytes_moved=int(figures["bytes_moved"]),
            bytes_received=self._exchange.bytes_received,
            tokens=len(local_index),
            replica_tokens=replica_tokens,
            seconds=clock.seconds,
        )
        return out

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
            getattr(self._math, "config", None), "_experts_implementation", None
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

    def _expert_math(
        self,
        rows: torch.Tensor,
        local_index: torch.Tensor,
        gate_up: torch.Tensor,
        down: torch.Tensor,
    ) -> torch.Tensor:
        """The block's expert forward on ``rows``, row ``i`` through local instance
        ``local_index[i]`` with weight 1 (the router's weight is applied where the token lives)."""
        math = self._math
        math.__dict__["gate_up_proj"] = gate_up
        math.__dict__["down_proj"] = down
        try:
            ones = torch.ones((len(rows), 1), dtype=rows.dtype, device=rows.device)
            return math(rows, local_index.unsqueeze(1), ones)
        finally:
            del math.__dict__["gate_up_proj"]
            del math.__dict__["down_proj"]
