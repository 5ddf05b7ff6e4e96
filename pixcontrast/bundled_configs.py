"""The LightningCLI configs shipped inside the package, and ``--config`` values that name them.

``pixcontrast fit --config synthetic_contrast`` runs ``pixcontrast/configs/synthetic_contrast.yaml`` from any
working directory; a value that is an existing file stays a path. ``pixcontrast configs`` lists the names with the
first comment line of each file as its description.
"""

from __future__ import annotations

import difflib
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class UnknownConfigError(ValueError):
    """A config name that no bundled config has (and, for ``--config``, no existing file either)."""


def list_configs() -> dict[str, str]:
    """The bundled configs' names (file names without ``.yaml``), sorted, with their one-line descriptions."""
    return {name: _description(CONFIG_DIR / f"{name}.yaml") for name in _names()}


def bundled_config(name: str) -> Path:
    """The file of the bundled config ``name``; :class:`UnknownConfigError` when there is none."""
    if name not in _names():
        raise _unknown(name, f"there is no bundled config named {name!r}")
    return CONFIG_DIR / f"{name}.yaml"


def resolve_config(value: str) -> str:
    """A ``--config`` value with a bundled config's name replaced by the path of its file.

    An existing file stays as it is, and so does YAML text (``{trainer: {max_epochs: 1}}``), which ``--config``
    also takes. Anything else that is not a bundled name raises :class:`UnknownConfigError`.
    """
    if Path(value).is_file() or _is_yaml_text(value):
        return value
    try:
        return str(bundled_config(value))
    except UnknownConfigError:
        raise _unknown(value, f"config {value!r} is neither an existing file nor a bundled config's name") from None


def _names() -> list[str]:
    """The bundled configs' names, sorted."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def _description(path: Path) -> str:
    """The first comment line of a config without its ``#`` (empty when the file does not start with one)."""
    first = path.read_text(encoding="utf-8").partition("\n")[0]
    return first.lstrip("#").strip() if first.startswith("#") else ""


def _is_yaml_text(value: str) -> bool:
    """Whether ``value`` reads as YAML data other than a plain string: a config given inline, not a name or path."""
    import yaml

    try:
        return not isinstance(yaml.safe_load(value), str)
    except yaml.YAMLError:
        return False


def _unknown(value: str, problem: str) -> UnknownConfigError:
    """The error for ``value``, with the bundled names closest to it (a path is compared by its file's stem)."""
    close = difflib.get_close_matches(Path(value).stem, _names(), n=3)
    suggestion = f"; did you mean {', '.join(close)}?" if close else "."
    return UnknownConfigError(f"{problem}{suggestion} 'pixcontrast configs' lists the bundled configs.")
