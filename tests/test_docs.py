"""The manual and the README cannot drift from the code: their Python blocks run, the API pages cover every public
name, and the configs they name exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.md") if "_build" not in path.parts)
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PACKAGES = ("modules", "losses", "models", "cluster", "metrics", "data", "callbacks", "inference", "export", "cli")


def python_blocks(page: Path) -> list[str]:
    """The fenced ``python`` blocks of a Markdown page, in order."""
    return FENCE.findall(page.read_text())


def test_pages_hold_python_blocks():
    """The fence pattern finds the guide's code (a changed fence style would silently skip every block)."""
    assert sum(len(python_blocks(page)) for page in PAGES) >= 15


RUNNABLE = [page for page in [REPO / "README.md", *PAGES] if python_blocks(page)]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(page.relative_to(REPO)) for page in RUNNABLE])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """Each page's blocks run in order in one namespace, in an empty folder, as a reader would paste them
    (the pages that train do so for one short epoch or step: a few seconds on 2 CPU cores)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {"__name__": "__docs__"}
    for index, block in enumerate(python_blocks(page)):
        code = compile(block, f"{page.relative_to(REPO)} block {index + 1}", "exec")
        exec(code, namespace)


def documented_modules() -> set[str]:
    """Modules named by an ``automodule`` directive with ``:members:`` in the API pages."""
    found = set()
    for page in (DOCS / "api").glob("*.md"):
        found.update(re.findall(r"^\.\. automodule:: (\S+)\n\s+:members:", page.read_text(), re.MULTILINE))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_api_reference_covers_every_public_name(package):
    """Every package of the public API has its page, and every name it exports has a docstring to show."""
    module_name = f"pixcontrast.{package}"
    assert module_name in documented_modules(), f"no API page documents {module_name}"
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module_name and callable(value)
    ]
    undocumented = [name for name in names if not (getattr(module, name).__doc__ or "").strip()]
    assert not undocumented, f"{module_name}: no docstring for {undocumented}"


def test_configs_named_in_the_docs_exist():
    """Every ``--config NAME`` in the manual and the README is a bundled config (or a placeholder for yours)."""
    from pixcontrast.bundled_configs import list_configs

    bundled = set(list_configs())
    placeholders = {"NAME", "my.yaml", "X.yaml", "CONFIG", "...", "their.yaml"}
    texts = [page.read_text() for page in PAGES] + [(REPO / "README.md").read_text()]
    named = {name for text in texts for name in re.findall(r"--config[ =]([^\s`\\]+)", text)}
    unknown = {
        name
        for name in named - placeholders
        if name not in bundled and not (name.endswith(".yaml") and (REPO / name).is_file())
    }
    assert not unknown, f"configs named in the docs that do not exist: {sorted(unknown)}"
    assert "synthetic_contrast" in named
