"""ultraep: exact-load, real-time expert load balancing for Mixture-of-Experts expert parallelism.

After the router of every MoE layer, every rank holds the exact count of tokens it sends to each
expert; all-gathered, the counts form the load matrix (ranks x experts). :class:`Planner` plans
it: which hot experts get replicas in spare slots of cold ranks of the same scale-up domain, and
each instance's integer quota, so that every rank gets about the same number of tokens. Every rank
computes the same plan from the same matrix.

>>> import numpy as np, ultraep
>>> planner = ultraep.Planner(homes=[0, 0, 1, 1], domains=[0, 0], slots_per_rank=1,
...                           min_replica_tokens=1)
>>> plan = planner.plan(np.array([[90, 10, 5, 5], [90, 10, 5, 5]], dtype=np.uint32))
>>> round(plan.initial_imbalance, 2), round(plan.imbalance, 2)
(1.82, 1.01)

:class:`LoadHistory` and :func:`rehome` are the slow loop for groups that span several domains:
every few hundred steps, masters swapped between domains so that the domains' expected loads
even out (``ExpertParallelMoE.change_layout`` and ``Engine.begin_layout_change`` carry it out).

:class:`Engine` is one rank's engine for a process per GPU (``ultraep.torch`` builds an
expert-parallel layer on it); :func:`simulate` and :class:`Trace` run the MoE step simulator on
published scenarios or recorded loads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._ultraep import (
    DivergedError,
    Engine,
    Error,
    LoadHistory,
    PeerLostError,
    Plan,
    RefusedError,
    StepFigures,
    Trace,
    rehome,
)
from ._ultraep import Planner as _Planner
from .simulation import Simulation, simulate

__all__ = [
    "DivergedError",
    "Engine",
    "Error",
    "LoadHistory",
    "PeerLostError",
    "Plan",
    "Planner",
    "RefusedError",
    "Simulation",
    "StepFigures",
    "Trace",
    "read_trace",
    "rehome",
    "simulate",
]
__version__ = "0.1.0"


class Planner:
    """The exact-load planner of one expert-parallel group.

    Args:
        homes: the home rank of every expert of a layer.
        domains: the scale-up domain label of every rank (ranks of one NVLink domain share it).
        slots_per_rank: redundant slots per rank for replicas.
        tolerance_ppm: how far above the mean the busiest rank may stay, in parts per million.
        min_replica_tokens: the smallest quota a replica may get.
        master_keeps_token: a loaded master keeps at least one token.
        split: how a source's tokens for an expert are shared among its instances:
            ``"locality"`` (the default), ``"proportional"``, ``"contiguous"`` or ``"none"``.
        token_cost: what one token costs its rank, in any integer unit (default 1).
        instance_cost: what every instance with a token costs its rank besides, in the same
            unit: its weight read, for decode. 0 (the default) balances tokens only.

    Raises:
        ValueError: if the layout, the domains or the settings do not hold together.
    """

    def __init__(
        self,
        homes: Sequence[int],
        domains: Sequence[int],
        slots_per_rank: int = 2,
        *,
        tolerance_ppm: int = 10_000,
        min_replica_tokens: int = 1024,
        master_keeps_token: bool = True,
        split: str = "locality",
        token_cost: int = 1,
        instance_cost: int = 0,
    ) -> None:
        self._planner = _Planner(
            list(homes),
            list(domains),
            slots_per_rank,
            tolerance_ppm=tolerance_ppm,
            min_replica_tokens=min_replica_tokens,
            master_keeps_token=master_keeps_token,
            split=split,
            token_cost=token_cost,
            instance_cost=instance_cost,
        )

    @property
    def ranks(self) -> int:
        """Ranks of the group."""
        return self._planner.ranks

    @property
    def experts(self) -> int:
        """Experts of a layer."""
        return self._planner.experts

    def plan(self, loads: Any) -> Plan:
        """Plans ``loads``: tokens from every rank (rows) to every expert (columns).

        ``loads`` is a C-contiguous 2-D array of ``uint32`` or ``int32`` counts: a numpy array,
        or anything numpy views without copying, such as a CPU ``torch.Tensor``. It is read in
        place, with the GIL released while the plan is made.

        Raises:
            TypeError: for another dtype.
            ValueError: for another shape, a non-contiguous array or a negative count.
        """
        array = np.asarray(loads)
        if array.ndim == 2 and not array.flags["C_CONTIGUOUS"]:
            raise ValueError("loads must be C-contiguous (use numpy.ascontiguousarray)")
        return self._planner.plan(array)


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Reads recorded loads: a JSON-lines trace file (``ultraep_trace`` version 1) or a TensorRT-LLM
    expert-statistics directory.

    Raises:
        ValueError: if the file is missing or malformed.
    """
    return Trace.read(os.fspath(path))
