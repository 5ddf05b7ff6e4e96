"""benchmarks/compare_picie_official.py: its adapters around the official PiCIE code, and (given a checkout in
``PIXCONTRAST_OFFICIAL_PICIE``) one epoch of the side-by-side on tiny data."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = os.environ.get("PIXCONTRAST_OFFICIAL_PICIE")


@pytest.fixture(scope="module")
def compare():
    """The benchmark script as a module (it puts examples/ on sys.path itself)."""
    script = ROOT / "benchmarks" / "compare_picie_official.py"
    spec = importlib.util.spec_from_file_location("compare_picie_official", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(compare) -> dict:
    """The demo config at toy size: 16 training and 8 val scenes of 32 px, 1 epoch, random encoder."""
    import yaml

    config = yaml.safe_load(compare.CONFIG.read_text())
    config = copy.deepcopy(config)
    config["trainer"]["max_epochs"] = 1
    config["model"]["init_args"]["weights_path"] = None
    inner = config["data"]["init_args"]["datamodule"]["init_args"]
    inner.update(num_train=16, num_val=8, batch_size=8, image_size=32)
    config["data"]["init_args"].update(view_size=32, input_size=32, eval_size=32)
    return config


def test_a_folder_that_is_not_a_checkout_names_the_fix(compare, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"clone https://github\.com/janghyuncho/PiCIE"):
        compare.import_official(tmp_path)


def test_official_cuda_calls_run_on_the_cpu_and_are_restored(compare):
    import faiss

    had_gpu_index = hasattr(faiss, "GpuIndexFlatL2")
    with compare.official_on_cpu():
        tensor = torch.arange(4.0)
        assert tensor.cuda() is tensor
        layer = torch.nn.Linear(2, 2)
        assert layer.cuda() is layer
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), 2, faiss.GpuIndexFlatConfig())
        index.add(torch.tensor([[0.0, 0.0], [1.0, 1.0]]).numpy())
        _, nearest = index.search(torch.tensor([[0.9, 1.2]]).numpy(), 1)
        assert nearest.tolist() == [[1]]
    assert hasattr(faiss, "GpuIndexFlatL2") == had_gpu_index
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):
            torch.zeros(1).cuda()


def test_the_official_views_are_our_views_with_labels_from_files(compare, tmp_path):
    from pixcontrast.losses.picie import warp_features

    datamodule = compare.build_datamodule(tiny_config(compare))
    views = compare.OfficialViews(datamodule, tmp_path)
    views.set_epoch(0)
    ours = datamodule.train_dataset[3]
    index, image, nothing = views[3]
    assert index == 3 and nothing is None and torch.equal(image, ours["image1"])
    views.view = 2
    assert torch.equal(views[3][1], ours["image2"])
    maps = torch.randn(2, 8, 8, 8)
    assert torch.equal(views.transform_eqv([3, 5], maps[:, :3]), maps[:, :3])  # images: G is already in view 1
    expected = warp_features(maps, torch.stack([ours["geometry"], datamodule.train_dataset[5]["geometry"]]))
    torch.testing.assert_close(views.transform_eqv([3, 5], maps), expected)
    for view in (1, 2):  # the official compute_labels writes one flat array per image and view
        (tmp_path / f"label_{view}").mkdir()
        torch.save(torch.full((64,), view).numpy(), tmp_path / f"label_{view}" / "3.pkl")
    views.mode = "train"
    index, image1, image2, label1, label2 = views[3]
    assert torch.equal(image1, ours["image1"]) and torch.equal(image2, ours["image2"])
    assert label1.shape == (8, 8) and (label1 == 1).all() and (label2 == 2).all()


@pytest.mark.slow
@pytest.mark.skipif(OFFICIAL is None, reason="set PIXCONTRAST_OFFICIAL_PICIE to a janghyuncho/PiCIE checkout")
def test_one_epoch_of_the_official_procedure_and_ours(compare, tmp_path):
    official = compare.import_official(Path(OFFICIAL))
    config = tiny_config(compare)
    theirs = compare.run_official(official, config, seed=0, batch_groups=2)
    ours = compare.run_ours(config, 0, compare.VARIANTS["ours + all three official choices"], tmp_path)
    for result in (theirs, ours):
        assert 0 < result["miou"] <= 1 and 0 < result["pixel_accuracy"] <= 1
    assert math.isfinite(theirs["official_scorer_miou"])
    sys.path.remove(str(Path(OFFICIAL)))
