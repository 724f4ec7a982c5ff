"""The binding's array inputs under random abuse: shapes, dtypes, strides, sizes and values that a
caller may hand in by mistake. Every call must return a result or raise ``TypeError`` or
``ValueError`` (or the engine's ``ultraep.RefusedError``); any other exception, a crash or a hang is a bug.

The draws are seeded, so a failure names its case and reproduces. ``ULTRAEP_FUZZ_CASES`` sets
how many cases each test draws (default 400)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ultraep

CASES = int(os.environ.get("ULTRAEP_FUZZ_CASES", "400"))
DTYPES = [
    np.uint32,
    np.int32,
    np.int64,
    np.uint64,
    np.float32,
    np.float64,
    np.uint8,
    np.bool_,
    np.int16,
]


def random_array(rng: np.random.Generator, ndim: int | None = None) -> np.ndarray:
    """An array of random rank, shape, dtype, layout and values."""
    ndim = int(rng.integers(0, 6)) if ndim is None else ndim
    shape = tuple(int(rng.choice([0, 1, 2, 3, 5, 8, 33])) for _ in range(ndim))
    dtype = DTYPES[int(rng.integers(0, len(DTYPES)))]
    values = rng.integers(-(2**40), 2**40, size=shape)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        values = np.abs(values) % 50
    elif kind == 1:
        values = np.full(shape, 2**32 - 1)
    array = values.astype(dtype, copy=False) if dtype is not np.bool_ else values > 0
    layout = int(rng.integers(0, 3))
    if layout == 1 and ndim >= 1 and array.shape[0] > 1:
        array = array[::-1]  # a negative stride
    elif layout == 2 and ndim >= 2:
        array = np.asfortranarray(array)
    return array


def survives(call, *args) -> str:
    """Runs ``call(*args)``; returns how it ended, failing on anything but a result or a clear
    error."""
    try:
        call(*args)
    except (TypeError, ValueError, ultraep.RefusedError) as error:
        assert str(error), "an error says what is wrong"
        return "refused"
    return "ran"


@pytest.mark.parametrize("seed", [1, 2])
def test_the_planner_takes_any_array_or_refuses_it(seed: int):
    rng = np.random.default_rng(seed)
    planner = ultraep.Planner([r for r in range(8) for _ in range(4)], [0] * 8, slots_per_rank=2)
    ends: dict[str, int] = {}
    for _ in range(CASES):
        ndim = int(rng.choice([2, 2, 2, 1, 3]))
        array = random_array(rng, ndim)
        if rng.integers(0, 3) == 0 and ndim == 2:
            array = np.abs(rng.integers(0, 1000, size=(8, 32))).astype(
                DTYPES[int(rng.integers(0, 3))]
            )
        end = survives(planner.plan, array)
        ends[end] = ends.get(end, 0) + 1
    assert ends.get("ran", 0) > 0 and ends.get("refused", 0) > 0, ends


def build_and_read(array: np.ndarray, top_k: int | None) -> None:
    """A trace of ``array``, written as JSON lines and read back unchanged."""
    trace = ultraep.Trace(array, top_k=top_k)
    again = ultraep.Trace.from_jsonl(trace.to_jsonl())
    assert np.array_equal(again.loads, trace.loads)


@pytest.mark.parametrize("seed", [3, 4])
def test_traces_take_any_array_or_refuse_it(seed: int):
    rng = np.random.default_rng(seed)
    ends: dict[str, int] = {}
    for _ in range(CASES):
        array = random_array(rng, int(rng.choice([4, 4, 3, 5])))
        top_k = [None, 0, 1, 8, 2**31][int(rng.integers(0, 5))]

        end = survives(build_and_read, array, top_k)
        ends[end] = ends.get(end, 0) + 1
    assert ends.get("ran", 0) > 0 and ends.get("refused", 0) > 0, ends


@pytest.mark.parametrize("seed", [5])
def test_the_engine_takes_any_router_output_or_refuses_it(seed: int):
    rng = np.random.default_rng(seed)
    homes = [r for r in range(8) for _ in range(4)]
    engine = ultraep.Engine(0, homes, layers=2, top_k=4, hidden=16, expert_width=16, training=False)
    ends: dict[str, int] = {}
    for _ in range(CASES):
        ids = random_array(rng, int(rng.choice([1, 1, 2, 0])))
        gathered = random_array(rng, int(rng.choice([1, 1, 2])))
        end = survives(engine.gather_row, ids)
        ends[end] = ends.get(end, 0) + 1
        microbatch, layer = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        end = survives(engine.step, microbatch, layer, gathered)
        ends[end] = ends.get(end, 0) + 1
        end = survives(engine.reroute, microbatch, layer, ids)
        ends[end] = ends.get(end, 0) + 1
    assert ends.get("refused", 0) > 0, ends
