"""Replica weights in, replica gradients out.

The forward runs the engine's transfer program: every message is a byte range of one expert's
state (its ``gate_up_proj`` then its ``down_proj``, as stored), sent from the expert's master or
from a relay's slot to a replica slot, with a tag that both sides derive from the same program.
Messages that depend on a relay having received first run in a later wave; each wave is one
``batch_isend_irecv``. The backward sends every replica's gradient to its master's rank and sums
them there with the engine, in the documented order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .._ultraep import Engine
from .errors import group_operation

# Columns of a transfer program row.
TAG, EXPERT, FROM_RANK, FROM_SLOT, TO_RANK, TO_SLOT, OFFSET, BYTES, AFTER = range(9)


def waves(program: np.ndarray) -> list[np.ndarray]:
    """The program's rows grouped into waves: a message that must wait for a relay to have
    received (``after`` >= 0) runs one wave after the message it waits for."""
    row_of_tag = {int(tag): index for index, tag in enumerate(program[:, TAG])}
    level = np.zeros(len(program), dtype=np.int64)
    for index in range(len(program)):
        depth, row = 0, index
        while program[row, AFTER] >= 0:
            row = row_of_tag[int(program[row, AFTER])]
            depth += 1
            if depth > len(program):
                raise ValueError("the transfer program's dependencies form a cycle")
        level[index] = depth
    return [np.flatnonzero(level == depth) for depth in range(int(level.max(initial=-1)) + 1)]


class ReplicaExchange:
    """One rank's replica buffers and the moves that fill them and drain their gradients."""

    def __init__(
        self,
        engine: Engine,
        group: dist.ProcessGroup | None,
        row_of: np.ndarray,
        gate_up_shape: tuple[int, ...],
        down_shape: tuple[int, ...],
        slots: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.engine = engine
        self.group = group
        self.rank = dist.get_rank(group)
        # Every expert's row in its home rank's stacked masters (the layer updates it in place
        # when experts move).
        self.row_of = row_of
        self.gate_up_shape = gate_up_shape
        self.down_shape = down_shape
        self.gate_up_elements = int(np.prod(gate_up_shape))
        self.state_elements = self.gate_up_elements + int(np.prod(down_shape))
        self.slots = slots
        # One expert state per slot, as one flat buffer so that any byte range of the program is
        # one contiguous view.
        self.state = torch.zeros((slots, self.state_elements), dtype=dtype, device=device)
        self.bytes_received = 0

    def peer(self, group_rank: int) -> int:
        """The global rank that point-to-point operations name for a rank of the group."""
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def slot_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots' weights, shaped like the masters' stacked ``gate_up_proj`` and ``down_proj``."""
        gate_up = self.state[:, : self.gate_up_elements].view(self.slots, *self.gate_up_shape)
        down = self.state[:, self.gate_up_elements :].view(self.slots, *self.down_shape)
        return gate_up, down

    def receive(self, program: np.ndarray, gate_up: torch.Tensor, down: torch.Tensor) -> None:
        """Runs the messages of ``program`` that this rank sends or receives."""
        self.bytes_received = 0
        if len(program) == 0:
            return
        slot_bytes = self.state.view(torch.uint8)
        staged: dict[int, torch.Tensor] = {}

        def source(row: np.ndarray) -> torch.Tensor:
            if row[FROM_SLOT] >= 0:
                return slot_bytes[int(row[FROM_SLOT])]
            expert = int(row[EXPERT])
            if expert not in staged:
                # A master's state is two tensors; the program counts bytes across both.
                local = int(self.row_of[expert])
                staged[expert] = (
                    torch.cat([gate_up[local].reshape(-1), down[local].reshape(-1)])
                    .contiguous()
                    .view(torch.uint8)
                )
            return staged[expert]

        with torch.no_grad(), group_operation(self.rank, "moving replica weights"):
            for wave in waves(program):
                operations = []
                for row in program[wave]:
                    start, end = int(row[OFFSET]), int(row[OFFSET] + row[BYTES])
                    sender, receiver = int(row[FROM_RANK]), int(row[TO_RANK])
                    tag = int(row[TAG])
                    if sender == self.rank and receiver == self.rank:
                        slot_bytes[int(row[TO_SLOT]), start:end] = source(row)[start:end]
                    elif sender == self.rank:
                        operations.append(
                            dist.P2POp(
                                dist.isend,
                                source(row)[start:end],
                                self.peer(receiver),
                                self.group,
                                tag,
                            )
                        )
                    elif receiver == self.rank:
                        self.bytes_received += end - start
                        operations.append(
                            dist.P2POp(
                                dist.irecv,
                                slot_bytes[int(row[TO_SLOT]), start:end],
                                self.peer(sender),
                                self.group,
                                tag,
                            )
                        )
                if operations:
                    for request in dist.batch_isend_irecv(operations):
                        request.wait()

    def return_gradients(
        self,
        grad_gate_up: torch.Tensor,
        grad_down: torch.Tensor,
        gate_up: torch.Tensor,
        down: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Given the gradients of the stacked weights (masters, then slots), returns the masters'
        gradients with every replica's gradient summed in."""
        masters = gate_up.shape[0]
        # Brings the slots back if the engine gave them away (it does not while the forward holds
        # them, which this layer asks for); the program is empty when nothing moves.
        if self.engine.restore(0, 0) > 0:
            self.receive(self.engine.transfer_program(), gate_up, down)
        self.engine.reduce_gradients(0, 0)
        sends = self.engine.gradient_sends()
        master_grads = self._flat(grad_gate_up[:masters], grad_down[:masters])
        if len(sends) == 0:
            return grad_gate_up[:masters], grad_down[:masters]
        replica_grads = self._flat(grad_gate_up[masters:], grad_down[masters:])
        received: dict[int, dict[int, torch.Tensor]] = {}
        operations = []
        for tag, (expert, sender, slot, receiver) in enumerate(sends.tolist()):
            if sender == self.rank:
                operations.append(
                    dist.P2POp(
                        dist.isend, replica_grads[slot], self.peer(receiver), self.group, tag
                    )
                )
            elif receiver == self.rank:
                buffer = torch.empty_like(master_grads[0])
                received.setdefault(expert, {})[sender] = buffer
                operations.append(
                    dist.P2POp(dist.irecv, buffer, self.peer(sender), self.group, tag)
                )
        with group_operation(self.rank, "returning replica gradients"):
            if operations:
                for request in dist.batch_isend_irecv(operations):
                    request.wait()
        # The engine sums on the host, in place; on a GPU the sum goes through host copies.
        host = master_grads if master_grads.device.type == "cpu" else master_grads.cpu()
        for expert, replicas in sorted(received.items()):
            self.engine.sum_replica_gradients(
                expert,
                host[int(self.row_of[expert])].numpy(),
                {rank: grad.cpu().numpy() for rank, grad in replicas.items()},
            )
        if host is not master_grads:
            master_grads.copy_(host)
        gate_up_grad = master_grads[:, : self.gate_up_elements].reshape(
            grad_gate_up[:masters].shape
        )
        down_grad = master_grads[:, self.gate_up_elements :].reshape(grad_down[:masters].shape)
        return gate_up_grad.to(grad_gate_up.dtype), down_grad.to(grad_down.dtype)

    def _flat(self, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """Expert states as rows of FP32 values (the engine's gradient state)."""
        count = gate_up.shape[0]
        return (
            torch.cat([gate_up.reshape(count, -1), down.reshape(count, -1)], dim=1)
            .to(torch.float32)
            .contiguous()
        )


class ReplicaWeights(torch.autograd.Function):
    """The stacked weights a rank computes with: its masters, then its slots. Forward fills the
    slots; backward returns the slots' gradients to their masters."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gate_up: torch.Tensor,
        down: torch.Tensor,
        exchange: ReplicaExchange,
        program: np.ndarray,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        exchange.receive(program, gate_up, down)
        ctx.exchange = exchange
        ctx.save_for_backward(gate_up, down)
        slot_gate_up, slot_down = exchange.slot_weights()
        return torch.cat([gate_up, slot_gate_up]), torch.cat([down, slot_down])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_gate_up: torch.Tensor, grad_down: torch.Tensor
    ) -> tuple[Any, ...]:
        gate_up, down = ctx.saved_tensors
        grads = ctx.exchange.return_gradients(grad_gate_up, grad_down, gate_up, down)
        return grads[0], grads[1], None, None
