# Copyright (c) det_ext authors.
"""det_ext configuration: :func:`add_det_ext_config` adds every det_ext key to a Detectron2
config."""
from .defaults import add_det_ext_config

__all__ = ["add_det_ext_config"]
