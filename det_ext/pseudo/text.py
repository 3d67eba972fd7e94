# Copyright (c) det_ext authors.
"""Caption cleaning and a dependency-free BERT WordPiece tokenizer.

The tokenizer reads a BERT ``vocab.txt`` (one token per line; ``bert-base-uncased`` for real ALBEF
checkpoints, a word-level vocabulary for the tiny LT-Shapes model) and reproduces BERT's uncased
basic tokenisation (lower case, accents stripped, punctuation split) followed by greedy
longest-match WordPiece. The same :meth:`WordPieceTokenizer.tokenize` is used for encoding captions
and for caption-to-category matching, so token positions always agree.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Dict, List, Sequence, Tuple

import torch

from det_ext.utils.errors import DetExtInputError

__all__ = ["clean_caption", "WordPieceTokenizer", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_STRIP = re.compile(r"[,.'!?\"()*#:;~]")


def clean_caption(caption: str, max_words: int = 30) -> str:
    """ALBEF's ``pre_caption``: lower case, punctuation stripped, ``-``/``/`` to spaces, at most
    ``max_words`` words.

    Args:
        caption (str): raw caption.
        max_words (int): truncation length in words.

    Returns:
        str: the cleaned caption (possibly empty).
    """
    text = _STRIP.sub("", caption.lower()).replace("-", " ").replace("/", " ")
    text = text.replace("<person>", "person")
    words = text.split()
    return " ".join(words[:max_words])


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPieceTokenizer:
    """Uncased BERT tokenizer over a ``vocab.txt`` token list.

    Args:
        vocab (Sequence[str]): tokens in id order; must contain the special tokens
            ``[PAD] [UNK] [CLS] [SEP]``.
        max_chars_per_word (int): longer words become ``[UNK]`` (as in BERT).
    """

    def __init__(self, vocab: Sequence[str], max_chars_per_word: int = 100):
        self.vocab: List[str] = list(vocab)
        self.token_to_id: Dict[str, int] = {t: i for i, t in enumerate(self.vocab)}
        missing = [t for t in SPECIAL_TOKENS[:4] if t not in self.token_to_id]
        if missing:
            raise DetExtInputError(f"tokenizer vocabulary: special tokens {missing} are missing")
        self.pad_id = self.token_to_id["[PAD]"]
        self.unk_id = self.token_to_id["[UNK]"]
        self.cls_id = self.token_to_id["[CLS]"]
        self.sep_id = self.token_to_id["[SEP]"]
        self.max_chars_per_word = max_chars_per_word

    @classmethod
    def from_file(cls, path: str) -> "WordPieceTokenizer":
        """Reads a BERT ``vocab.txt``."""
        try:
            with open(path, encoding="utf-8") as f:
                vocab = [line.rstrip("\n") for line in f]
        except OSError as e:
            raise DetExtInputError(f"{path}: cannot read tokenizer vocabulary: {e}") from None
        return cls([t for t in vocab if t])

    def _basic(self, text: str) -> List[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words: List[str] = []
        for chunk in text.split():
            current = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> List[str]:
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.token_to_id:
                    found = piece
                    break
                end -= 1
            if found is None:
                return ["[UNK]"]
            pieces.append(found)
            start = end
        return pieces

    def tokenize(self, text: str) -> List[str]:
        """Word pieces of ``text`` (no special tokens)."""
        return [p for w in self._basic(text) for p in self._wordpiece(w)]

    def encode(self, texts: Sequence[str], max_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] pieces [SEP]`` ids, explicitly truncated to ``max_length`` and padded to the
        longest.

        Returns:
            tuple: ``input_ids`` [B, L] (long) and ``attention_mask`` [B, L] (long).
        """
        rows = []
        for text in texts:
            ids = [self.token_to_id.get(p, self.unk_id) for p in self.tokenize(text)]
            rows.append([self.cls_id] + ids[: max_length - 2] + [self.sep_id])
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return input_ids, mask
