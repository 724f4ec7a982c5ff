"""Token dispatch and combine: ``all_to_all_single`` with its own backward (the reverse exchange),
so gradients of the hidden states flow back to the ranks the tokens came from."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

from .errors import group_operation


@dataclasses.dataclass(frozen=True)
class TokenRoute:
    """How many rows this rank sends to each rank of ``group`` and receives from each."""

    sends: list[int]
    receives: list[int]
    group: dist.ProcessGroup | None
    rank: int

    def reversed(self) -> TokenRoute:
        """The route back: what was received is sent."""
        return TokenRoute(self.receives, self.sends, self.group, self.rank)

    def exchange(self, rows: torch.Tensor) -> torch.Tensor:
        """Sends ``sends[r]`` consecutive rows to rank ``r``; returns the rows received,
        ``receives[r]`` from rank ``r``, in rank order. Differentiable."""
        if rows.requires_grad:
            return _AllToAll.apply(rows, self)
        return self._exchange(rows)

    def _exchange(self, rows: torch.Tensor) -> torch.Tensor:
        out = rows.new_empty((sum(self.receives), *rows.shape[1:]))
        with group_operation(self.rank, "exchanging tokens (all_to_all_single)"):
            dist.all_to_all_single(
                out, rows.contiguous(), self.receives, self.sends, group=self.group
            )
        return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, route: TokenRoute) -> torch.Tensor:  # type: ignore[override]
        ctx.route = route
        return route._exchange(rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return ctx.route.reversed()._exchange(grad), None
