"""The configs shipped in the package: ``pixcontrast configs``, ``--config NAME`` from any folder, the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pixcontrast.bundled_configs import CONFIG_DIR, UnknownConfigError, list_configs, resolve_config
from pixcontrast.cli import main

REPO = Path(__file__).resolve().parents[2]
NAMES = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def first_comment(name: str) -> str:
    return (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()[0].removeprefix("# ")


@pytest.mark.parametrize("argv", [["configs"], ["configs", "list"]])
def test_configs_lists_every_config_with_its_description_aligned(argv, capsys):
    main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert len(NAMES) == 21 and len(lines) == len(NAMES)
    column = max(map(len, NAMES)) + 2
    for name, line in zip(NAMES, lines, strict=True):
        assert line[:column].rstrip() == name
        assert line[column:] == first_comment(name) and line[column:]  # one line each, none empty
    assert list(list_configs()) == NAMES


def test_configs_show_prints_the_file_verbatim(capsys):
    main(["configs", "show", "synthetic_contrast"])
    assert capsys.readouterr().out == (CONFIG_DIR / "synthetic_contrast.yaml").read_text()


@pytest.mark.parametrize(
    "argv",
    [
        ["configs", "show", "synthetic_contrst"],
        ["fit", "--config", "synthetic_contrst"],
        ["fit", "--config=synthetic_contrst"],
        ["fit", "-c", "examples/configs/synthetic_contrst.yaml"],
    ],
    ids=["configs show", "fit --config", "fit --config=", "fit -c path"],
)
def test_an_unknown_name_fails_with_status_2_and_close_matches(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "synthetic_contrst" in captured.err
    assert "did you mean synthetic_contrast," in captured.err and "'pixcontrast configs' lists" in captured.err


@pytest.mark.parametrize(
    "flags",
    [
        ["--config", "synthetic_contrast"],
        ["-c", "synthetic_contrast"],
        ["--config=synthetic_contrast"],
        ["--config", "synthetic_contrast", "--config", "override.yaml"],
    ],
    ids=["--config NAME", "-c NAME", "--config=NAME", "NAME then a file"],
)
@pytest.mark.parametrize("through", ["argv", "sys.argv"])
def test_fit_takes_a_bundled_name_from_an_empty_folder(flags, through, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "override.yaml").write_text("trainer:\n  max_epochs: 3\n")
    args = ["fit", *flags, "--print_config"]
    if through == "sys.argv":  # the console script: the process's own command line
        monkeypatch.setattr(sys, "argv", ["pixcontrast", *args])
    with pytest.raises(SystemExit) as exit_info:
        main(args if through == "argv" else None)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "default_root_dir: runs/synthetic_contrast" in text and "pixcontrast.modules.ContrastiveSegmenter" in text
    assert ("max_epochs: 3" if "override.yaml" in flags else "max_epochs: 16") in text


def test_the_old_examples_path_still_works_from_the_repository(monkeypatch, capsys):
    link = REPO / "examples" / "configs"
    assert link.is_symlink() and link.resolve() == CONFIG_DIR  # one copy of the configs
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "examples/configs/synthetic_contrast.yaml", "--print_config"])
    assert "default_root_dir: runs/synthetic_contrast" in capsys.readouterr().out


def test_resolve_config_keeps_files_and_yaml_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("synthetic_baseline") == str(CONFIG_DIR / "synthetic_baseline.yaml")
    (tmp_path / "synthetic_baseline").write_text("trainer: {}\n")  # an existing file wins over a bundled name
    assert resolve_config("synthetic_baseline") == "synthetic_baseline"
    assert resolve_config("{trainer: {max_epochs: 1}}") == "{trainer: {max_epochs: 1}}"  # --config takes YAML too
    with pytest.raises(UnknownConfigError, match=r"'no_such_config' is neither an existing file.*lists"):
        resolve_config("no_such_config")


def test_the_wheel_ships_the_configs_py_typed_and_the_license(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the repository
    shutil.copytree(REPO / "pixcontrast", source / "pixcontrast", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("pixcontrast-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        licenses = [name for name in names if name.split("/")[0].endswith(".dist-info") and name.endswith("/LICENSE")]
        assert len(licenses) == 1
        assert archive.read(licenses[0]) == (REPO / "LICENSE").read_bytes()
    assert {f"pixcontrast/configs/{name}.yaml" for name in NAMES} <= names
    assert "pixcontrast/py.typed" in names and "pixcontrast/bundled_configs.py" in names
