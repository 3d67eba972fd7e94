# Copyright (c) det_ext authors.
"""End-to-end generation from a config: build the parts, run one shard, merge when complete."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from detectron2.config import CfgNode

from det_ext.data.datasets import read_dataset_json
from det_ext.utils.io import atomic_write_json

from .backends.base import VL_BACKEND_REGISTRY, VLBackend
from .generator import PseudoBoxGenerator, run_shard, shard_records
from .inputs import read_captions
from .matching import CaptionMatcher, Vocabulary
from .proposals import ProposalSource, build_proposal_source
from .writer import merge_shards, shard_path

__all__ = [
    "build_backend",
    "build_generator",
    "generate_pseudo_boxes",
    "generator_settings",
    "dataset_categories",
]

logger = logging.getLogger(__name__)


def build_backend(cfg: CfgNode, per_image: Optional[bool] = None) -> VLBackend:
    """The backend named by ``cfg.PSEUDO.BACKEND``."""
    cls = VL_BACKEND_REGISTRY.get(cfg.PSEUDO.BACKEND)
    return cls.from_config(cfg, per_image=per_image)


def dataset_categories(
    captions_file: str, dataset_json: Optional[str]
) -> Optional[List[Dict[str, Any]]]:
    """Category records from ``dataset_json`` or from the captions file when it is an LVIS JSON."""
    if dataset_json:
        return read_dataset_json(dataset_json)["categories"]
    with open(captions_file) as f:
        raw = json.load(f)
    if isinstance(raw, dict) and isinstance(raw.get("categories"), list):
        return raw["categories"]
    return None


def generator_settings(cfg: CfgNode) -> Dict[str, Any]:
    """The config values that change the output (recorded in shard headers and the output)."""
    p = cfg.PSEUDO
    return {
        "backend": p.BACKEND,
        "span_pool": p.SPAN_POOL,
        "albef": dict(p.ALBEF),
        "blip": dict(p.BLIP),
        "clip": dict(p.CLIP),
        "matching": dict(p.MATCHING),
        "proposals": dict(p.PROPOSALS),
        "selection": dict(p.SELECTION),
    }


def build_generator(
    cfg: CfgNode,
    vocabulary: Vocabulary,
    image_root: str,
    backend: Optional[VLBackend] = None,
    proposals: Optional[ProposalSource] = None,
) -> PseudoBoxGenerator:
    """A :class:`PseudoBoxGenerator` from ``cfg.PSEUDO`` (parts can be passed in to share them)."""
    backend = backend or build_backend(cfg)
    m = cfg.PSEUDO.MATCHING
    matcher = CaptionMatcher(vocabulary, backend.tokenize, m.ALL_OCCURRENCES, m.PREFER_LONGEST)
    s = cfg.PSEUDO.SELECTION
    return PseudoBoxGenerator(
        backend,
        matcher,
        proposals or build_proposal_source(cfg),
        image_root,
        s.ALPHA,
        s.MAP_THRESHOLD,
        m.MAX_COUNT,
        s.MIN_SCORE,
        s.PROPOSAL_SCORE_WEIGHT,
    )


def generate_pseudo_boxes(
    cfg: CfgNode,
    captions_file: str,
    vocab_file: str,
    out: str,
    image_root: Optional[str] = None,
    dataset_json: Optional[str] = None,
    shard: Tuple[int, int] = (0, 1),
    progress: bool = True,
    max_batches: Optional[int] = None,
    generator: Optional[PseudoBoxGenerator] = None,
    text_embeddings: bool = False,
) -> Optional[Dict[str, Any]]:
    """Runs shard ``shard`` and, when every shard is finished, writes ``out``.

    With ``text_embeddings`` every category of ``out`` gets ``embedding: {"<Backend>": [...]}``, the
    backend's L2-normalised text embedding of its name (PB-OVD stores CLIP's as ``ClipEmb``).

    Returns:
        dict or None: the final report when ``out`` was written, else None.
    """
    records = read_captions(captions_file)
    image_root = image_root or os.path.dirname(os.path.abspath(captions_file))
    cats = dataset_categories(captions_file, dataset_json)
    vocabulary = Vocabulary.load(vocab_file, cats, cfg.PSEUDO.MATCHING.AUTO_PLURALS)
    settings = generator_settings(cfg)
    mine = shard_records(records, shard)
    if generator is None:
        generator = build_generator(cfg, vocabulary, image_root)
    run_shard(
        generator,
        mine,
        shard_path(out, *shard),
        cfg.PSEUDO.BATCH_SIZE,
        settings,
        progress,
        max_batches,
    )
    report = try_merge(out, shard[1], records, vocabulary, cats, image_root, settings)
    if report is not None and text_embeddings:
        add_text_embeddings(out, generator.backend)
    return report


def add_text_embeddings(out: str, backend: VLBackend) -> None:
    """Adds ``embedding: {"<Backend class>": vector}`` to every category of the JSON ``out``."""
    with open(out) as f:
        data = json.load(f)
    vectors = backend.text_embeddings([c["name"] for c in data["categories"]])
    for c, v in zip(data["categories"], vectors):
        c["embedding"] = {type(backend).__name__: [round(float(x), 6) for x in v]}
    atomic_write_json(out, data)


def try_merge(out, num_shards, records, vocabulary, cats, image_root, settings):
    """Merges when all shards are complete; otherwise logs which are missing and returns None."""
    expected = {i: len(shard_records(records, (i, num_shards))) for i in range(num_shards)}
    from .generator import read_shard_file

    missing = []
    for i in range(num_shards):
        _, batches = read_shard_file(shard_path(out, i, num_shards))
        if sum(len(v) for v in batches.values()) != expected[i]:
            missing.append(i)
    if missing:
        logger.info(
            "Shards %s of %d not finished yet; %s will be written by the last one (or "
            "run with --merge)",
            missing,
            num_shards,
            out,
        )
        return None
    by_id = {c["id"]: c for c in cats or []}
    categories = []
    for c in vocabulary.categories:
        rec = {"id": c.id, "name": c.name, "synonyms": c.forms}
        for key in ("frequency", "image_count", "instance_count", "def", "synset"):
            if key in by_id.get(c.id, {}):
                rec[key] = by_id[c.id][key]
        categories.append(rec)
    return merge_shards(out, num_shards, categories, image_root, settings, expected)
