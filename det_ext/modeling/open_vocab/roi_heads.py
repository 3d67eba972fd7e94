# Copyright (c) det_ext authors.
"""``StandardROIHeads`` with the text-embedding box predictor (Faster and Mask R-CNN)."""
from __future__ import annotations

import logging
from typing import List, Optional

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads

from det_ext.utils.errors import ConfigInputError

from .embeddings import ClassEmbeddings, load_text_embeddings
from .predictor import OpenVocabOutputLayers

__all__ = ["OpenVocabROIHeads", "dataset_class_names", "load_train_embeddings"]

logger = logging.getLogger(__name__)


def dataset_class_names(dataset_name: str) -> List[str]:
    """Class names (contiguous order) of a registered dataset, from its metadata or, before it has
    been loaded, from the categories of its ``json_file``."""
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("thing_classes")
    if names is None and meta.get("json_file"):
        from det_ext.data.datasets import metadata_from_categories, read_dataset_json

        names = metadata_from_categories(read_dataset_json(meta.json_file)["categories"])[
            "thing_classes"]
    if names is None:
        raise ConfigInputError(f"dataset '{dataset_name}' has no class names (thing_classes)")
    return list(names)


def load_train_embeddings(cfg) -> ClassEmbeddings:
    """The training vocabulary's embeddings (``OPEN_VOCAB.TRAIN_EMBEDDINGS``), checked against the
    first training dataset's class names, ``MODEL.ROI_HEADS.NUM_CLASSES`` and
    ``OPEN_VOCAB.EMBED_DIM``."""
    path = cfg.OPEN_VOCAB.TRAIN_EMBEDDINGS
    if not path:
        raise ConfigInputError("OPEN_VOCAB.TRAIN_EMBEDDINGS: a class text-embedding file is "
                               "required by OpenVocabROIHeads (tools/build_text_embeddings.py)")
    names: Optional[List[str]] = None
    target = "the training vocabulary"
    if len(cfg.DATASETS.TRAIN):
        names = dataset_class_names(cfg.DATASETS.TRAIN[0])
        target = f"training dataset '{cfg.DATASETS.TRAIN[0]}'"
    emb = load_text_embeddings(path, names, cfg.OPEN_VOCAB.EMBED_DIM or None, target)
    if len(emb) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ConfigInputError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but "
            f"OPEN_VOCAB.TRAIN_EMBEDDINGS ({path}) has {len(emb)} classes")
    return emb


@ROI_HEADS_REGISTRY.register()
class OpenVocabROIHeads(StandardROIHeads):
    """Standard ROI heads whose box predictor is :class:`OpenVocabOutputLayers`.

    The training vocabulary is read from ``OPEN_VOCAB.TRAIN_EMBEDDINGS``; the class names in use
    are kept in ``self.class_names`` (swapped with
    :func:`~det_ext.modeling.open_vocab.set_vocabulary`). Masks, if on, should be class-agnostic
    (``MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK``) so that the vocabulary can change.
    """

    @configurable
    def __init__(self, *, class_names: List[str], **kwargs):
        super().__init__(**kwargs)
        self.class_names = list(class_names)

    @classmethod
    def from_config(cls, cfg, input_shape):
        emb = load_train_embeddings(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["class_names"] = emb.names
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        emb = load_train_embeddings(cfg)
        ret["box_predictor"] = OpenVocabOutputLayers(cfg, ret["box_head"].output_shape,
                                                     class_embeddings=emb.embeddings)
        return ret
