"""The host overhead of `ultraep.torch.ExpertParallelMoE` per forward on CPU processes, next to the
time of the Hugging Face block's own forward on the same tokens; and, first, the reroute on
tensors against the numpy reroute of the layer before, in one process.

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
PHASES = ("gather", "plan", "weights", "reroute", "dispatch", "experts", "combine")
# The reroute benchmark: one rank of an 8-rank group, 64 experts, 8,192 tokens x top-8.
REROUTE_RANKS, REROUTE_EXPERTS, REROUTE_TOKENS, REROUTE_TOP_K = 8, 64, 8192, 8


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


def reroute_benchmark() -> tuple[float, float, float]:
    """Medians in milliseconds, over 20 runs in this process (one thread): the reroute as the
    layer does it now (the rank's dispatch tables from the plan, then torch ops: sort, searchsorted,
    scatter, and the send order), as the layer did it before (the engine's reroute on the router's
    ids copied to numpy, then numpy's lookup, stable argsort and bincount), and the tables alone."""
    import numpy as np
    import ultraep
    from ultraep.torch.dispatch import (
        build,
        counts_by_source,
        local_indices,
        reroute,
        send_order,
    )

    ranks, experts, tokens, top_k = (
        REROUTE_RANKS,
        REROUTE_EXPERTS,
        REROUTE_TOKENS,
        REROUTE_TOP_K,
    )
    per_rank = experts // ranks
    rng = np.random.default_rng(0)
    popularity = (np.arange(experts) + 1.0) ** -1.2
    popularity /= popularity.sum()
    homes = [expert // per_rank for expert in range(experts)]
    group = [
        ultraep.Engine(
            rank,
            homes,
            layers=1,
            top_k=top_k,
            hidden=64,
            expert_width=64,
            dtype="f32",
            domains=[0] * ranks,
            min_replica_tokens=16,
        )
        for rank in range(ranks)
    ]
    ids = [
        np.argsort(rng.random((tokens, experts)) ** (1 / popularity), axis=1)[:, -top_k:]
        .astype(np.uint32)
        .ravel()
        for _ in range(ranks)
    ]
    rows = np.concatenate([engine.gather_row(ids[engine.rank]) for engine in group])
    engine = group[0]
    engine.step(0, 0, rows)
    mine = torch.from_numpy(ids[0].astype(np.int64))
    master_row = np.array([engine.master_home(0, e)[1] for e in range(experts)], dtype=np.int64)

    def tables():
        instances = engine.instances(0, 0)
        row, columns = engine.split(0, 0)
        local_of = local_indices(instances, master_row, per_rank)
        by_source = counts_by_source(columns, local_of, ranks, per_rank + 2)
        return build(instances, row, by_source, master_row, per_rank, ranks, torch.device("cpu"))

    def on_tensors():
        dispatch = tables()
        return send_order(reroute(mine, dispatch), dispatch)

    def in_numpy():
        host = mine.numpy().astype(np.uint32)
        instances = engine.instances(0, 0)
        routed = engine.reroute(0, 0, host).astype(np.int64)
        target = instances[routed, 1]
        order = np.argsort(target, kind="stable")
        return torch.from_numpy(order), np.bincount(target, minlength=ranks)

    def median_ms(call) -> float:
        times = []
        for _ in range(22):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times[2:]) * 1e3

    assert torch.equal(
        reroute(mine, tables()), torch.from_numpy(engine.reroute(0, 0, ids[0]).astype(np.int64))
    )
    return median_ms(on_tensors), median_ms(in_numpy), median_ms(tables)


def main() -> None:
    torch.set_num_threads(1)
    device_ms, numpy_ms, tables_ms = reroute_benchmark()
    print(
        f"Reroute of {REROUTE_TOKENS} tokens x top-{REROUTE_TOP_K} on one rank of "
        f"{REROUTE_RANKS}, {REROUTE_EXPERTS} experts, one thread; medians of 20 runs:\n"
    )
    print("| reroute | ms |")
    print("|---|---|")
    print(f"| torch ops (the layer now; runs on the input's device) | {device_ms:.3f} |")
    print(f"| of which the tables from the plan, on the host | {tables_ms:.3f} |")
    print(f"| numpy on the host (the layer before; ids copied off the device) | {numpy_ms:.3f} |")
    print()
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
    overhead = sum(median_ms(phase) for phase in ("gather", "plan", "weights", "reroute"))
    print(
        f"| **ultraep: gather + plan + weights + reroute** | **{overhead:.3f}** | "
        f"**{overhead / block_ms:.1%}** |"
    )
    print(
        f"| whole layer forward | {median_ms('layer'):.3f} | {median_ms('layer') / block_ms:.1%} |"
    )
    print(f"| the block's own forward (one process, all experts) | {block_ms:.3f} | 100% |")


if __name__ == "__main__":
    main()
