"""The engine's collective over the expert-parallel process group: what
``Engine.step_by_domain`` calls to sum the ranks' counts and gather their replicas and cells."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from .errors import group_operation


class GroupCollective:
    """``all_gather`` and ``all_reduce_sum`` of uint32 arrays over ``group``, through tensors on
    ``device`` (the backend's: gloo on CPUs, NCCL on GPUs)."""

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.ranks = dist.get_world_size(group)
        self.device = device

    def all_gather(self, local: np.ndarray) -> np.ndarray:
        """Every rank's ``local``, rank after rank."""
        gathered = torch.empty(self.ranks * len(local), dtype=torch.int32, device=self.device)
        mine = torch.as_tensor(local.view(np.int32), device=self.device)
        with group_operation(self.rank, "gathering replicas (all_gather_into_tensor)"):
            dist.all_gather_into_tensor(gathered, mine, group=self.group)
        return gathered.cpu().numpy().view(np.uint32)

    def all_reduce_sum(self, local: np.ndarray) -> np.ndarray:
        """The element-wise sum of every rank's ``local`` (counts, whose sums fit 32 bits)."""
        sums = torch.as_tensor(local.astype(np.int64), device=self.device)
        with group_operation(self.rank, "summing the counts (all_reduce)"):
            dist.all_reduce(sums, group=self.group)
        return (sums.cpu().numpy() & 0xFFFF_FFFF).astype(np.uint32)
