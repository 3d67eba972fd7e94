# Copyright (c) det_ext authors.
"""Training data of the tiny vision-language model: images and captions in memory, their category
mentions, swapped-caption negatives and flip/rotation augmentation."""

from __future__ import annotations

import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from det_ext.data.datasets import read_dataset_json
from det_ext.utils.errors import DatasetFormatError

from .inputs import read_captions
from .matching import CaptionMatcher, Vocabulary, pluralize, singularize
from .text import SPECIAL_TOKENS, WordPieceTokenizer, clean_caption

__all__ = ["build_word_vocab", "CaptionData", "flip_rotate"]


def build_word_vocab(captions: Sequence[str], extra_phrases: Sequence[str] = ()) -> List[str]:
    """Word-level tokenizer vocabulary: specials, then words by decreasing frequency."""
    counts: Counter = Counter()
    basic = WordPieceTokenizer(list(SPECIAL_TOKENS))
    for text in list(captions) + list(extra_phrases):
        counts.update(basic._basic(clean_caption(text)))
    return list(SPECIAL_TOKENS) + [
        w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))
    ]


class CaptionData:
    """Images (uint8, in memory), captions, their category mentions and negative sampling.

    Args:
        captions_file: one captions file (``[{image_id, file_name, captions}]``) or several (a
            caption corpus made of several LT-Shapes worlds); ``image_root`` matches it.
        image_root: folder (or folders) the ``file_name`` entries are relative to.
        vocab_file: the ``{category: [surface forms]}`` vocabulary (the same for every source).

    Attributes:
        captions_files (list): the captions files read, in order.
    """

    def __init__(
        self,
        captions_file: Union[str, Sequence[str]],
        image_root: Union[str, Sequence[str]],
        vocab_file: str,
        dataset_json: Optional[str] = None,
        tokenizer: Optional[WordPieceTokenizer] = None,
    ):
        files = [captions_file] if isinstance(captions_file, str) else list(captions_file)
        self.captions_files = files
        roots = [image_root] if isinstance(image_root, str) else list(image_root)
        if len(files) != len(roots):
            raise ValueError(f"{len(files)} captions files but {len(roots)} image roots")
        sources = [(file, root, r) for file, root in zip(files, roots) for r in read_captions(file)]
        cats = read_dataset_json(dataset_json)["categories"] if dataset_json else None
        self.vocabulary = Vocabulary.load(vocab_file, cats)
        self.captions: List[List[str]] = [
            [clean_caption(c) for c in r.captions] for _, _, r in sources
        ]
        forms = [f for c in self.vocabulary.categories for f in c.forms]
        self.tokenizer = tokenizer or WordPieceTokenizer(
            build_word_vocab([c for cs in self.captions for c in cs], forms)
        )
        images = []
        for file, root, r in sources:
            path = os.path.join(root, r.file_name)
            if not os.path.isfile(path):
                raise DatasetFormatError(f"{file}: image {path} not found")
            images.append(np.asarray(Image.open(path).convert("RGB")))
        self.images = images
        self.matcher = CaptionMatcher(self.vocabulary, self.tokenizer.tokenize)
        self.mentions = [
            [self.matcher.match(self.tokenizer.tokenize(c)) for c in cs] for cs in self.captions
        ]
        self.image_cats = [set(m.category_id for ms in per for m in ms) for per in self.mentions]
        self.forms_by_cat: Dict[int, Tuple[List[str], List[str]]] = {}
        for c in self.vocabulary.categories:
            sing = [f for f in c.forms if singularize(f) == f]
            plur = [f for f in c.forms if singularize(f) != f and pluralize(singularize(f)) == f]
            self.forms_by_cat[c.id] = (sing or c.forms, plur or c.forms)

    def __len__(self) -> int:
        return len(self.images)

    def caption_true_for(self, caption_cats: set, caption: str, image: int) -> bool:
        if caption_cats:
            return caption_cats <= self.image_cats[image]
        return caption in self.captions[image]

    def swapped(self, image: int, cap: int, rng: np.random.Generator) -> Optional[str]:
        """The caption with one mention replaced by a category absent from the image."""
        mentions = self.mentions[image][cap]
        if not mentions:
            return None
        m = mentions[int(rng.integers(len(mentions)))]
        tokens = self.tokenizer.tokenize(self.captions[image][cap])
        others = [c.id for c in self.vocabulary.categories if c.id not in self.image_cats[image]]
        if not others:
            return None
        # prefer categories sharing a word with the replaced form (same colour or shape)
        words = set(m.form.split())
        weights = np.array(
            [3.0 if words & set(self.vocabulary.by_id[o].name.split()) else 1.0 for o in others]
        )
        new = others[int(rng.choice(len(others), p=weights / weights.sum()))]
        plural = singularize(m.form) != m.form
        forms = self.forms_by_cat[new][1 if plural else 0]
        form = forms[int(rng.integers(len(forms)))]
        return " ".join(tokens[: m.left - 1] + [form] + tokens[m.right - 1 :])


def flip_rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips/rotations of a square image [H, W, 3], uniformly."""
    k = int(rng.integers(8))
    out = np.rot90(image, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)
