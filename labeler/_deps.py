"""One helper for heavy, optional imports: a clear message naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from labeler.errors import LabelerError


class MissingDependency(LabelerError, ImportError):
    """An optional dependency is not installed (the message names what to install)."""


def require(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise a one-line error that says how to install it.

    >>> np = require("numpy")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {purpose}" if purpose else ""
        fix = f"pip install 'labeler[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependency(
            f"{module} is needed{what} but is not installed ({exc}); run: {fix}"
        ) from exc


def available(module: str) -> bool:
    """True when ``module`` can be imported (does not import it if already known missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
