"""benchmarks/compare_picie_official.py run as a script: its error for a folder that is not the official code,
and (given a checkout in ``PIXCONTRAST_OFFICIAL_PICIE``) one epoch of the side-by-side on tiny data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pixcontrast.bundled_configs import CONFIG_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_picie_official.py"
OFFICIAL = os.environ.get("PIXCONTRAST_OFFICIAL_PICIE")


def run_compare(folder: Path, official: Path, *options: str) -> subprocess.CompletedProcess:
    """The benchmark on the demo config at toy size (16 training and 8 val scenes of 32 px, 1 epoch, random
    encoder), written to ``folder``."""
    config = yaml.safe_load((CONFIG_DIR / "synthetic_picie.yaml").read_text())
    config["trainer"]["max_epochs"] = 1
    config["model"]["init_args"]["weights_path"] = None
    config["data"]["init_args"]["datamodule"]["init_args"].update(num_train=16, num_val=8, batch_size=8, image_size=32)
    config["data"]["init_args"].update(view_size=32, input_size=32, eval_size=32)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, str(SCRIPT), "--official", str(official), "--config", "tiny.yaml", *options]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=1800)


def test_a_folder_that_is_not_a_checkout_names_the_fix(tmp_path):
    result = run_compare(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "clone https://github.com/janghyuncho/PiCIE" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(OFFICIAL is None, reason="set PIXCONTRAST_OFFICIAL_PICIE to a janghyuncho/PiCIE checkout")
def test_one_epoch_of_the_official_procedure_and_ours(tmp_path):
    result = run_compare(tmp_path, Path(OFFICIAL), "--seeds", "0", "--variants", "ours + all three official choices")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])["results"]
    for name in ("official", "ours + all three official choices"):
        assert 0 < results[name]["miou"] <= 1 and 0 < results[name]["pixel_accuracy"] <= 1
    assert math.isfinite(results["official"]["official_scorer_miou"])
