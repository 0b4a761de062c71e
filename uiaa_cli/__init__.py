"""uiaa: image aesthetic assessment with the unified probabilistic formulation.

The command line is ``uiaa``; the Python API (docs/python.md) is these names, imported on first use
so that ``import uiaa_cli`` stays light (no torch, pandas, h5py or pyarrow until a name needs them)::

    from uiaa_cli import Scorer, make_targets, make_labels, read_ratings, read_table, evaluate
    from uiaa_cli import score_dataset  # Ray Data: pip install 'uiaa[ray]'
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "Scorer": "uiaa_cli.predict.scorer",
    "make_targets": "uiaa_cli.api",
    "make_labels": "uiaa_cli.api",
    "read_ratings": "uiaa_cli.api",
    "read_table": "uiaa_cli.api",
    "evaluate": "uiaa_cli.api",
    "score_dataset": "uiaa_cli.predict.on_ray",
    "UiaaError": "uiaa_cli.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uiaa_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
