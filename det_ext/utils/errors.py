# Copyright (c) det_ext authors.
"""Exceptions for bad user input. CLIs report them as one line and exit with status 2."""
from __future__ import annotations

__all__ = ["DetExtInputError", "DatasetFormatError", "ConfigInputError"]


class DetExtInputError(Exception):
    """Bad input from the user (a file, a field, a key); the message names it."""


class DatasetFormatError(DetExtInputError, ValueError):
    """A dataset file is missing or malformed (message: ``FILE: entry.field: problem``)."""


class ConfigInputError(DetExtInputError, KeyError):
    """A config file or option is unknown or invalid."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""
