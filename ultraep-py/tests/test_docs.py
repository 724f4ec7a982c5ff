"""The package's documented examples run as written."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ultraep

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "pytorch.md"


def test_the_package_docstring_examples_run():
    failures, tried = doctest.testmod(ultraep)
    assert tried > 0 and failures == 0


def test_the_pytorch_guide_example_runs_under_torchrun(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    script = re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL).group(1)
    (tmp_path / "ep_moe.py").write_text(script)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "ep_moe.py",
        ],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    steps = re.findall(r"step \d: imbalance ([\d.]+) -> ([\d.]+), (\d+) replicas", result.stdout)
    assert len(steps) == 3, result.stdout
    for initial, final, replicas in steps:
        assert float(final) < float(initial) and int(replicas) > 0
