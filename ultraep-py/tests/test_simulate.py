"""Traces and the MoE step simulator from Python: round trips, bad input, and the same figures as
the ``ultraep simulate`` command (the columns that do not depend on the measured planning time)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import ultraep

RANKS, EXPERTS, TOP_K = 64, 128, 8  # Qwen3-235B's routed experts on 64 GPUs


def zipf_loads(steps: int = 2, layers: int = 2, seed: int = 0) -> np.ndarray:
    """[steps, layers, ranks, experts] counts, Zipf-skewed over the experts."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, EXPERTS + 1, dtype=float) ** -0.8
    weights /= weights.sum()
    counts = rng.multinomial(TOP_K * 256, weights, size=(steps, layers, RANKS))
    return counts.astype(np.uint32)


def test_a_trace_round_trips_through_json_lines_and_a_file(tmp_path):
    loads = zipf_loads()
    trace = ultraep.Trace(loads, top_k=TOP_K)
    assert (trace.steps, trace.layers, trace.ranks, trace.experts) == (2, 2, RANKS, EXPERTS)
    assert trace.top_k == TOP_K
    assert (trace.loads == loads).all()
    assert (ultraep.Trace.from_jsonl(trace.to_jsonl()).loads == loads).all()
    path = tmp_path / "loads.jsonl"
    path.write_text(trace.to_jsonl())
    again = ultraep.read_trace(path)
    assert (again.loads == loads).all() and again.top_k == TOP_K
    assert (ultraep.Trace(loads.astype(np.int32)).loads == loads).all()


@pytest.mark.parametrize(
    ("loads", "error", "message"),
    [
        (np.zeros((1, 1, 2, 2), dtype=np.float64), TypeError, "uint32 or int32"),
        (np.zeros((1, 2, 2), dtype=np.uint32), TypeError, "4-D"),
        (-np.ones((1, 1, 2, 2), dtype=np.int32), ValueError, "negative"),
        (np.zeros((1, 0, 2, 2), dtype=np.uint32), ValueError, "must not be 0"),
    ],
)
def test_bad_loads_raise_with_the_reason(loads, error, message):
    with pytest.raises(error, match=message):
        ultraep.Trace(loads)


def test_bad_files_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="missing.jsonl"):
        ultraep.read_trace(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="header"):
        ultraep.Trace.from_jsonl('{"ultraep_trace": 1}')
    with pytest.raises(ValueError, match="mode"):
        ultraep.simulate(trace=ultraep.Trace(zipf_loads()), mode="serving")
    with pytest.raises(ValueError, match="no such scenario"):
        ultraep.simulate("Llama")
    with pytest.raises(ValueError, match="experts"):
        ultraep.simulate(trace=ultraep.Trace(zipf_loads()), model="DeepSeek-V3")


def command_table(path) -> str:
    binary = os.environ.get("ULTRAEP_BIN")
    if not binary:
        pytest.fail("ULTRAEP_BIN must name the ultraep command (cargo xtask test sets it)")
    return subprocess.run(
        [binary, "simulate", "--trace", str(path), "--mode", "training"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_simulating_a_trace_gives_the_commands_figures(tmp_path):
    trace = ultraep.Trace(zipf_loads(), top_k=TOP_K)
    path = tmp_path / "loads.jsonl"
    path.write_text(trace.to_jsonl())
    result = ultraep.simulate(trace=path, mode="training")
    assert set(result.balancers) == {
        "none",
        "eplb",
        "eplb-replace",
        "lplb",
        "eplb-oracle",
        "ultraep",
        "ideal",
    }
    ultraep_figures = result.balancers["ultraep"]
    assert ultraep_figures["imbalance"] < result.balancers["none"]["imbalance"]
    assert ultraep_figures["replicas"] > 0
    assert result.speedup_over_none() > 1.0
    # Imbalance and replicas are deterministic; the step time includes the planning time this
    # CPU measured, so it is left out of the comparison.
    rows = {}
    for line in command_table(path).splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in result.balancers:
            rows[cells[0]] = cells
    assert set(rows) == set(result.balancers)
    for name, figures in result.balancers.items():
        assert rows[name][3] == f"{figures['replicas']:.1f}", name
    summary = next(line for line in result.table.splitlines() if line.startswith("| trace"))
    finals = " / ".join(
        f"{result.balancers[name]['imbalance']:.2f}"
        for name in ("none", "eplb", "eplb-replace", "lplb", "eplb-oracle", "ultraep")
    )
    assert finals in summary
    assert finals in command_table(path)
