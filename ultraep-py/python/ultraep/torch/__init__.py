"""Expert-parallel MoE layers for ``torch.distributed``, balanced by ultraep in every forward.

:func:`parallelize` makes every MoE block of a transformers model expert-parallel;
:class:`ExpertParallelMoE` wraps one block. Either replaces only the blocks' experts modules
(:class:`DistributedExperts`): the blocks' own routers, shared experts and gates keep running. Each process keeps its own experts (its shard of the stacked weights) and a pool of
replica slots that all wrapped layers share. Every forward runs the block's router, gathers the
exact load of every rank (the one small tensor the host reads), plans it with ultraep (every rank
computes the same plan), moves the replicas' weights with batched point-to-point operations, and
sends each token to the instance the plan gives it, with torch ops on the input's device. The
backward returns every replica's weight gradient to its master's rank, where it is summed in a
fixed order.

Errors are :class:`ultraep.Error`\\ s: :class:`PeerLostError` for a failed group (a peer process
that died, a collective past the group's timeout), :class:`ultraep.RefusedError` for a call
refused in the engine's state, :class:`UnsupportedBlockError` for a block the layer cannot run
exactly.
"""

from __future__ import annotations

from .errors import PeerLostError, UnsupportedBlockError
from .experts import DistributedExperts, ForwardReport
from .layer import ExpertParallelMoE, ModelReport, model_report, parallelize
from .step import BackwardReport

__all__ = [
    "BackwardReport",
    "DistributedExperts",
    "ExpertParallelMoE",
    "ForwardReport",
    "ModelReport",
    "PeerLostError",
    "UnsupportedBlockError",
    "model_report",
    "parallelize",
]
