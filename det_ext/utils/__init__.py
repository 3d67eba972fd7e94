# Copyright (c) det_ext authors.
"""Small shared utilities (atomic file output, errors, jobs run in worker processes)."""
