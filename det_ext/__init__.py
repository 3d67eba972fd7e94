# Copyright (c) det_ext authors.
"""det_ext: Detectron2 extensions for long-tailed, noisy and open-vocabulary detection.

The package import is light (no torch, no Detectron2), so that e.g. ``det_ext.evaluation`` can be
used on its own. Datasets, model components and trainers are registered in Detectron2's registries
by :func:`register_all`, which :func:`add_det_ext_config` calls: configure a config with det_ext's
keys and every det_ext component is available to ``build_model`` and ``DatasetCatalog``.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["add_det_ext_config", "register_all", "__version__"]


def register_all() -> None:
    """Registers det_ext's datasets, model components and trainers (idempotent)."""
    from . import data, engine, modeling  # noqa: F401  (imported for their registrations)


def __getattr__(name: str) -> Any:
    if name == "add_det_ext_config":
        from .config import add_det_ext_config

        return add_det_ext_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
