"""Types of the extension module; the documented API is :mod:`ultraep`."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

class Error(RuntimeError):
    """Every error of ultraep that is not a bad argument."""

class RefusedError(Error):
    """The engine refused a call in its present state; nothing changed."""

class DivergedError(Error):
    """The ranks' metadata digests differ: every rank raises it."""

class PeerLostError(Error):
    """An operation of the expert-parallel group failed (a peer died, or a timeout)."""

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
        token_cost: int = 1,
        instance_cost: int = 0,
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

class StepFigures:
    """What one step planned and moved: the group's figures (every rank has the same)."""
    @property
    def initial_imbalance(self) -> float: ...
    @property
    def imbalance(self) -> float: ...
    @property
    def replicas(self) -> int: ...
    @property
    def copies(self) -> int: ...
    @property
    def copies_skipped(self) -> int: ...
    @property
    def bytes_moved(self) -> int: ...

class Engine:
    """One rank's engine of an expert-parallel group, in host-driven mode."""
    def __init__(
        self,
        rank: int,
        homes: Sequence[int],
        *,
        layers: int,
        top_k: int,
        hidden: int,
        expert_width: int,
        preset: str = "hgx-h100",
        nodes: int = 1,
        domains: Sequence[int] | None = None,
        dtype: str = "bf16",
        training: bool = True,
        slots_per_rank: int = 2,
        staging_slots: int = 0,
        microbatches_in_flight: int = 1,
        min_replica_tokens: int = 1024,
        hold_forward: bool = False,
    ) -> None: ...
    @property
    def rank(self) -> int: ...
    @property
    def row_words(self) -> int: ...
    @property
    def state_bytes(self) -> int: ...
    def gather_row(self, ids: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]: ...
    def step(
        self, microbatch: int, layer: int, gathered: npt.NDArray[np.uint32]
    ) -> StepFigures: ...
    def step_by_domain(
        self, microbatch: int, layer: int, ids: npt.NDArray[np.uint32], collective: Any
    ) -> StepFigures:
        """``collective`` has ``all_gather(local) -> gathered`` and may have
        ``all_reduce_sum(local) -> sums`` (1-D uint32 arrays)."""
    def step_by_domain_from_counts(
        self, microbatch: int, layer: int, counts: npt.NDArray[np.uint32], collective: Any
    ) -> StepFigures: ...
    @property
    def digest(self) -> int: ...
    def reroute(
        self, microbatch: int, layer: int, ids: npt.NDArray[np.uint32]
    ) -> npt.NDArray[np.uint32]: ...
    def split(
        self, microbatch: int, layer: int, rank: int | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64] | None]:
        """A rank's (default: this one's) ``(row, columns)`` of the step's split, rows
        ``[source, expert, instance, tokens]``; ``columns`` is ``None`` for a step planned by
        domain."""
    def drop_backward(self, microbatch: int, layer: int) -> None: ...
    def abandon_backward(self, microbatch: int, layer: int) -> None: ...
    def instances(self, microbatch: int, layer: int) -> npt.NDArray[np.int64]:
        """Rows ``[expert, rank, slot, quota]``; ``slot`` is -1 for a master."""
    def transfer_program(self) -> npt.NDArray[np.int64]:
        """Rows ``[tag, expert, from_rank, from_slot, to_rank, to_slot, offset, bytes, after]``."""
    def restore(self, microbatch: int, layer: int) -> int: ...
    def reduce_gradients(self, microbatch: int, layer: int) -> None: ...
    def gradient_sends(self) -> npt.NDArray[np.int64]:
        """Rows ``[expert, from_rank, from_slot, to_rank]``."""
    def sum_replica_gradients(
        self,
        expert: int,
        master: npt.NDArray[np.float32],
        replicas: dict[int, npt.NDArray[np.float32]],
    ) -> None: ...
    def masters_updated(self) -> None: ...
    def begin_layout_change(self, layer: int, homes: Sequence[int]) -> npt.NDArray[np.int64]:
        """Rows ``[expert, from_rank, to_rank, staging_slot, index]``."""
    def advance_layout_change(self, budget: int) -> tuple[int, int, int]:
        """``(copied, staged, moves)``."""
    def switch_layout(self) -> None: ...
    def abort_layout_change(self) -> None: ...
    def master_home(self, layer: int, expert: int) -> tuple[int, int]: ...
    def homes(self, layer: int) -> npt.NDArray[np.uint32]: ...

class LoadHistory:
    """A decaying history of every expert's load."""
    def __init__(self, experts: int, shift: int = 6) -> None: ...
    def record(self, loads: npt.NDArray[np.uint32]) -> None: ...
    @property
    def expected(self) -> npt.NDArray[np.uint64]: ...

def rehome(
    homes: Sequence[int],
    domains: Sequence[int],
    expected: npt.NDArray[np.uint64],
    *,
    tolerance_ppm: int = 10_000,
    max_moves: int = 16,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64], float, float]:
    """``(homes, moves [expert, from_rank, to_rank], imbalance_before, imbalance_after)``."""

class Trace:
    """Recorded router loads: steps of layers of ranks x experts token counts."""
    def __init__(
        self, loads: npt.NDArray[np.uint32] | npt.NDArray[np.int32], *, top_k: int | None = None
    ) -> None: ...
    @staticmethod
    def read(path: str) -> Trace: ...
    @staticmethod
    def from_jsonl(text: str) -> Trace: ...
    def to_jsonl(self) -> str: ...
    @property
    def loads(self) -> npt.NDArray[np.uint32]:
        """Shape ``[steps, layers, ranks, experts]``."""
    @property
    def ranks(self) -> int: ...
    @property
    def experts(self) -> int: ...
    @property
    def top_k(self) -> int | None: ...
    @property
    def layers(self) -> int: ...
    @property
    def steps(self) -> int: ...

def simulate(
    scenario: str | None = None,
    *,
    trace: Trace | None = None,
    model: str = "Qwen3-235B",
    mode: str = "prefill",
    sequence: int = 8192,
    full: bool = False,
) -> tuple[str, str]: ...
