"""PiCIE checkpoints of pixcontrast 0.1 (one buffer per feature set: ``centroids_view1``, ...) load and resume.

The fixture and how it was written: ``tests/fixtures/picie_0_1.md``.
"""

from pathlib import Path

import pytest
import torch
from tiny_runs import picie_scenes, quiet_trainer

from pixcontrast.callbacks import KMeansRefresh
from pixcontrast.modules import PiCIE

FIXTURE = Path(__file__).parents[1] / "fixtures" / "picie_0_1.ckpt"
FEATURE_SETS = ("view1", "view2", "view1_over", "view2_over")


@pytest.fixture(scope="module")
def old_state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE, map_location="cpu", weights_only=False)["state_dict"]


def assert_holds_the_old_state(model: PiCIE, old: dict[str, torch.Tensor]) -> None:
    heads = {name: head for name, _, head in model.feature_sets()}
    assert sorted(heads) == sorted(FEATURE_SETS) and model.has_centroids
    for name, head in heads.items():
        assert torch.equal(head.centroids, old[f"centroids_{name}"])
        assert torch.equal(head.sizes, old[f"cluster_sizes_{name}"]) and bool(head.clustered)
    state = model.state_dict()
    network = [key for key in old if key.startswith("network.")]
    assert network and all(torch.equal(state[key], old[key]) for key in network)  # weights and BN statistics
    assert torch.equal(model.assignment, old["assignment"])


def test_load_from_checkpoint_maps_the_old_cluster_state_to_the_heads(old_state):
    model = PiCIE.load_from_checkpoint(FIXTURE, map_location="cpu")
    assert_holds_the_old_state(model, old_state)
    assert not any(key.startswith(("centroids_", "cluster_sizes_")) or key == "clustered" for key in model.state_dict())
    again = PiCIE(**model.hparams)
    again.load_state_dict(old_state)  # plain load_state_dict reads the old keys too
    assert_holds_the_old_state(again, old_state)


def test_a_run_resumes_from_an_old_checkpoint(tmp_path, old_state):
    """``fit(ckpt_path=...)`` (the command's ``--ckpt_path``) restores the old state and trains on from it."""
    data = picie_scenes(32, num_classes=4, num_train=4, num_val=2, batch_size=2)
    model = PiCIE(**torch.load(FIXTURE, map_location="cpu", weights_only=False)["hyper_parameters"])
    refresh = KMeansRefresh(every_n_epochs=5, max_batches=1, progress_bar=False)  # epoch 1: no refresh
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=1, callbacks=[refresh])
    trainer.fit(model, datamodule=data, ckpt_path=FIXTURE)
    assert trainer.global_step == 2  # one step in the checkpoint, one after the resume
    heads = {name: head for name, _, head in model.feature_sets()}
    for name in FEATURE_SETS:  # epoch 1 trained against the restored centroids
        assert torch.equal(heads[name].centroids, old_state[f"centroids_{name}"])
        assert torch.equal(heads[name].sizes, old_state[f"cluster_sizes_{name}"])
    lateral = "network.fpn.laterals.0.weight"
    assert not torch.equal(model.state_dict()[lateral], old_state[lateral])  # and trained on
    trainer.save_checkpoint(tmp_path / "new.ckpt")  # written in the current format, and loaded back
    reloaded = PiCIE.load_from_checkpoint(tmp_path / "new.ckpt", map_location="cpu")
    assert torch.equal(reloaded.over_heads[1].centroids, old_state["centroids_view2_over"])
