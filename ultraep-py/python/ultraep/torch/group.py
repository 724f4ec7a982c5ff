"""The state every wrapped layer of one model shares on a rank: the engine (one for all layers,
so that they share its slot table), the pool of replica slots, the microbatch count of every
layer, and what the optimizer did to the masters."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._ultraep import Engine, RefusedError
from .errors import group_operation
from .pool import ExpertState, SlotPool
from .step import Step

_ENGINE_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "bf16"}

# Every live group, so that one optimizer hook marks all of them.
_GROUPS: weakref.WeakSet[ExpertParallelGroup] = weakref.WeakSet()
_HOOKED = False


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    # An optimizer may update parameters through `.data`, which no version counter sees: after
    # any optimizer step, every group checks its masters before its next forward.
    for group in list(_GROUPS):
        group.optimizer_stepped = True


class Member(Protocol):
    """What the group asks of a layer registered with it: whether the layer's master weights
    changed since it last noted them, and to note them now. (The layers, ``DistributedExperts``,
    sit above the group and register themselves; the group never imports them.)"""

    def _masters_changed(self) -> bool: ...

    def _note_masters(self) -> None: ...


class ExpertParallelGroup:
    """One rank's engine and slot pool for ``layers`` MoE layers of one shape."""

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        *,
        layers: int,
        num_experts: int,
        top_k: int,
        shapes: dict[str, tuple[int, ...]],
        gated: bool,
        dtype: torch.dtype,
        device: torch.device,
        slots: int,
        microbatches: int,
        min_replica_tokens: int,
        preset: str,
        domains: Sequence[int] | None,
    ) -> None:
        global _HOOKED
        self.group = group
        self.rank = dist.get_rank(group)
        self.ranks = dist.get_world_size(group)
        if num_experts % self.ranks != 0:
            raise ValueError(f"{num_experts} experts do not divide among {self.ranks} ranks")
        if dtype not in _ENGINE_DTYPES:
            raise ValueError(f"expert weights of dtype {dtype}: use float32, bfloat16 or float16")
        self.layers = layers
        self.num_experts = num_experts
        self.masters = num_experts // self.ranks
        self.slots = slots
        self.microbatches = microbatches
        self.device = device
        state = ExpertState.of(shapes, dtype)
        if gated:
            (width, hidden) = shapes["gate_up_proj"]
            hidden_size, expert_width = hidden, width // 2
        else:
            # Any other layout: the engine counts the state as three equal matrices of one row.
            hidden_size, expert_width = 1, state.elements // 3
        self.engine = Engine(
            self.rank,
            [expert // self.masters for expert in range(num_experts)],
            layers=layers,
            top_k=top_k,
            hidden=hidden_size,
            expert_width=expert_width,
            preset=preset,
            domains=list(domains) if domains is not None else [0] * self.ranks,
            dtype=_ENGINE_DTYPES[dtype],
            training=True,
            slots_per_rank=slots,
            # A layout change may bring a rank as many experts as it has; host-driven staging
            # slots cost no memory (the layer moves the parameters itself).
            staging_slots=self.masters,
            microbatches_in_flight=microbatches,
            min_replica_tokens=min_replica_tokens,
        )
        if self.engine.state_bytes != state.bytes:
            raise ValueError(
                f"an expert's state is {state.bytes} bytes, the engine counts "
                f"{self.engine.state_bytes}"
            )
        self.pool = SlotPool(group, slots, state, device)
        self._open_point_to_point()
        self.forwards = [0] * layers
        # The layers' experts modules, in layer order (they register themselves).
        self.members: list[Member] = []
        self.owed_drops: list[tuple[int, int]] = []
        # The step whose backward runs now, per layer (a recomputed forward reuses its plan).
        # (Weakly: a step whose backward began and never finished is freed with its graph, and
        # then abandoned.)
        self.in_backward: dict[int, weakref.ref[Step]] = {}
        self.owed_abandons: list[tuple[int, int]] = []
        # Every layer's steps in forward order (weakly: a freed graph frees its step).
        self.open_steps: dict[int, list[weakref.ref[Step]]] = {}
        self.last_backward: list[object] = [None] * layers
        self.optimizer_stepped = False
        _GROUPS.add(self)
        if not _HOOKED:
            register_optimizer_step_post_hook(_after_optimizer_step)
            _HOOKED = True

    def _open_point_to_point(self) -> None:
        """NCCL wants every rank in the first ``batch_isend_irecv`` of a group, and later ones
        involve only the ranks that move weights: every rank passes a word round a ring once."""
        if self.ranks == 1 or dist.get_backend(self.group) != "nccl":
            return
        word = torch.zeros(1, dtype=torch.int32, device=self.device)
        arriving = torch.empty_like(word)
        operations = [
            dist.P2POp(dist.isend, word, self.pool.peer((self.rank + 1) % self.ranks), self.group),
            dist.P2POp(
                dist.irecv, arriving, self.pool.peer((self.rank - 1) % self.ranks), self.group
            ),
        ]
        with group_operation(self.rank, "opening point-to-point operations"):
            for request in dist.batch_isend_irecv(operations):
                request.wait()

    def refused(self, message: str) -> RefusedError:
        """The error of a call the layer refuses."""
        return RefusedError(f"ultraep: {message}")

    def next_microbatch(self, layer: int) -> int:
        """The microbatch number of the layer's next forward."""
        self.settle()
        microbatch = self.forwards[layer]
        self.forwards[layer] = (microbatch + 1) % 2**32
        return microbatch

    def settle(self) -> None:
        """Gives back the places of steps whose graphs were freed without a backward, and forgets
        the steps that ended."""
        for layer, references in self.open_steps.items():
            self.open_steps[layer] = [
                reference
                for reference in references
                if (step := reference()) is not None and not step.ended
            ]
        while self.owed_drops:
            microbatch, layer = self.owed_drops.pop(0)
            try:
                self.engine.drop_backward(microbatch, layer)
            except RefusedError:
                # A later microbatch has taken the place already.
                pass
        # Backwards that began and never finished (an error inside them, or a backward that
        # skipped the experts): their slots go back, their replicas' gradients are lost.
        while self.owed_abandons:
            microbatch, layer = self.owed_abandons.pop(0)
            try:
                self.engine.abandon_backward(microbatch, layer)
            except RefusedError:
                pass

    def step_to_recompute(self, layer: int, counts: torch.Tensor) -> Step | None:
        """The step a checkpointed recompute of ``layer`` reproduces: the one in its backward, or
        else (the recompute came before the layer's boundary, from a branch beside it such as
        the shared experts) the pending one the recomputed router's counts identify, whose
        backward then begins here. ``None`` when no forward of the layer awaits its backward:
        reentrant checkpointing ran the forward under ``no_grad`` and now runs it again as a
        forward of its own, with its own backward. On a GPU the counts are compared on the host:
        one small read, only under activation checkpointing."""
        reference = self.in_backward.get(layer)
        step = reference() if reference is not None else None
        if step is not None:
            return step
        pending = [
            step
            for reference in self.open_steps.get(layer, [])
            if (step := reference()) is not None and not step.backward_begun and not step.ended
        ]
        self.open_steps[layer] = [weakref.ref(step) for step in pending]
        if not pending:
            return None
        matching = [step for step in pending if torch.equal(step.counts, counts)]
        plans = {self.engine.instances(s.microbatch, layer).tobytes() for s in matching}
        if not matching or len(plans) > 1:
            raise self.refused(
                f"layer {layer}: a forward inside a backward matches "
                f"{'no' if not matching else 'several differently planned'} pending forwards "
                "(only activation checkpointing's recompute runs a forward there)"
            )
        step = matching[-1]
        step.begin_backward(from_boundary=False)
        return step

    def master_rows(self, layer: int) -> np.ndarray:
        """Every expert's index among its home rank's masters of the layer, in the layer's
        layout. (The engine numbers a rank's masters across all layers, layer after layer.)"""
        first = layer * self.masters
        return np.array(
            [
                self.engine.master_home(layer, expert)[1] - first
                for expert in range(self.num_experts)
            ],
            dtype=np.int64,
        )

    def replica_slots(self, microbatch: int, layer: int) -> dict[int, int]:
        """This rank's replicas in the step: expert -> slot."""
        return self.replica_slots_in(self.engine.instances(microbatch, layer))

    def replica_slots_in(self, instances: np.ndarray) -> dict[int, int]:
        """This rank's replicas among a step's ``instances``: expert -> slot."""
        mine = instances[(instances[:, 1] == self.rank) & (instances[:, 2] >= 0)]
        return {int(expert): int(slot) for expert, _, slot, _ in mine.tolist()}

    def restore(self, step: Step) -> tuple[int, int]:
        """Brings ``step``'s replicas back; returns (copies in the group, bytes received here)."""
        self.settle()
        copies = self.engine.restore(step.microbatch, step.layer)
        received = 0
        if copies > 0:
            received = self.pool.run(self.engine.transfer_program(), step.masters, step.master_row)
        step.current_slots = self.replica_slots(step.microbatch, step.layer)
        return int(copies), received

    def reduce(
        self, step: Step, replica_grads: dict[int, list[torch.Tensor | None]]
    ) -> tuple[list[torch.Tensor | None], int]:
        """Ends ``step``'s backward: its replicas' gradients go to their masters' ranks. Returns
        the gradient this rank's masters receive, and how many gradients it sent."""
        self.engine.reduce_gradients(step.microbatch, step.layer)
        sends = self.engine.gradient_sends()
        sums = self.pool.return_gradients(sends, replica_grads, step.masters, step.master_row)
        sent = int(np.count_nonzero(sends[:, 1] == self.rank)) if len(sends) else 0
        return sums, sent
