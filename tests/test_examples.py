"""The example scripts in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

EXAMPLES = Path(__file__).parents[1] / "examples"
SCRIPTS = [
    "contrast_loss_plain_torch.py",
    "add_contrast_to_your_module.py",
    "subclass_contrastive_segmenter.py",
    "your_own_dataset.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_runs(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
