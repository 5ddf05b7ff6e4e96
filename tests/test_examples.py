"""The example scripts in examples/ run as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pixcontrast.bundled_configs import CONFIG_DIR

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


@pytest.mark.slow
def test_picie_baselines_score_the_starting_points(tmp_path):
    """The k-means rows of examples/picie_baselines.py on a tiny copy of the demo config (the PiCIE rows are fits)."""
    import yaml

    config = yaml.safe_load((CONFIG_DIR / "synthetic_picie.yaml").read_text())
    config["data"]["init_args"]["datamodule"]["init_args"].update(num_train=8, num_val=4, batch_size=4)
    config["data"]["init_args"].update(view_size=32, input_size=32, eval_size=32)
    config["model"]["init_args"]["weights_path"] = None
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    script = [
        sys.executable,
        str(EXAMPLES / "picie_baselines.py"),
        "--config",
        "tiny.yaml",
        "--seeds",
        "0",
        "--skip-picie",
    ]
    result = subprocess.run(script, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = dict(re.findall(r"^(raw colours|pretrained encoder \+ k-means) +mIoU ([\d.]+) \+-", result.stdout, re.M))
    assert set(rows) == {"raw colours", "pretrained encoder + k-means"}, result.stdout
    assert all(0.0 < float(miou) <= 100.0 for miou in rows.values())
