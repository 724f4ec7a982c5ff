"""Types of the extension module; the documented API is :mod:`ultraep`."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

class Planner:
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
    ) -> None: ...
    @property
    def ranks(self) -> int: ...
    @property
    def experts(self) -> int: ...
    def plan(self, loads: npt.NDArray[np.uint32] | npt.NDArray[np.int32]) -> Plan: ...

class Plan:
    @property
    def instances(self) -> npt.NDArray[np.int64]:
        """Rows ``[expert, rank, slot, quota]``; ``slot`` is -1 for a master."""
    @property
    def rank_loads(self) -> npt.NDArray[np.uint64]: ...
    @property
    def split(self) -> npt.NDArray[np.int64]:
        """Rows ``[source, expert, rank of the instance, tokens]``."""
    def rank_split(self, rank: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """This rank's row and its instances' columns of the contiguous split."""
    @property
    def replicas(self) -> int: ...
    @property
    def imbalance(self) -> float: ...
    @property
    def initial_imbalance(self) -> float: ...
    @property
    def lower_bound(self) -> float: ...
    @property
    def tokens_leaving_source(self) -> int: ...
    @property
    def tokens_crossing_domains(self) -> int: ...
