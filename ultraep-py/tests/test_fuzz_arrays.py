"""The binding's array inputs under random abuse: shapes, dtypes, strides, sizes and values that a
caller may hand in by mistake. Every call must return a result or raise ``TypeError`` or
``ValueError`` (or the engine's ``ultraep.RefusedError`` and ``ultraep.DivergedError``); any other exception, a crash or a hang is a bug.

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
    except (TypeError, ValueError, ultraep.RefusedError, ultraep.DivergedError) as error:
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


def router_ids(rng: np.random.Generator, experts: int, top_k: int) -> np.ndarray:
    """A rank's router output: a random number of tokens, each naming ``top_k`` distinct
    experts."""
    tokens = int(rng.choice([0, 1, 2, 5, 33]))
    if tokens == 0:
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate(
        [rng.choice(experts, size=top_k, replace=False) for _ in range(tokens)]
    ).astype(np.uint32)


def mutated(rng: np.random.Generator, array: np.ndarray) -> tuple[np.ndarray, str]:
    """``array`` as it is (in two cases of five), or with one of the mistakes a caller or a torn
    message makes: a word changed, words cut off or added, another dtype, a reversed stride, or
    any array at all."""
    kind = int(rng.integers(0, 10))
    if kind < 4 or array.size == 0 and kind < 8:
        return array, "valid"
    array = array.copy()
    if kind == 4:
        at = int(rng.integers(0, array.size))
        array[at] = int(rng.choice([0, 1, array[at] + 1, 2**32 - 1]))
        return array, "word changed"
    if kind == 5:
        return array[: int(rng.integers(0, array.size))], "cut off"
    if kind == 6:
        return np.concatenate([array, array[:3]]), "words added"
    if kind == 7:
        return array.astype(DTYPES[int(rng.integers(0, len(DTYPES)))]), "dtype"
    if kind == 8:
        return array[::-1], "reversed"
    return random_array(rng, int(rng.choice([0, 1, 1, 2]))), "random"


@pytest.mark.parametrize("seed", [5, 6])
def test_the_engine_takes_any_router_output_or_refuses_it(seed: int):
    """Every rank's gathered row is built by its own engine from real router output, so that
    valid calls run the planner, the digest check and the reroute, and the mutations of them are
    one mistake away from valid. Most calls must reach the valid path, and every mutation that
    breaks the message must be refused."""
    rng = np.random.default_rng(seed)
    experts, top_k = 32, 4
    homes = [r for r in range(8) for _ in range(4)]
    engines = [
        ultraep.Engine(
            rank, homes, layers=2, top_k=top_k, hidden=16, expert_width=16, training=False
        )
        for rank in range(8)
    ]
    engine = engines[0]
    ends: dict[str, int] = {}

    def count(call: str, end: str) -> None:
        ends[f"{call} {end}"] = ends.get(f"{call} {end}", 0) + 1

    for case in range(CASES):
        ids = [router_ids(rng, experts, top_k) for _ in engines]
        rows = [member.gather_row(mine) for member, mine in zip(engines, ids)]
        gathered, how = mutated(rng, np.concatenate(rows))
        # A new microbatch each case: no step is planned twice.
        microbatch, layer = case, int(rng.integers(0, 2))
        # Every rank steps on the same message and must end alike: the ranks stay in step.
        every = {survives(member.step, microbatch, layer, gathered) for member in engines}
        assert len(every) == 1, f"case {case}: the ranks ended differently on one message"
        (end,) = every
        count("step", end)
        if how in ("cut off", "words added", "random") and end == "ran":
            pytest.fail(f"case {case}: a gathered message {how} was planned")
        mine, ids_how = mutated(rng, ids[0])
        end = survives(engine.reroute, microbatch, layer, mine)
        count("reroute", end)
        count("gather_row", survives(engine.gather_row, mine))
        if ids_how == "valid" and how == "valid":
            assert end == "ran", f"case {case}: a valid reroute was refused"
    print("engine fuzz ends:", dict(sorted(ends.items())))
    # The valid path is reached: about two calls in five plan and reroute for real.
    assert ends.get("step ran", 0) >= CASES // 4, ends
    assert ends.get("reroute ran", 0) >= CASES // 8, ends
    assert ends.get("step refused", 0) > 0 and ends.get("reroute refused", 0) > 0, ends
