"""One rank's replica slots, shared by every layer of the group, and the moves that fill them and
drain their gradients.

A slot holds one expert's state: the expert's stacked parameters, flattened one after another
(for the gated layout ``gate_up_proj`` then ``down_proj``, as the engine counts bytes). The
engine's transfer program names byte ranges of that state; a range that spans two parameters is
sent as one message per parameter, so that a master is sent from its own parameter rows, never
from a copy. Messages that wait for a relay run in a later wave; each wave is one
``batch_isend_irecv``. Everything stays on the pool's device.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.distributed as dist

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


@dataclasses.dataclass(frozen=True)
class StatePiece:
    """One stacked parameter's place in an expert's state."""

    name: str
    shape: tuple[int, ...]
    start: int
    """First element in the state."""
    elements: int


@dataclasses.dataclass(frozen=True)
class ExpertState:
    """How one expert's parameters lie in a slot."""

    pieces: tuple[StatePiece, ...]
    dtype: torch.dtype
    elements: int
    """Elements of a slot: the pieces, padded to a multiple of three (the engine sizes an expert
    as three equal matrices)."""

    @staticmethod
    def of(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> ExpertState:
        pieces, start = [], 0
        for name, shape in shapes.items():
            elements = math.prod(shape)
            pieces.append(StatePiece(name, tuple(shape), start, elements))
            start += elements
        return ExpertState(tuple(pieces), dtype, -(-start // 3) * 3)

    @property
    def bytes(self) -> int:
        return self.elements * torch.empty((), dtype=self.dtype).element_size()

    def byte_pieces(self, start: int, end: int) -> list[tuple[int, StatePiece, int, int]]:
        """The parts of the byte range ``[start, end)`` of a state, one per parameter it covers:
        ``(index, piece, first byte in the piece, last byte + 1 in the piece)``; padding is
        skipped."""
        size = torch.empty((), dtype=self.dtype).element_size()
        parts = []
        for index, piece in enumerate(self.pieces):
            first, last = piece.start * size, (piece.start + piece.elements) * size
            low, high = max(start, first), min(end, last)
            if low < high:
                parts.append((index, piece, low - first, high - first))
        return parts


class SlotPool:
    """The replica slots of one rank: ``slots`` expert states in one buffer on ``device``."""

    def __init__(
        self,
        group: dist.ProcessGroup | None,
        slots: int,
        state: ExpertState,
        device: torch.device,
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.slots = slots
        self.state_layout = state
        self.state = torch.zeros((slots, state.elements), dtype=state.dtype, device=device)

    @property
    def bytes(self) -> int:
        """Bytes of the pool's buffer."""
        return self.state.numel() * self.state.element_size()

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a view of the pool's buffer."""
        return tensor.untyped_storage().data_ptr() == self.state.untyped_storage().data_ptr()

    def views(self) -> list[torch.Tensor]:
        """Every stacked parameter of every slot, ``[slots, *shape]``: views of the buffer."""
        return [
            self.state[:, piece.start : piece.start + piece.elements].view(self.slots, *piece.shape)
            for piece in self.state_layout.pieces
        ]

    def slot_of(self, tensor: torch.Tensor) -> tuple[int, int]:
        """For a view of the buffer: its slot and its first element's place in the slot."""
        offset = tensor.storage_offset() - self.state.storage_offset()
        return divmod(offset, self.state_layout.elements)

    def view_at(
        self, slot: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> torch.Tensor:
        """The view of ``slot`` that :meth:`slot_of` described."""
        start = self.state.storage_offset() + slot * self.state_layout.elements + offset
        return torch.as_strided(self.state, size, stride, start)

    def peer(self, group_rank: int) -> int:
        """The global rank that point-to-point operations name for a rank of the group."""
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def run(self, program: np.ndarray, masters: list[torch.Tensor], master_row: np.ndarray) -> int:
        """Runs the messages of ``program`` this rank sends or receives; ``masters`` are this
        rank's stacked master parameters (in the state's order), ``master_row[expert]`` an
        expert's row in them. Returns the bytes this rank received."""
        received = 0
        if len(program) == 0:
            return received
        slot_bytes = self.state.view(torch.uint8)
        pieces = len(self.state_layout.pieces)
        with torch.no_grad(), group_operation(self.rank, "moving replica weights"):
            for wave in waves(program):
                operations = []
                for row in program[wave]:
                    start, end = int(row[OFFSET]), int(row[OFFSET] + row[BYTES])
                    sender, receiver = int(row[FROM_RANK]), int(row[TO_RANK])
                    if self.rank not in (sender, receiver):
                        continue
                    for index, piece, low, high in self.state_layout.byte_pieces(start, end):
                        tag = int(row[TAG]) * pieces + index
                        size = high - low
                        if sender == self.rank:
                            if row[FROM_SLOT] >= 0:
                                first = piece.start * self.state.element_size() + low
                                source = slot_bytes[int(row[FROM_SLOT]), first : first + size]
                            else:
                                parameter = masters[index][int(master_row[int(row[EXPERT])])]
                                source = parameter.reshape(-1).view(torch.uint8)[low:high]
                        if receiver == self.rank:
                            first = piece.start * self.state.element_size() + low
                            target = slot_bytes[int(row[TO_SLOT]), first : first + size]
                            received += size
                        if sender == receiver:
                            target.copy_(source)
                        elif sender == self.rank:
                            operations.append(
                                dist.P2POp(dist.isend, source, self.peer(receiver), self.group, tag)
                            )
                        else:
                            operations.append(
                                dist.P2POp(dist.irecv, target, self.peer(sender), self.group, tag)
                            )
                if operations:
                    for request in dist.batch_isend_irecv(operations):
                        request.wait()
        return received

    def return_gradients(
        self,
        sends: np.ndarray,
        replica_grads: dict[int, list[torch.Tensor | None]],
        masters: list[torch.Tensor],
        master_row: np.ndarray,
    ) -> list[torch.Tensor | None]:
        """Sends this rank's replica gradients (``replica_grads[expert]``, one per stacked
        parameter) to their masters' ranks, and returns, for this rank's stacked master
        parameters, the sum of the replica gradients they receive: for every expert, its
        replicas' gradients added in FP32 in ascending rank order, then rounded to the
        parameter's dtype (``None`` where no replica gradient arrives). ``sends`` rows are
        ``[expert, from_rank, from_slot, to_rank]``, as the engine gives them."""
        pieces = len(masters)
        operations = []
        arriving: dict[int, dict[int, list[torch.Tensor]]] = {}
        for number, (expert, sender, _, receiver) in enumerate(sends.tolist()):
            if sender == receiver or self.rank not in (sender, receiver):
                continue
            for index in range(pieces):
                tag = number * pieces + index
                if sender == self.rank:
                    grad = replica_grads[expert][index]
                    if grad is None:
                        grad = torch.zeros_like(masters[index][0])
                    operations.append(
                        dist.P2POp(
                            dist.isend, grad.contiguous(), self.peer(receiver), self.group, tag
                        )
                    )
                else:
                    buffer = torch.empty_like(masters[index][0])
                    arriving.setdefault(expert, {}).setdefault(sender, []).append(buffer)
                    operations.append(
                        dist.P2POp(dist.irecv, buffer, self.peer(sender), self.group, tag)
                    )
        with group_operation(self.rank, "returning replica gradients"):
            if operations:
                for request in dist.batch_isend_irecv(operations):
                    request.wait()
        if not arriving:
            return [None] * pieces
        sums = [torch.zeros_like(master) for master in masters]
        for expert, by_rank in sorted(arriving.items()):
            row = int(master_row[expert])
            for index in range(pieces):
                total = torch.zeros_like(masters[index][row], dtype=torch.float32)
                for _, grads in sorted(by_rank.items()):
                    total += grads[index].float()
                sums[index][row] = total.to(masters[index].dtype)
        return sums
