"""Every MoE block family of transformers 5.24 (``families.BLOCKS``): either the wrapped block
gives the block's own outputs and gradients on 4 gloo processes, in FP32 and in BF16, or it is
refused at construction with an error naming the family and why, as ``families.EXPECTED`` and
the table of ``docs/pytorch.md`` say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ep_group
import families

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# How far a result may be from the block's own, relative to the largest value of the block's
# result. In FP32, rows share matrix products with other rows than in the block, and gradients
# add in another order: a few units in the last place of the largest terms. In BF16 each product
# rounds to 8 bits of mantissa, and a gradient summed from replicas rounds once more.
TOLERANCE = {"float32": 2e-6, "bfloat16": 2e-2}


@pytest.fixture(scope="module")
def family_results(tmp_path_factory) -> dict[str, dict[str, float]]:
    directory = tmp_path_factory.mktemp("families")
    results = ep_group.run("-", Path(directory), "families", limit=600.0)
    merged: dict[str, dict[str, float]] = {}
    for result in results:
        for case, errors in result["families"].items():
            found = merged.setdefault(case, {})
            for name, value in errors.items():
                # A float is an error to bound (the largest over the ranks), a text a refusal.
                found[name] = value if isinstance(value, str) else max(found.get(name, 0.0), value)
    return merged


def test_every_supported_family_gives_the_blocks_outputs_and_gradients(family_results):
    supported = [f for f, what in families.EXPECTED.items() if not what.startswith("refused")]
    assert len(family_results) == 2 * len(supported)
    own_failures = {case for case, errors in family_results.items() if "block fails" in errors}
    assert own_failures == families.FAILS_ON_ITS_OWN
    refused = {case for case, errors in family_results.items() if "refused" in errors}
    assert refused == families.REFUSED_IN_BF16
    assert all(case.endswith("bfloat16") for case in refused)
    failures = []
    for case, errors in family_results.items():
        if case in own_failures | refused:
            continue
        tolerance = TOLERANCE[case.split()[1]]
        assert {"out", "x_grad"} <= set(errors), case
        assert any(name.startswith("experts.") for name in errors), case
        for name, value in errors.items():
            if not value <= tolerance:
                failures.append(f"{case} {name}: {value:.3g}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("family", sorted(families.BLOCKS))
def test_each_family_is_supported_or_refused_as_documented(family):
    from ultraep.torch import UnsupportedBlockError
    from ultraep.torch.layer import _anatomy_of_block

    expected = families.EXPECTED[family]
    block = families.build(family)
    if expected.startswith("refused: "):
        with pytest.raises(UnsupportedBlockError) as raised:
            _anatomy_of_block(block)
        message = str(raised.value)
        assert message.startswith(type(block).__name__ + ": "), message
        assert expected.removeprefix("refused: ") in message
    else:
        anatomy = _anatomy_of_block(block)
        assert ("gated" if anatomy.gated else "module") == expected


def test_the_documented_table_is_the_expected_one():
    text = (Path(__file__).parents[2] / "docs" / "pytorch.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9_.]+)` \| ([^|]+?) \|", text, flags=re.MULTILINE))
    assert set(rows) == set(families.EXPECTED)
    for family, expected in families.EXPECTED.items():
        documented = rows[family]
        if expected.startswith("refused"):
            assert documented.startswith("refused"), family
        else:
            assert documented == f"supported ({expected})", family
