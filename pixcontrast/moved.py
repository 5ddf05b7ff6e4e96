"""Public names that moved to another module: the old import keeps working for one release, with a warning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved_names(package: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that finds each name of ``moved`` in its new module.

    ``moved`` maps a name to the module it now lives in; reading it from ``package`` returns it with a
    ``DeprecationWarning`` that names the new import. Any other unknown name is an ``AttributeError``.
    """

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warnings.warn(
            f"{package}.{name} moved to {moved[name]}: use 'from {moved[name]} import {name}' "
            f"(the old import will be removed in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__
