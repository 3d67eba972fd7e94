# Copyright (c) det_ext authors.
"""Caption-to-category matching with a vocabulary of surface forms.

Fixes over PB-OVD's matcher: every occurrence is found (not only the first); plural/singular forms
are added automatically and synonyms/plurals come from the dataset's category records; when a match
lies inside a longer match of another category ("red circle" inside "dark red circle") only the
longer one is kept; number words before a match ("three red circles") give an instance count; the
tokenised forms are cached per matcher and never modified.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from det_ext.utils.errors import DatasetFormatError
from det_ext.utils.io import read_json_input

__all__ = [
    "VocabCategory",
    "Vocabulary",
    "Match",
    "CaptionMatcher",
    "pluralize",
    "singularize",
    "NUMBER_WORDS",
]

NUMBER_WORDS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "several": 3,
    "many": 3,
}


def pluralize(phrase: str) -> str:
    """English plural of the last word of ``phrase`` (regular rules)."""
    words = phrase.split()
    if not words:
        return phrase
    w = words[-1]
    if w.endswith(("s", "x", "z", "sh", "ch")):
        w += "es"
    elif w.endswith("y") and len(w) > 1 and w[-2] not in "aeiou":
        w = w[:-1] + "ies"
    else:
        w += "s"
    return " ".join(words[:-1] + [w])


def singularize(phrase: str) -> str:
    """Inverse of :func:`pluralize` for regular plurals (``phrase`` unchanged if not plural)."""
    words = phrase.split()
    if not words:
        return phrase
    w = words[-1]
    if w.endswith("ies") and len(w) > 3:
        w = w[:-3] + "y"
    elif w.endswith(("ses", "xes", "zes", "shes", "ches")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 1:
        w = w[:-1]
    return " ".join(words[:-1] + [w])


@dataclasses.dataclass
class VocabCategory:
    """A category of the vocabulary: dataset id, name and surface forms (lower case)."""

    id: int
    name: str
    forms: List[str]


@dataclasses.dataclass(frozen=True)
class Match:
    """One mention of a category in a caption.

    Attributes:
        category_id (int): dataset category id.
        form (str): the surface form that matched.
        left, right (int): token span [left, right) in the encoded caption ([CLS] = 0).
        count (int): instance count from a number word just before the mention (1 if none).
    """

    category_id: int
    form: str
    left: int
    right: int
    count: int = 1


class Vocabulary:
    """Categories and their surface forms."""

    def __init__(self, categories: Sequence[VocabCategory]):
        self.categories = list(categories)
        self.by_id = {c.id: c for c in self.categories}

    @classmethod
    def load(
        cls,
        vocab_file: str,
        dataset_categories: Optional[List[Dict[str, Any]]] = None,
        auto_plurals: bool = True,
    ) -> "Vocabulary":
        """Reads ``{category: [surface forms]}`` and completes it.

        Args:
            vocab_file (str): JSON vocabulary.
            dataset_categories (list or None): LVIS/COCO category records (``id``, ``name``,
                optional ``synonyms`` and ``plurals``). When given, every vocabulary name must be
                one of them and its id is used; otherwise ids are 1..K in file order.
            auto_plurals (bool): add the plural and the singular of every form.

        Raises:
            DatasetFormatError: unreadable file, wrong structure or a name not in the dataset.
        """
        raw = read_json_input(vocab_file, "vocabulary file")
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v)
            for k, v in raw.items()
        ):
            raise DatasetFormatError(f"{vocab_file}: expected {{category: [surface forms]}}")
        by_name = {c["name"]: c for c in dataset_categories or []}
        cats = []
        for i, (name, forms) in enumerate(raw.items()):
            rec = by_name.get(name)
            if dataset_categories is not None and rec is None:
                raise DatasetFormatError(
                    f"{vocab_file}: category '{name}' is not in the dataset's " "categories"
                )
            all_forms = [name] + list(forms)
            if rec is not None:
                all_forms += list(rec.get("synonyms") or []) + list(rec.get("plurals") or [])
            if auto_plurals:
                all_forms += [pluralize(f) for f in all_forms if singularize(f) == f] + [
                    singularize(f) for f in all_forms if singularize(f) != f
                ]
            seen: Dict[str, None] = {}
            for f in all_forms:
                f = " ".join(f.lower().replace("_", " ").split())
                if f:
                    seen.setdefault(f, None)
            cats.append(VocabCategory(int(rec["id"]) if rec else i + 1, name, list(seen)))
        return cls(cats)


class CaptionMatcher:
    """Finds category mentions in tokenised captions.

    Args:
        vocabulary (Vocabulary): categories and forms.
        tokenize (callable): the backend's tokenizer (text -> tokens); spans refer to its tokens.
        all_occurrences (bool): every occurrence (True) or only the first per form (PB-OVD).
        prefer_longest (bool): drop a match lying inside a longer match of another category.
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        tokenize: Callable[[str], List[str]],
        all_occurrences: bool = True,
        prefer_longest: bool = True,
    ):
        self.vocabulary = vocabulary
        self.all_occurrences = all_occurrences
        self.prefer_longest = prefer_longest
        forms: List[Tuple[int, str, Tuple[str, ...]]] = []
        for cat in vocabulary.categories:
            for form in cat.forms:
                toks = tuple(tokenize(form))
                if toks and "[UNK]" not in toks:
                    forms.append((cat.id, form, toks))
        self._forms = tuple(forms)  # immutable: no caller can corrupt the shared token lists

    def match(self, tokens: Sequence[str], max_tokens: Optional[int] = None) -> List[Match]:
        """Mentions in a caption given as tokens (no specials).

        Args:
            tokens: the caption's tokens.
            max_tokens: mentions ending after this many tokens (the encoder's truncation) are
                dropped.

        Returns:
            list[Match]: sorted by position.
        """
        tokens = tuple(tokens)
        found = []
        for cat_id, form, toks in self._forms:
            n = len(toks)
            for start in range(len(tokens) - n + 1):
                if tokens[start : start + n] == toks:
                    if max_tokens is None or start + n <= max_tokens:
                        count = NUMBER_WORDS.get(tokens[start - 1], 1) if start > 0 else 1
                        found.append(Match(cat_id, form, start + 1, start + 1 + n, count))
                    if not self.all_occurrences:
                        break
        if self.prefer_longest:
            kept: List[Match] = []
            for m in sorted(found, key=lambda m: (-(m.right - m.left), m.left)):
                inside = any(
                    k.left <= m.left
                    and m.right <= k.right
                    and (k.right - k.left) > (m.right - m.left)
                    for k in kept
                )
                if not inside:
                    kept.append(m)
            found = kept
        # identical spans of one category from two forms: keep one
        unique = {(m.category_id, m.left, m.right): m for m in found}
        return sorted(unique.values(), key=lambda m: (m.left, m.right, m.category_id))
