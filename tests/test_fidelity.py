"""docs/fidelity.md cannot drift from the configs: every key a section names has, in every config of the section's
"Configs" line, the value of its "ours" column (the config resolved with all defaults, as ``--print_config``
shows), every setting a paper config writes is on the page, and the extensions say they have no official
counterpart."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning import LightningDataModule, LightningModule

from pixcontrast.bundled_configs import CONFIG_DIR
from pixcontrast.cli import PixContrastCLI

PAGE = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
PAPER_CONFIGS = sorted(
    path.stem for path in CONFIG_DIR.glob("*.yaml") if path.stem.startswith(("cityscapes", "pascal", "coco"))
)
EXTENSIONS = {
    "cityscapes_deeplabv3_r101_contrast_mem",
    "cityscapes_ocr_hrnet_w48_contrast_mem",
    "cityscapes_ocr_convnext_tiny_contrast",
    "coco_stuff164k_ocr_hrnet_w48_contrast",
    "cocostuff27_picie_dino",
}
#: Settings that place files, show progress or schedule logging: no part of a protocol.
LOGISTICS = {
    "trainer.accelerator",
    "trainer.default_root_dir",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "model.init_args.pretrained",
    "model.init_args.weights_path",
}
LOGISTICS_NAMES = {"root", "num_workers", "eval_batch_size", "pin_memory", "persistent_workers", "progress_bar"}


@dataclass
class Section:
    """A heading of the page: the configs its "Configs" line names, an overlay, and its rows ``key -> ours``."""

    title: str
    configs: list[str] = field(default_factory=list)
    overlay: str | None = None
    rows: dict[str, str] = field(default_factory=dict)
    text: str = ""


def parse_page(text: str) -> list[Section]:
    sections: list[Section] = []
    paragraph: list[str] = []

    def close_paragraph() -> None:
        joined = " ".join(paragraph)
        if joined.startswith("Configs:"):
            sections[-1].configs = re.findall(r"`([^`]+)`", joined)
        elif joined.startswith("Overlay:"):
            sections[-1].overlay = re.findall(r"`([^`]+)`", joined)[0]
        paragraph.clear()

    for line in text.splitlines():
        if line.startswith("#"):
            close_paragraph()
            sections.append(Section(line.lstrip("# ").strip()))
            continue
        if not sections:
            continue
        sections[-1].text += line + "\n"
        if line.startswith("|"):
            close_paragraph()
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            key = re.fullmatch(r"`([\w.]+)`", cells[1]) if len(cells) == 5 else None
            if key:
                ours = re.match(r"`([^`]+)`", cells[3])
                assert ours, f"{sections[-1].title}: the row of {key.group(1)} has no `value` in its ours column"
                sections[-1].rows[key.group(1)] = ours.group(1)
        elif line.strip():
            paragraph.append(line.strip())
        else:
            close_paragraph()
    close_paragraph()
    return sections


SECTIONS = parse_page(PAGE.read_text())


class _Resolve(PixContrastCLI):
    """The command's parser without building the model, the data or the trainer."""

    def instantiate_classes(self) -> None:
        pass


@functools.cache
def resolved(name: str, overlay: str | None = None) -> dict[str, Any]:
    args = ["--config", str(CONFIG_DIR / f"{name}.yaml")]
    if overlay:
        args += ["--config", str(CONFIG_DIR / f"{overlay}.yaml")]
    cli = _Resolve(
        LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False, args=args
    )
    return cli.config.as_dict()


def lookup(config: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key``; in ``trainer.callbacks`` a part names the callback's class."""
    value: Any = config
    for part in key.split("."):
        if isinstance(value, list):
            matches = [item for item in value if item["class_path"].rsplit(".", 1)[-1] == part]
            assert len(matches) == 1, f"{key}: no single callback {part}"
            value = matches[0]
        else:
            assert isinstance(value, dict) and part in value, f"{key}: no {part!r} in the resolved config"
            value = value[part]
    return value


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


def written_settings(config: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys a config file sets (class paths and nested ``init_args`` unfolded, callbacks by class)."""
    keys: list[str] = []
    for name, value in config.items():
        if name == "class_path":
            continue
        key = f"{prefix}{name}"
        if name == "callbacks" and isinstance(value, list):
            for callback in value:
                short = callback["class_path"].rsplit(".", 1)[-1]
                keys += written_settings(callback.get("init_args") or {}, f"{key}.{short}.init_args.")
        elif isinstance(value, dict):
            keys += written_settings(value, f"{key}.")
        else:
            keys.append(key)
    return keys


def test_the_page_covers_every_paper_config_and_names_only_bundled_ones() -> None:
    named = {name for section in SECTIONS for name in section.configs}
    assert named == set(PAPER_CONFIGS), (
        f"not on the page: {set(PAPER_CONFIGS) - named}; unknown: {named - set(PAPER_CONFIGS)}"
    )
    assert all(section.configs for section in SECTIONS if section.rows), "a table with keys but no Configs line"


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_every_value_on_the_page_is_the_configs(name: str) -> None:
    checked = 0
    for section in SECTIONS:
        if name not in section.configs:
            continue
        config = resolved(name, section.overlay)
        for key, ours in section.rows.items():
            expected = yaml.safe_load(ours)
            actual = _plain(lookup(config, key))
            assert actual == expected, f"{section.title}: {key} is {actual!r} in {name}, the page says {ours}"
            checked += 1
    assert checked >= 20, f"only {checked} settings of {name} on the page"


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_every_setting_a_paper_config_writes_is_on_the_page(name: str) -> None:
    written = written_settings(yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()))
    on_page = {key for section in SECTIONS if name in section.configs for key in section.rows}
    missing = [
        key
        for key in written
        if key not in on_page
        and key != "seed_everything"
        and key not in LOGISTICS
        and key.rsplit(".", 1)[-1] not in LOGISTICS_NAMES
    ]
    assert not missing, f"{name} sets {missing}, which docs/fidelity.md does not list"


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_headers_say_what_the_page_says(name: str) -> None:
    header = "".join(
        line for line in (CONFIG_DIR / f"{name}.yaml").read_text().splitlines(True) if line.startswith("#")
    )
    if name in EXTENSIONS:
        assert "no official counterpart" in header and "paper's settings" not in header
        assert any(name in section.configs and "no official counterpart" in section.text for section in SECTIONS)
    else:
        assert "paper's settings" in header or "official protocol" in header
        assert "docs/fidelity.md" in header
