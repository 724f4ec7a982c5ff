"""The MoE step simulator from Python: every balancer on a published scenario or on recorded loads.

The figures are simulated, by the timing model of ``ultraep-bench`` (``ultraep simulate``): the
layer's GEMMs, all-to-all and weight transfers on the topology's links, with ultraep's planning
time measured on this CPU. They are not measurements of a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from ._ultraep import Trace
from ._ultraep import simulate as _simulate


@dataclasses.dataclass(frozen=True)
class Simulation:
    """Every balancer's simulated figures on one scenario or trace."""

    scenario: dict[str, Any]
    """The scenario: model, mode, tokens per rank, published figures (for a trace, zeros)."""
    model: str
    initial_imbalance: float
    """Mean max/mean rank imbalance of the loads with no balancing."""
    balancers: dict[str, dict[str, Any]]
    """Per balancer: imbalance, worst_imbalance, step_seconds, tflops_per_gpu,
    fraction_of_ideal, peak_receive_bytes, planning_us, transfer_us, replicas,
    per_layer_imbalance."""
    table: str
    """The figures as the Markdown table ``ultraep simulate`` prints."""

    def speedup_over_none(self) -> float:
        """ultraep's simulated throughput over no balancing."""
        return self.balancers["none"]["step_seconds"] / self.balancers["ultraep"]["step_seconds"]


def simulate(
    scenario: str | None = None,
    *,
    trace: Trace | str | os.PathLike[str] | None = None,
    model: str = "Qwen3-235B",
    mode: str = "prefill",
    sequence: int = 8192,
    full: bool = False,
) -> Simulation:
    """Runs every balancer through the MoE step simulator.

    Args:
        scenario: a published scenario, by name or a part of it (``"DeepSeek"``); the default
            is Qwen3-235B prefill on STEM data.
        trace: recorded loads instead: a :class:`Trace`, or the path of a JSON-lines trace or a
            TensorRT-LLM expert-statistics directory.
        model: the model the trace's loads run on: GLM-4.5-Air, Qwen3-235B, DeepSeek-V3 or
            GLM-4.7 (its experts must match the trace's).
        mode: ``"training"``, ``"prefill"`` or ``"decode"`` (for a trace).
        sequence: attention context length (for a trace).
        full: more steps and layers (for a scenario).

    Raises:
        ValueError: for an unknown scenario or model, a trace that does not fit the model, or a
            file that cannot be read.
    """
    if trace is not None and not isinstance(trace, Trace):
        trace = Trace.read(os.fspath(trace))
    text, table = _simulate(
        scenario, trace=trace, model=model, mode=mode, sequence=sequence, full=full
    )
    result = json.loads(text)
    return Simulation(
        scenario=result["scenario"],
        model=result["model"],
        initial_imbalance=result["initial_imbalance"],
        balancers={entry["balancer"]: entry for entry in result["balancers"]},
        table=table,
    )
