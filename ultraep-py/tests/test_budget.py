"""What a balanced layer costs the host and the memory, on 4 gloo processes (``ep_group``'s
``budget`` scenario): one forward and backward of a Qwen3-MoE block at 16, 1,024 and 8,192
tokens per rank.

- Host reads (tensor values read on the host: on a GPU each is a device-to-host copy and a stream
  synchronisation): at most 2 tensors, together at most the gathered count matrix (ranks x
  experts x 4 bytes) and each rank's 8-byte digest, whatever the number of tokens.
- Memory: what the forward keeps for the backward, besides the weights (the masters and the
  shared slot pool), grows with the token-expert pairs and nothing else: no copy of the masters
  or of the slots. At 16 tokens a rank one stacked copy of the weights would be more than all the
  activations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ep_group

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def budgets(tmp_path_factory) -> list[dict[str, object]]:
    directory = tmp_path_factory.mktemp("budget")
    return [result["budget"] for result in ep_group.run("-", Path(directory), "budget", 300.0)]


@pytest.mark.parametrize("tokens", [1024, 8192])
def test_one_forward_and_backward_reads_only_the_count_matrix_on_the_host(budgets, tokens):
    limit = ep_group.RANKS * ep_group.EXPERTS * 4 + ep_group.RANKS * 8
    for budget in budgets:
        reads = budget[f"reads {tokens}"]
        assert 1 <= len(reads) <= 2, reads
        assert sum(size for _, size in reads) <= limit, reads
        # Balanced indeed: replicas were used.
        assert budget[f"report {tokens}"].replicas > 0


def test_the_forward_keeps_activations_only(budgets):
    for budget in budgets:
        per_pair = budget["kept 8192"] / budget["pairs 8192"]
        for tokens in (16, 1024):
            pairs = budget[f"pairs {tokens}"]
            assert budget[f"kept {tokens}"] <= 1.05 * per_pair * pairs + 4096, (tokens, budget)
    # One expert's state: gate_up and down, 3 x hidden x width FP32 values; the rank's masters
    # and slots stacked would be 4 of them, more than 16 tokens' activations.
    state = 3 * ep_group.HIDDEN * ep_group.WIDTH * 4
    assert 4 * state > budgets[0]["kept 16"] / 2
