"""Expert-parallel MoE layers for ``torch.distributed``, balanced by ultraep in every forward.

:func:`parallelize` wraps every MoE block of a transformers model; :class:`ExpertParallelMoE`
wraps one. Each process keeps its own experts (its shard of the stacked weights) and a pool of
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
from .layer import ExpertParallelMoE, ForwardReport
from .step import BackwardReport

__all__ = [
    "BackwardReport",
    "ExpertParallelMoE",
    "ForwardReport",
    "PeerLostError",
    "UnsupportedBlockError",
]
