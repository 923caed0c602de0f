"""clrctl — an experiment runner for cyclical learning rates (Smith, arXiv 1506.01186).

The package is a library first; :mod:`clrctl.cli` and :mod:`clrctl.commands` are a thin
layer over it. Packages by layer (docs/architecture.md; pyproject.toml's import-linter
contracts enforce it): commands > api > sweep, compare > rangetest > runs > track > engine >
optim > data > model > plots > files, config; and the base modules errors, text,
interrupts, compat, series, app.
"""

__version__ = "0.1.0"

# The notebook API, imported on first use: ``import clrctl`` stays cheap (no torch).
_API = {"lr_find": "clrctl.api", "train": "clrctl.api", "LRFinderResult": "clrctl.api"}
__all__ = ["lr_find", "train", "LRFinderResult", "__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'clrctl' has no attribute {name!r}")
