"""The layer on a GPU: one process over NCCL, with PyTorch's synchronisation debug mode counting
every host synchronisation, against the block itself on the same GPU; and, where the backend
allows several processes on one GPU, a group of them.

Without a GPU these tests are skipped (they show as such); with ``ULTRAEP_REQUIRE_GPU=1`` (the
GPU bundle sets it) a missing GPU fails them instead. The block is defined here, in the layout of
transformers 5's MoE blocks, so that the GPU machine needs PyTorch and nothing else.
"""

from __future__ import annotations

import os
import socket
import warnings
from datetime import timedelta

import torch
from torch import nn

try:
    import pytest
except ImportError:  # the GPU bundle runs this file with python3 alone
    pytest = None

REQUIRED = os.environ.get("ULTRAEP_REQUIRE_GPU") == "1"
HIDDEN, WIDTH, EXPERTS, TOP_K, TOKENS = 256, 128, 16, 4, 4096


def gpu_or_skip() -> None:
    if torch.cuda.is_available():
        return
    if REQUIRED or pytest is None:
        raise SystemExit("ULTRAEP_REQUIRE_GPU=1 but torch sees no GPU")
    pytest.skip("no GPU here")


class Router(nn.Module):
    """Softmax over the experts, the top-k renormalised: ``(logits, weights, indices)``."""

    def __init__(self) -> None:
        super().__init__()
        self.top_k = TOP_K
        self.weight = nn.Parameter(torch.randn(EXPERTS, HIDDEN) * 0.05)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = nn.functional.linear(x, self.weight)
        weights, indices = torch.topk(logits.softmax(dim=-1), TOP_K, dim=-1)
        return logits, weights / weights.sum(dim=-1, keepdim=True), indices


class Experts(nn.Module):
    """Stacked gated experts, called as transformers 5 calls them."""

    def __init__(self) -> None:
        super().__init__()
        self.num_experts = EXPERTS
        self.hidden_dim = HIDDEN
        self.gate_up_proj = nn.Parameter(torch.randn(EXPERTS, 2 * WIDTH, HIDDEN) * 0.05)
        self.down_proj = nn.Parameter(torch.randn(EXPERTS, HIDDEN, WIDTH) * 0.05)
        self.act_fn = nn.SiLU()

    def forward(
        self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        for expert in range(self.num_experts):
            token, position = torch.where(top_k_index == expert)
            if len(token) == 0:
                continue
            gate, up = nn.functional.linear(hidden[token], self.gate_up_proj[expert]).chunk(2, -1)
            current = nn.functional.linear(self.act_fn(gate) * up, self.down_proj[expert])
            out.index_add_(0, token, current * top_k_weights[token, position, None])
        return out


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Router()
        self.experts = Experts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, weights, indices = self.gate(x)
        return self.experts(x, indices, weights)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_one_process_over_nccl_matches_the_block_and_counts_its_syncs():
    gpu_or_skip()
    import torch.distributed as dist
    from ultraep.torch import ExpertParallelMoE

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group(
        "nccl", rank=0, world_size=1, device_id=device, timeout=timedelta(seconds=60)
    )
    try:
        torch.manual_seed(0)
        block = Block().to(device)
        reference = Block().to(device)
        reference.load_state_dict(block.state_dict())
        layer = ExpertParallelMoE(block, slots=2)
        x = torch.randn(TOKENS, HIDDEN, device=device, requires_grad=True)
        expected = reference(x)
        expected.sum().backward()
        expected_grad = x.grad.clone()
        x.grad = None
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            out = layer(x)
            out.sum().backward()
            torch.cuda.set_sync_debug_mode("default")
        syncs = [str(warning.message) for warning in caught if "synchron" in str(warning.message)]
        print(f"host synchronisations in one forward and backward: {len(syncs)}")
        for message in syncs:
            print("  ", message.splitlines()[0])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad, expected_grad, rtol=1e-5, atol=1e-6)
        # The gathered count matrix is the one host read.
        assert len(syncs) <= 2, syncs
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # The GPU bundle runs this file with python3 alone (its machine may have no pytest); its dry
    # run, on a machine without a GPU, only checks that the package imports.
    import ultraep.torch  # noqa: F401

    if not torch.cuda.is_available() and not REQUIRED:
        print("no GPU: the PyTorch layer's GPU trial not run (the package imports)")
    else:
        REQUIRED = True
        test_one_process_over_nccl_matches_the_block_and_counts_its_syncs()
        print("test_gpu.py: passed")
