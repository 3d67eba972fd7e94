# Copyright (c) det_ext authors.
"""Atomic file output: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file, and a killed job leaves the previous version intact.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, IO

__all__ = ["atomic_open", "atomic_write_json", "read_json_input"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file next to ``path``; on success it replaces ``path`` atomically.

    Args:
        path (str): destination file.
        mode (str): ``"w"`` (text) or ``"wb"`` (binary).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj: Any, indent: int | None = None) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)


def read_json_input(path: str, what: str) -> Any:
    """Reads a user-supplied JSON file.

    Args:
        path (str): the file.
        what (str): what the file is, for the message (e.g. ``"captions file"``).

    Raises:
        DatasetFormatError: the file is missing, malformed or truncated (message names the file and
            the position of the error).
    """
    from .errors import DatasetFormatError

    if not os.path.isfile(path):
        raise DatasetFormatError(f"{path}: {what} not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: malformed or truncated JSON at line {e.lineno} "
                                 f"column {e.colno}: {e.msg}") from None
