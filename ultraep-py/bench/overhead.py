"""The host overhead of `ultraep.torch.ExpertParallelMoE` per forward on CPU processes, next to the
time of the Hugging Face block's own forward on the same tokens.

Two gloo processes (one thread each, one per core of the 2-core machine this was written on) run
a Qwen3-MoE block of hidden size 512, expert width 256, 16 experts (8 per rank) and top-4 routing
on 1024 tokens per rank, FP32. The router's hot
experts change every forward, so that the replicas change and weights move each time. Every rank times
each phase of its forward (`ForwardReport.seconds`); the table gives the median over the timed
forwards and the ranks of each phase, and of the block's own forward (all 16 experts in the
process, no communication) on the rank's tokens. Phases that communicate (gather, weights,
dispatch, combine) include waiting for the other rank.

Run it through `cargo xtask bench --python` (a release build of the extension). These are CPU
measurements on a shared machine: compare the ratios within one run.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

RANKS, HIDDEN, WIDTH, EXPERTS, TOP_K, TOKENS = 2, 512, 256, 16, 4, 1024
WARMUP, TIMED = 3, 20
HOT_GROUPS = 8
PHASES = ("router", "gather", "plan", "weights", "reroute", "dispatch", "experts", "combine")


def block():
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    config = Qwen3MoeConfig(
        hidden_size=HIDDEN,
        moe_intermediate_size=WIDTH,
        num_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        norm_topk_prob=True,
    )
    config._experts_implementation = "eager"
    moe = Qwen3MoeSparseMoeBlock(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, parameter in sorted(moe.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        # Feature `j` (constant in every eighth forward) favours experts 2j and 2j + 1, so the
        # hot experts change every forward and the replicas with them.
        moe.gate.weight[:, :HOT_GROUPS] = 0.0
        for group in range(HOT_GROUPS):
            moe.gate.weight[2 * group : 2 * group + 2, group] = 5.0
    return moe


def tokens(rank: int, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank * 1000 + step)
    x = torch.randn(TOKENS, HIDDEN, generator=generator)
    x[:, :HOT_GROUPS] = 0.0
    x[:, step % HOT_GROUPS] = 1.0
    return x


def worker(rank: int, directory: str) -> None:
    from ultraep.torch import ExpertParallelMoE

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{directory}/store",
        rank=rank,
        world_size=RANKS,
        timeout=timedelta(seconds=120),
    )
    reference = block()
    layer = ExpertParallelMoE(block(), slots=2, min_replica_tokens=16)
    rows = []
    with torch.no_grad():
        for step in range(WARMUP + TIMED):
            x = tokens(rank, step)
            started = time.perf_counter()
            reference(x.unsqueeze(0))
            own = time.perf_counter() - started
            dist.barrier()
            started = time.perf_counter()
            layer(x.unsqueeze(0))
            total = time.perf_counter() - started
            report = layer.last_report
            if step >= WARMUP:
                rows.append(
                    {
                        **report.seconds,
                        "layer": total,
                        "block": own,
                        "copies": report.copies,
                        "imbalance": report.imbalance,
                        "initial": report.initial_imbalance,
                    }
                )
    torch.save(rows, Path(directory) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=worker, args=(r, directory)) for r in range(RANKS)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        if any(process.exitcode != 0 for process in processes):
            sys.exit("a rank failed")
        ranks = [torch.load(Path(directory) / f"rank{r}.pt") for r in range(RANKS)]

    def median_ms(key: str) -> float:
        """The median over forwards and ranks of a phase's seconds, in milliseconds."""
        return statistics.median(rank[i][key] for rank in ranks for i in range(TIMED)) * 1e3

    block_ms = median_ms("block")
    print(
        f"ExpertParallelMoE on {RANKS} CPU processes (gloo, 1 thread each): Qwen3-MoE block, "
        f"hidden {HIDDEN}, width {WIDTH}, {EXPERTS} experts, top-{TOP_K}, {TOKENS} tokens per "
        f"rank, FP32, forward under no_grad; medians over {TIMED} forwards and the ranks.\n"
    )
    initial = statistics.mean(rank[i]["initial"] for rank in ranks for i in range(TIMED))
    final = statistics.mean(rank[i]["imbalance"] for rank in ranks for i in range(TIMED))
    copies = statistics.mean(ranks[0][i]["copies"] for i in range(TIMED))
    print(f"imbalance {initial:.2f} -> {final:.3f}; {copies:.1f} replica copies per forward\n")
    print("| phase | ms | vs the block's own forward |")
    print("|---|---|---|")
    for phase in PHASES:
        value = median_ms(phase)
        print(f"| {phase} | {value:.3f} | {value / block_ms:.1%} |")
    overhead = sum(median_ms(phase) for phase in ("plan", "weights", "reroute"))
    print(f"| **plan + weights + reroute** | **{overhead:.3f}** | **{overhead / block_ms:.1%}** |")
    print(
        f"| whole layer forward | {median_ms('layer'):.3f} | {median_ms('layer') / block_ms:.1%} |"
    )
    print(f"| the block's own forward (one process, all experts) | {block_ms:.3f} | 100% |")


if __name__ == "__main__":
    main()
