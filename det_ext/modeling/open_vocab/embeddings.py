# Copyright (c) det_ext authors.
"""Class text-embedding files: one matrix of class-name embeddings with the names inside it.

A file is a ``torch.save`` dict::

    {"format": "det_ext_text_embeddings", "version": 1,
     "names": [K category names], "embeddings": float32 [K, D],
     "templates": [prompt templates], "encoder": {description of the text encoder}}

Every consumer checks the file against what it will be used with (the dataset's class names, the
model's embedding size) with :func:`load_text_embeddings`; any mismatch is a
:class:`ClassEmbeddingError` naming the file, never a silent misalignment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from det_ext.utils.errors import DetExtInputError
from det_ext.utils.io import atomic_open

__all__ = ["ClassEmbeddings", "ClassEmbeddingError", "save_text_embeddings", "load_text_embeddings",
           "check_names", "FORMAT_NAME"]

FORMAT_NAME = "det_ext_text_embeddings"
FORMAT_VERSION = 1


class ClassEmbeddingError(DetExtInputError):
    """A class text-embedding file that is malformed or does not match its use."""


@dataclass
class ClassEmbeddings:
    """Class-name embeddings and the names they belong to.

    Attributes:
        names (list[str]): K class names, row order of ``embeddings``.
        embeddings (Tensor): float32 [K, D].
        templates (list[str]): prompt templates averaged over (``{}`` = the name).
        encoder (dict): how the embeddings were computed (kind, model, weights).
    """

    names: List[str]
    embeddings: torch.Tensor
    templates: List[str] = field(default_factory=list)
    encoder: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        if self.embeddings.dim() != 2 or self.embeddings.shape[0] != len(self.names):
            raise ClassEmbeddingError(
                f"class embeddings: expected a [{len(self.names)}, D] matrix for {len(self.names)} "
                f"names, got shape {tuple(self.embeddings.shape)}")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ClassEmbeddingError(f"class embeddings: duplicate class names {dup[:5]}")
        if not torch.isfinite(self.embeddings).all():
            raise ClassEmbeddingError("class embeddings: NaN or infinite values")
        self.embeddings = self.embeddings.detach().float().cpu()

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.names)


def check_names(names: Sequence[str], expected: Sequence[str], source: str, target: str) -> None:
    """Raises :class:`ClassEmbeddingError` unless ``names == expected`` (same order).

    Args:
        names: the names in the embedding source.
        expected: the names of the dataset or vocabulary it is used for.
        source, target: descriptions used in the message (e.g. the file and the dataset).
    """
    names, expected = list(names), list(expected)
    if names == expected:
        return
    if len(names) != len(expected):
        missing = [n for n in expected if n not in names][:5]
        extra = [n for n in names if n not in expected][:5]
        raise ClassEmbeddingError(
            f"{source}: has {len(names)} classes but {target} has {len(expected)} "
            f"(missing {missing}, extra {extra})")
    i = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
    what = "order differs" if sorted(names) == sorted(expected) else "names differ"
    raise ClassEmbeddingError(
        f"{source}: class names do not match {target} ({what}; first at index {i}: "
        f"{names[i]!r} in the file vs {expected[i]!r})")


def save_text_embeddings(path: str, emb: ClassEmbeddings) -> str:
    """Writes ``emb`` to ``path`` atomically. Returns ``path``."""
    data = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "names": list(emb.names),
            "embeddings": emb.embeddings.clone(), "templates": list(emb.templates),
            "encoder": dict(emb.encoder)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(data, f)
    return path


def load_text_embeddings(path: str, expected_names: Optional[Sequence[str]] = None,
                         expected_dim: Optional[int] = None, target: str = "the dataset"
                         ) -> ClassEmbeddings:
    """Reads a class text-embedding file and checks it against its use.

    Args:
        path (str): file written by :func:`save_text_embeddings`
            (``tools/build_text_embeddings.py``).
        expected_names (Sequence[str] or None): class names it must hold, in this order.
        expected_dim (int or None): embedding size it must have (the model's projection size).
        target (str): what ``expected_names`` belong to, for messages (e.g. "dataset 'coco_val'").

    Returns:
        ClassEmbeddings

    Raises:
        ClassEmbeddingError: missing/malformed file, or a count, name or dimension mismatch.
    """
    if not path or not os.path.isfile(path):
        raise ClassEmbeddingError(f"{path}: class text-embedding file not found "
                                  "(build it with tools/build_text_embeddings.py)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ClassEmbeddingError(
            f"{path}: not a readable class text-embedding file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ClassEmbeddingError(f"{path}: not a det_ext class text-embedding file "
                                  f"(field 'format' must be '{FORMAT_NAME}')")
    names, matrix = data.get("names"), data.get("embeddings")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ClassEmbeddingError(f"{path}: field 'names' must be a list of strings")
    if not isinstance(matrix, torch.Tensor):
        raise ClassEmbeddingError(f"{path}: field 'embeddings' must be a tensor")
    try:
        emb = ClassEmbeddings(names, matrix, list(data.get("templates", [])),
                              dict(data.get("encoder", {})))
    except ClassEmbeddingError as e:
        raise ClassEmbeddingError(f"{path}: {e}") from None
    if expected_names is not None:
        check_names(emb.names, expected_names, path, target)
    if expected_dim is not None and emb.dim != expected_dim:
        raise ClassEmbeddingError(f"{path}: embedding dimension {emb.dim} does not match the "
                                  f"model's {expected_dim} (OPEN_VOCAB.EMBED_DIM / the text "
                                  "encoder the model was trained with)")
    return emb
