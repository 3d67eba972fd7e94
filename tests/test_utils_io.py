# Copyright (c) det_ext authors.
"""Atomic file output."""
import json
import os

import pytest

from det_ext.utils.io import atomic_open, atomic_write_json


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(str(path), {"a": 1})
    atomic_write_json(str(path), {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert os.listdir(path.parent) == ["out.json"]


def test_failed_write_keeps_previous_version_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path)) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
