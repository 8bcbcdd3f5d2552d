"""Optional dependencies: the extras that carry them, and the one-line error when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

# module -> the pip extra of this project that installs it
EXTRAS: dict[str, str] = {"transformers": "transformers", "timm": "transformers"}


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (e.g. "Segformer"), or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module, module)
        raise ImportError(
            f"{what} needs the optional dependency {module!r} ({err}); install it with: pip install -e \".[{extra}]\""
        ) from err
