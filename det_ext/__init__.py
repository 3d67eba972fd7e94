# Copyright (c) det_ext authors.
"""det_ext: Detectron2 extensions for long-tailed, noisy and open-vocabulary detection.

Importing the package registers its datasets and its components in Detectron2's registries.
"""
from . import data  # noqa: F401  (registers LT-Shapes and COCO-LT datasets)
from . import modeling  # noqa: F401  (registers model components)
from .config import add_det_ext_config

__version__ = "0.1.0"
__all__ = ["add_det_ext_config", "__version__"]
