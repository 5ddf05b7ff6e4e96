"""A run that crashes and is resumed with ``--ckpt_path last`` ends exactly like an uninterrupted run.

Each scenario runs the CLI three times in this process (one CPU device, same seed, same thread count):
``full`` trains 4 steps (2 epochs of 2 steps); ``crashed`` is the same run stopped by an exception when step 3
starts, after ``last.ckpt`` was written at the end of epoch 0; ``resumed`` continues it with ``--ckpt_path
last``. ``resumed`` must end bitwise equal to ``full``: weights, BN statistics, memory bank / centroids,
optimiser state, LR-scheduler state, global step and the losses of steps 3-4. This relies on the CLI's
``RandomStateCheckpoint`` (the data order, dropout and anchor sampling use the global generators, which
Lightning does not checkpoint) and on resuming at an epoch boundary: Lightning restarts the data loader of an
interrupted epoch from its beginning, so a mid-epoch checkpoint (``every_n_train_steps``) would replay batches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    CONTRASTIVE,
    PICIE,
    assert_optimizer_states_equal,
    assert_states_equal,
    load,
    model_config,
    picie_data,
    probe,
    run_local,
    synthetic_data,
    write_config,
)

pytestmark = [pytest.mark.slow]

CRASH = {"class_path": "state_probe.CrashAtStep", "init_args": {"step": 2}}
KMEANS = {"class_path": "pixcontrast.callbacks.KMeansRefresh", "init_args": {"progress_bar": False}}


def crash_and_resume(root: Path, model: dict, data: dict, callbacks: list) -> tuple[dict, dict]:
    """Run ``full``, ``crashed`` and ``resumed``; return the final states of ``full`` and ``resumed``."""
    configs = {}
    for name in ("full", "crashed", "resumed"):
        (root / name).mkdir()
        extra = [CRASH] if name == "crashed" else []
        configs[name] = write_config(
            root / name / "config.yaml",
            model,
            data,
            root / name,
            callbacks=[*callbacks, *extra, probe(root / name / "probe")],
            max_steps=4,
        )
    run_local("fit", configs["full"])
    with pytest.raises(SystemExit, match="simulated crash at step 2"):
        run_local("fit", configs["crashed"])
    checkpoints = root / "crashed" / "checkpoints"
    assert load(checkpoints / "last.ckpt")["global_step"] == 2
    run_local("fit", configs["resumed"], f"--checkpoint.dirpath={checkpoints}", "--ckpt_path=last")
    full, resumed = load(root / "full" / "probe" / "rank0.pt"), load(root / "resumed" / "probe" / "rank0.pt")
    assert resumed["global_step"] == full["global_step"] == 4
    assert resumed["names"] == full["names"][2:]  # the same data order after the restart
    assert resumed["losses"] == full["losses"][2:]
    assert_states_equal(full["state_dict"], resumed["state_dict"])
    assert_optimizer_states_equal(full["optimizer"], resumed["optimizer"])
    assert full["scheduler"] == resumed["scheduler"]
    return full, resumed


def test_contrast_with_memory_resumes_exactly(tmp_path):
    full, _ = crash_and_resume(
        tmp_path,
        model_config(CONTRASTIVE, contrast={"memory_size": 16, "pixels_per_image": 2}, dropout=0.1),
        synthetic_data(num_train=4, batch_size=2),
        [],
    )
    assert full["state_dict"]["contrast.criterion.memory_bank.filled"].sum() > 0
    assert full["scheduler"][0]["last_epoch"] == 4  # the poly schedule advanced once per step


def test_picie_resumes_exactly(tmp_path):
    full, _ = crash_and_resume(tmp_path, model_config(PICIE), picie_data(num_train=4, batch_size=2), [KMEANS])
    assert full["state_dict"]["heads.0.clustered"]
    for key in ("heads.0.centroids", "heads.1.centroids"):
        assert full["first_centroids"][key].abs().sum() > 0
