"""What both exporters share: their error and the import of an optional converter package."""

from __future__ import annotations

import importlib
from types import ModuleType


class ExportError(ValueError):
    """A checkpoint that a format cannot represent, or an export that cannot run; one line."""


def require(module: str, extra: str = "export") -> ModuleType:
    """Import an optional dependency (ctranslate2, transformers), or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(
            f"exporting needs the {module} package ({err}); pip install 'transformer-mt[{extra}]'"
        ) from None


__all__ = ["ExportError", "require"]
