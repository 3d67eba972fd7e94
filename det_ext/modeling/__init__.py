# Copyright (c) det_ext authors.
"""Model components registered in Detectron2's registries (ROI heads, box predictors, ...).

Each component family is a subpackage imported here for its registration side effects.
"""
from . import noisy  # noqa: F401
from . import simcal  # noqa: F401
from . import open_vocab  # noqa: F401
