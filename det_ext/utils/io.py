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


def read_json_input(path: str | os.PathLike, what: str, error: type | None = None) -> Any:
    """Reads a user-supplied JSON file.

    Args:
        path (str or PathLike): the file.
        what (str): what the file is, for the message (e.g. ``"captions file"``).
        error (type or None): the exception class raised (default
            :class:`~det_ext.utils.errors.DatasetFormatError`).

    Raises:
        error: the file is missing, malformed, truncated or not UTF-8 text (the message names the
            file and the position of the error).
    """
    from .errors import DatasetFormatError

    error = error or DatasetFormatError
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed or truncated JSON at line {e.lineno} "
                    f"column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not UTF-8 text ({e})") from None
