"""Expert-parallel MoE layers for ``torch.distributed``, balanced by ultraep in every forward.

:class:`ExpertParallelMoE` takes a Hugging Face MoE block with stacked experts (transformers 5:
Qwen3-MoE, Mixtral, DeepSeek-V3 and the families built the same way) and an expert-parallel
process group. Each process keeps its own experts (its shard of the stacked weights) and
``slots`` replica buffers. Every forward runs the block's router, gathers the exact load of every
rank, plans it with ultraep (every rank computes the same plan), moves the replicas' weights with
batched point-to-point operations, and sends each token to the instance the plan gives it. The
backward returns every replica's weight gradient to its master's rank, where it is summed in the
documented fixed order (see :meth:`ultraep.Engine.sum_replica_gradients`).

Any failure of the group (a peer process that died, a collective past the group's timeout) is
raised as :class:`PeerLostError`.
"""

from __future__ import annotations

from .errors import PeerLostError
from .layer import ExpertParallelMoE, ForwardReport

__all__ = ["ExpertParallelMoE", "ForwardReport", "PeerLostError"]
