"""One microbatch of one layer, from its forward to the end of its backward.

Each forward is its own microbatch: its own plan (an engine step), its own routing and its own
claim on the shared replica slots. Autograd carries the step: two functions bracket the layer.
:class:`ReplicaWeights` hands the expert math the slots' weights (views of the pool, never
copies) and, in backward, sends the replicas' gradients to their masters. :class:`LayerBoundary`
sits on the layer's output; its backward runs first in the layer's backward, on every rank, and
brings the step's replicas back into slots (the engine's ``restore``: later layers or microbatches
may have taken them). The expert math saves slot weights through saved-tensor hooks that record
*which replica* a tensor was, not its memory, so that backward reads the replica wherever the
restore put it. A step whose graph is freed without a backward gives its place back.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Protocol

import numpy as np
import torch

from .._ultraep import Engine, RefusedError
from .dispatch import Dispatch
from .pool import SlotPool


class StepGroup(Protocol):
    """What a step asks of the group it belongs to (``ExpertParallelGroup``, which sits above the
    step and creates it): the engine and slot pool, the bookkeeping of steps between forward and
    backward, and the restore and gradient reduction of one step."""

    engine: Engine
    pool: SlotPool
    slots: int
    masters: int
    owed_drops: list[tuple[int, int]]
    owed_abandons: list[tuple[int, int]]
    in_backward: dict[int, weakref.ref[Step]]
    open_steps: dict[int, list[weakref.ref[Step]]]
    last_backward: list[object]

    def refused(self, message: str) -> RefusedError: ...

    def restore(self, step: Step) -> tuple[int, int]: ...

    def reduce(
        self, step: Step, replica_grads: dict[int, list[torch.Tensor | None]]
    ) -> tuple[list[torch.Tensor | None], int]: ...


@dataclasses.dataclass(frozen=True)
class BackwardReport:
    """What one backward did for its replicas (this rank's view of the group's figures)."""

    restored: int
    """Replica copies the group made again before the backward (slots that later steps had
    taken); 0 when the pool kept every replica."""
    restored_bytes: int
    """Bytes this rank received for them."""
    gradients_sent: int
    """Replica gradients this rank sent to their masters' ranks."""


class Step:
    """One layer's microbatch between its forward and the end of its backward."""

    def __init__(
        self,
        group: StepGroup,
        layer: int,
        microbatch: int,
        dispatch: Dispatch,
        replica_slots: dict[int, int],
        master_row: np.ndarray,
        masters: list[torch.Tensor],
        counts: torch.Tensor,
    ) -> None:
        self.group = group
        self.layer = layer
        self.microbatch = microbatch
        self.dispatch = dispatch
        # This rank's replicas: expert -> the slot the forward computed with, and the slot that
        # holds the replica now (another after a restore that moved it).
        self.forward_slots = dict(replica_slots)
        self.expert_in_slot = {slot: expert for expert, slot in replica_slots.items()}
        self.current_slots = dict(replica_slots)
        self.master_row = master_row
        self.masters = masters
        # The router's token count per expert (on the device), to check a recomputed forward.
        self.counts = counts
        self.backward_begun = False
        self.boundary_passed = False
        self.ended = False
        group.open_steps.setdefault(layer, []).append(weakref.ref(self))
        self.report: BackwardReport | None = None

    def __del__(self) -> None:
        # The graph was freed without a backward (an output dropped, an evaluation that kept
        # gradients on), or with a backward that began and never finished: the step gives its
        # place back at the group's next call.
        if self.ended:
            return
        owed = self.group.owed_abandons if self.backward_begun else self.group.owed_drops
        owed.append((self.microbatch, self.layer))

    def end_without_backward(self) -> None:
        """For a forward that built no graph: the step ends now."""
        self.ended = True
        self.group.engine.drop_backward(self.microbatch, self.layer)

    def begin_backward(self, from_boundary: bool = True) -> None:
        """Brings the replicas back into slots (every rank, at the start of the layer's backward:
        its boundary's backward, or a checkpointed recompute that came first)."""
        if self.backward_begun:
            if from_boundary and self.boundary_passed:
                raise self.group.refused(
                    f"layer {self.layer} microbatch {self.microbatch}: a second backward through "
                    "the same forward (retain_graph) is not supported"
                )
            self.boundary_passed = self.boundary_passed or from_boundary
            return
        self.boundary_passed = from_boundary
        restored, received = self.group.restore(self)
        self.backward_begun = True
        self.group.in_backward[self.layer] = weakref.ref(self)
        self.report = BackwardReport(restored, received, 0)

    def slot_of(self, expert: int) -> int:
        """The slot that holds this rank's replica of ``expert`` now (another than in the forward
        after a restore that moved it)."""
        if not self.backward_begun:
            raise self.group.refused(
                f"layer {self.layer} microbatch {self.microbatch}: its replicas' weights were "
                "read before its backward began (only a full backward through the layer's "
                "output is supported)"
            )
        return self.current_slots[expert]

    def expert_in(self, slot: int) -> int:
        """The expert whose replica ``slot`` holds now for this step."""
        for expert, current in self.current_slots.items():
            if current == slot:
                return expert
        raise self.group.refused(
            f"layer {self.layer} microbatch {self.microbatch}: slot {slot} holds none of its "
            "replicas"
        )

    def physical_slots(self) -> list[int]:
        """For every slot as the forward numbered them, the slot that holds its replica now (the
        same slot where none moved or none was used)."""
        return [
            self.current_slots[self.expert_in_slot[slot]] if slot in self.expert_in_slot else slot
            for slot in range(self.group.slots)
        ]

    def finish_backward(self, slot_grads: tuple[torch.Tensor | None, ...]) -> list[Any]:
        """Sends the replicas' gradients to their masters; returns the masters' share."""
        replica_grads = {
            expert: [None if grad is None else grad[slot] for grad in slot_grads]
            for expert, slot in self.forward_slots.items()
        }
        reference = self.group.in_backward.get(self.layer)
        if reference is not None and reference() is self:
            del self.group.in_backward[self.layer]
        sums, sent = self.group.reduce(self, replica_grads)
        if all(grad is None for grad in sums) and not any(
            self.dispatch.segments[: self.group.masters]
        ):
            # No token reached this rank's masters and no replica gradient came back: their
            # gradient is zero, as the block's own experts would have it (an optimizer then
            # steps them as it would without ultraep, instead of skipping them).
            sums = [torch.zeros_like(master) for master in self.masters]
        self.ended = True
        if self.report is not None:
            self.report = dataclasses.replace(self.report, gradients_sent=sent)
        self.group.last_backward[self.layer] = self.report
        return sums


class _SlotReference:
    """A saved slot weight: which replica (its expert), where in its state, and its view's
    geometry."""

    __slots__ = ("expert", "offset", "size", "step", "stride")

    def __init__(self, step: Step, expert: int, offset: int, tensor: torch.Tensor) -> None:
        self.step = step
        self.expert = expert
        self.offset = offset
        self.size = tuple(tensor.shape)
        self.stride = tuple(tensor.stride())


def saved_slot_hooks(step: Step) -> torch.autograd.graph.saved_tensors_hooks:
    """Saved-tensor hooks for the expert math on slot weights: a saved view of the pool is kept as
    a :class:`_SlotReference` and read back from the slot that holds the replica at backward."""
    pool = step.group.pool

    def pack(tensor: torch.Tensor) -> Any:
        if not pool.owns(tensor):
            # Detached: a hook that returns its own input ties the graph into a cycle that
            # keeps it (and the step) alive after it is freed.
            return tensor.detach()
        slot, offset = pool.slot_of(tensor)
        return _SlotReference(step, step.expert_in(slot), offset, tensor)

    def unpack(saved: Any) -> torch.Tensor:
        if not isinstance(saved, _SlotReference):
            return saved
        slot = saved.step.slot_of(saved.expert)
        return pool.view_at(slot, saved.offset, saved.size, saved.stride)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class ReplicaWeights(torch.autograd.Function):
    """The slots' weights for one step (views of the pool, after the step's transfers), and an
    empty ``link`` that :class:`LayerBoundary` consumes so that this function's backward runs on
    every rank, replicas or not."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, step: Step, anchor: torch.Tensor, *masters: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.step = step
        ctx.frozen = [not master.requires_grad for master in masters]
        views = step.group.pool.views()
        return (*views, masters[0].new_empty(0))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:  # type: ignore[override]
        step = _take_step(ctx)
        sums = step.finish_backward(grads[:-1])
        return (None, None, *(None if frozen else grad for frozen, grad in zip(ctx.frozen, sums)))


class LayerBoundary(torch.autograd.Function):
    """The identity on the layer's routed output; its backward begins the step's backward."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, link: torch.Tensor, step: Step) -> torch.Tensor:  # type: ignore[override]
        ctx.step = step
        ctx.link = (link.dtype, link.device)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        step = _take_step(ctx)
        step.begin_backward(from_boundary=True)
        dtype, device = ctx.link
        return grad, torch.empty(0, dtype=dtype, device=device), None


def _take_step(ctx: Any) -> Step:
    """The step a function's backward serves, once: a second backward through the same graph
    (``retain_graph``) is refused."""
    step = ctx.step
    if step is None:
        from .._ultraep import RefusedError

        raise RefusedError(
            "ultraep: a second backward through the same forward (retain_graph) is not supported"
        )
    ctx.step = None
    return step
