"""The ``official_test_protocol`` overlay: ContrastiveSeg's multi-scale + flip test (configs/*/H_48_D_4_TEST.json)
merged onto a paper config with a second ``--config``."""

from __future__ import annotations

import pytest
import yaml

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.cli import main, run_lightning

#: test.scale_search of tfzhou/ContrastiveSeg configs/{cityscapes,pascal_context,coco_stuff}/H_48_D_4_TEST.json.
OFFICIAL_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
PAPER_CONFIGS = sorted(
    path.stem
    for path in CONFIG_DIR.glob("*.yaml")
    if (yaml.safe_load(path.read_text()).get("model") or {}).get("class_path", "").endswith("ContrastiveSegmenter")
    and not path.stem.startswith(("synthetic", "folder"))
)


def test_the_overlay_sets_the_official_scales_and_flip() -> None:
    overlay = yaml.safe_load((CONFIG_DIR / "official_test_protocol.yaml").read_text())
    assert overlay == {
        "model": {"init_args": {"eval_mode": "multiscale", "eval_scales": OFFICIAL_SCALES, "eval_flip": True}}
    }


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_print_config_of_the_merge_shows_the_multiscale_settings(name, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", name, "--config", "official_test_protocol", "--print_config"])
    assert exit_info.value.code == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["class_path"] == "pixcontrast.modules.ContrastiveSegmenter"  # the paper config's model, kept
    settings = {key: model["init_args"][key] for key in ("eval_mode", "eval_scales", "eval_flip")}
    assert settings == {"eval_mode": "multiscale", "eval_scales": OFFICIAL_SCALES, "eval_flip": True}


def test_a_config_tested_with_the_overlay_runs_multiscale(tmp_path) -> None:
    cli = run_lightning(
        [
            "test",
            "--config",
            "synthetic_contrast",
            "--config",
            "official_test_protocol",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_val=2",
        ]
    )
    assert cli.model.hparams.eval_mode == "multiscale" and list(cli.model.hparams.eval_scales) == OFFICIAL_SCALES
    assert 0.0 <= float(cli.trainer.callback_metrics["test/pixel_accuracy"]) <= 1.0
