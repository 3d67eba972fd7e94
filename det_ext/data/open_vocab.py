# Copyright (c) det_ext authors.
"""Open-vocabulary splits: base/novel categories and their dataset registration.

Protocol (OVR-CNN / PB-OVD): the detector is trained on *base* categories only; the boxes of
*novel* categories are never used in training. Training images keep their novel objects, which
become unlabeled background for base training (the standard open-vocabulary setting). Evaluation is
generalized: every test category (base + novel) is scored at once and AP50 is averaged over the
novel, the base and all categories (metadata ``novel_category_ids``, read by
:class:`det_ext.engine.open_vocab_eval.OpenVocabEvaluator`).

Registered names:

- LT-Shapes: ``lt_shapes_ov_base_train`` (base categories only, novel boxes removed) and
  ``lt_shapes_ov_val`` (all 30 categories, novel = :data:`LT_SHAPES_NOVEL`);
  ``<prefix>_ov_base_train`` / ``<prefix>_ov_val`` for other worlds via
  :func:`register_lt_shapes_ov`.
- COCO (48 base / 17 novel, :data:`COCO_OV_BASE` / :data:`COCO_OV_NOVEL`): ``coco_ov_base_train``
  and ``coco_ov_val`` (65 categories) from files written by :func:`write_ov_split_json`, and
  ``coco_ov_pseudo_train`` (``<root>/coco_ov/pseudo_boxes_train2017.json``).
- ``lt_shapes_ov_pseudo_train``: pseudo boxes of the default world's training images
  (``$DET_EXT_LT_SHAPES_OV_PSEUDO_JSON`` or ``<root>/lt_shapes_ov/pseudo_boxes_train.json``), and
  ``lt_shapes_ov_base_pseudo_novel_train``: base ground truth plus those pseudo boxes of the novel
  classes, all 30 classes (:func:`register_base_with_pseudo_novel`).
- LVIS v1 (rare = novel): ``lvis_v1_ov_base_train`` (866 common + frequent categories) and
  ``lvis_v1_ov_val`` (all 1203; novel AP = APr).
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from det_ext.utils.errors import DatasetFormatError
from det_ext.utils.io import atomic_write_json

from .datasets import (datasets_root, metadata_from_categories, read_dataset_json,
                       register_lt_shapes, register_lvis_format_dataset)
from .lt_shapes import LTShapesSpec
from .lt_shapes.vocabulary import build_categories

__all__ = ["LT_SHAPES_NOVEL", "COCO_OV_BASE", "COCO_OV_NOVEL", "register_lt_shapes_ov",
           "write_ov_split_json", "register_coco_ov", "register_lvis_ov",
           "register_all_open_vocab", "split_categories",
           "register_pseudo_box_dataset", "register_base_with_pseudo_novel"]

logger = logging.getLogger(__name__)

# Novel categories of the default 30-category LT-Shapes vocabulary, spread over the frequency
# groups (training instances in the default world): frequent "yellow ring" (500) and
# "pink hexagon" (106); common "white bar" (77), "green square" (34), "orange star" (16); rare
# "red arrow" (6). Each novel name combines a colour and a shape that also occur in base names.
LT_SHAPES_NOVEL = ("yellow ring", "pink hexagon", "white bar", "green square", "orange star",
                   "red arrow")

# OVR-CNN's COCO split ("_2" files), names as in Detic's coco_zeroshot.py (COCO spelling).
COCO_OV_BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse",
    "sheep", "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis",
    "kite", "surfboard", "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed", "toilet", "tv", "laptop",
    "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock", "vase",
    "toothbrush")
COCO_OV_NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors")


def split_categories(categories: Sequence[Dict[str, Any]], novel_names: Iterable[str],
                     source: str) -> Dict[str, List[Dict[str, Any]]]:
    """Splits category records into ``{"base": [...], "novel": [...]}`` by name.

    Raises:
        DatasetFormatError: a novel name that is not a category of ``source``.
    """
    novel_names = list(novel_names)
    names = {c["name"] for c in categories}
    missing = [n for n in novel_names if n not in names]
    if missing:
        raise DatasetFormatError(f"{source}: novel categories {missing} are not categories of it")
    cats = sorted(categories, key=lambda c: c["id"])
    return {"base": [c for c in cats if c["name"] not in novel_names],
            "novel": [c for c in cats if c["name"] in novel_names]}


def _filter_dicts(dicts: List[Dict[str, Any]], old_to_new: Dict[int, int]) -> List[Dict[str, Any]]:
    """Keeps every image, drops annotations whose contiguous class is not in ``old_to_new`` and
    remaps the others (also in the federated id lists)."""
    out = []
    for d in dicts:
        d = dict(d)
        d["annotations"] = [dict(a, category_id=old_to_new[a["category_id"]])
                            for a in d["annotations"] if a["category_id"] in old_to_new]
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key in d:
                d[key] = [old_to_new[c] for c in d[key] if c in old_to_new]
        out.append(d)
    return out


def register_lt_shapes_ov(spec: Optional[LTShapesSpec] = None, prefix: str = "lt_shapes",
                          novel: Sequence[str] = LT_SHAPES_NOVEL) -> Dict[str, str]:
    """Registers ``{prefix}_ov_base_train`` and ``{prefix}_ov_val`` for an LT-Shapes world.

    Args:
        spec (LTShapesSpec or None): the world (default world when None); also registers
            ``{prefix}_train`` / ``{prefix}_val`` if needed.
        prefix (str): dataset name prefix.
        novel (Sequence[str]): novel category names (must be categories of the world).

    Returns:
        dict: ``{"base_train": name, "val": name, "train": world train, "world_val": world val}``.
    """
    spec = spec or LTShapesSpec()
    world = register_lt_shapes(spec, prefix=prefix)
    cats = [{"id": i + 1, "name": c.name} for i, c in
            enumerate(build_categories(spec.num_categories, spec.num_twins))]
    split = split_categories(cats, novel, f"LT-Shapes world '{prefix}'")
    novel_ids = [c["id"] for c in split["novel"]]
    base_ids = [c["id"] for c in split["base"]]
    base_name, val_name = f"{prefix}_ov_base_train", f"{prefix}_ov_val"
    if base_name not in DatasetCatalog.list():
        old_to_new = {cid - 1: i for i, cid in enumerate(base_ids)}

        def load_base(train=world["train"], old_to_new=old_to_new):
            return _filter_dicts(DatasetCatalog.get(train), old_to_new)

        DatasetCatalog.register(base_name, load_base)
        MetadataCatalog.get(base_name).set(
            thing_classes=[c["name"] for c in split["base"]],
            thing_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(base_ids)},
            base_category_ids=base_ids, removed_category_ids=novel_ids,
            source_dataset=world["train"], evaluator_type="lvis")
    if val_name not in DatasetCatalog.list():
        DatasetCatalog.register(val_name, lambda val=world["val"]: DatasetCatalog.get(val))
        src = MetadataCatalog.get(world["val"])
        keys = ("json_file", "image_root", "thing_classes", "thing_dataset_id_to_contiguous_id",
                "lt_shapes_spec", "lt_shapes_root", "lt_shapes_split", "captions_file",
                "vocab_file", "evaluator_type")
        MetadataCatalog.get(val_name).set(
            **{k: src.get(k) for k in keys if src.get(k) is not None},
            novel_category_ids=novel_ids, base_category_ids=base_ids)
    return {"base_train": base_name, "val": val_name, "train": world["train"],
            "world_val": world["val"]}


def write_ov_split_json(src_json: str, out_json: str, keep_names: Sequence[str],
                        novel_names: Sequence[str] = ()) -> str:
    """Writes a COCO/LVIS-format file restricted to the categories ``keep_names``.

    Annotations of other categories are dropped, images are all kept (their other objects become
    unlabeled background), federated id lists are filtered, and categories in ``novel_names`` get
    ``"split": "unseen"`` (the others ``"seen"``), as OVR-CNN's files.

    Returns:
        str: ``out_json`` (written atomically).
    """
    data = read_dataset_json(src_json)
    names = {c["name"] for c in data["categories"]}
    missing = [n for n in list(keep_names) + list(novel_names) if n not in names]
    if missing:
        raise DatasetFormatError(f"{src_json}: categories {missing[:5]} not found")
    keep = {c["id"] for c in data["categories"] if c["name"] in set(keep_names)}
    out = copy.copy(data)
    out["categories"] = [dict(c, split="unseen" if c["name"] in set(novel_names) else "seen")
                         for c in data["categories"] if c["id"] in keep]
    out["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep]
    images = []
    for img in data["images"]:
        img = dict(img)
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key in img:
                img[key] = [c for c in img[key] if c in keep]
        images.append(img)
    out["images"] = images
    atomic_write_json(out_json, out)
    logger.info("Wrote %s: %d categories, %d annotations", out_json, len(out["categories"]),
                len(out["annotations"]))
    return out_json


def _register_file_split(name: str, json_file: str, image_root: str, novel: Sequence[str],
                         evaluator_type: str) -> None:
    if name in DatasetCatalog.list():
        return
    register_lvis_format_dataset(name, json_file, image_root,
                                 metadata={"evaluator_type": evaluator_type})
    meta = MetadataCatalog.get(name)
    meta.set(novel_category_names=list(novel))
    if os.path.isfile(json_file):  # ids are known once the split file exists
        cats = read_dataset_json(json_file)["categories"]
        meta.set(novel_category_ids=[c["id"] for c in cats if c["name"] in set(novel)],
                 **{k: v for k, v in metadata_from_categories(cats).items()
                    if k in ("thing_classes", "thing_dataset_id_to_contiguous_id")})


def register_coco_ov(root: Optional[str] = None) -> Dict[str, str]:
    """Registers ``coco_ov_base_train`` (48 base categories) and ``coco_ov_val`` (65 categories, 17
    novel; COCO metrics) on ``<root>/coco_ov/instances_{train2017_base,val2017_generalized}.json``
    written by ``write_ov_split_json`` from the COCO 2017 instance files (docs/open_vocab.md)."""
    root = root or datasets_root()
    folder = os.path.join(root, "coco_ov")
    _register_file_split("coco_ov_base_train",
                         os.path.join(folder, "instances_train2017_base.json"),
                         os.path.join(root, "coco/train2017"), (), "coco")
    _register_file_split("coco_ov_val", os.path.join(folder, "instances_val2017_generalized.json"),
                         os.path.join(root, "coco/val2017"), COCO_OV_NOVEL, "coco")
    register_pseudo_box_dataset("coco_ov_pseudo_train",
                                os.path.join(folder, "pseudo_boxes_train2017.json"),
                                os.path.join(root, "coco/train2017"))
    return {"base_train": "coco_ov_base_train", "val": "coco_ov_val",
            "pseudo_train": "coco_ov_pseudo_train"}


def register_lvis_ov(root: Optional[str] = None) -> Dict[str, str]:
    """Registers ``lvis_v1_ov_base_train`` (``<root>/lvis/lvis_v1_train_norare.json``: LVIS v1
    train without the 337 rare categories) and ``lvis_v1_ov_val`` (``lvis_v1_val.json``, rare
    categories novel: novel AP = APr)."""
    root = root or datasets_root()
    _register_file_split("lvis_v1_ov_base_train",
                         os.path.join(root, "lvis/lvis_v1_train_norare.json"), root, (), "lvis")
    val_json = os.path.join(root, "lvis/lvis_v1_val.json")
    name = "lvis_v1_ov_val"
    if name not in DatasetCatalog.list():
        register_lvis_format_dataset(name, val_json, root, metadata={"evaluator_type": "lvis"})
        if os.path.isfile(val_json):
            cats = read_dataset_json(val_json)["categories"]
            MetadataCatalog.get(name).set(
                novel_category_ids=[c["id"] for c in cats if c.get("frequency") == "r"])
    return {"base_train": "lvis_v1_ov_base_train", "val": name}


def register_pseudo_box_dataset(name: str, json_file: str, image_root: Optional[str] = None,
                                metadata: Optional[Dict[str, Any]] = None) -> str:
    """Registers a pseudo-box file (LVIS/COCO format, ``pseudo_score`` per annotation) for
    training. With ``image_root`` None, the file's ``info.image_root`` is used when it is loaded.

    Returns:
        str: ``name``.
    """
    if name in DatasetCatalog.list():
        return name

    def load(json_file=json_file, image_root=image_root):
        root = image_root
        if root is None:
            root = read_dataset_json(json_file).get("info", {}).get("image_root")
            if not root:
                raise DatasetFormatError(f"{json_file}: no info.image_root; give image_root")
        from .datasets import load_lvis_format_json

        return load_lvis_format_json(json_file, root, name)

    register_lvis_format_dataset(name, json_file, image_root, metadata=metadata, loader=load)
    return name


def register_base_with_pseudo_novel(name: str, world_train: str, pseudo_name: str,
                                    novel_ids: Sequence[int]) -> str:
    """Registers base-class ground truth plus the novel classes' pseudo boxes on the same images,
    with every class of ``world_train`` (its contiguous ids). Fine-tuning a pseudo-box detector
    on it keeps novel objects labelled instead of teaching the detector that they are background.

    Args:
        name (str): the new dataset's name.
        world_train (str): a dataset with all classes' ground truth (e.g. ``lt_shapes_train``).
        pseudo_name (str): a pseudo-box dataset of the same images
            (:func:`register_pseudo_box_dataset`).
        novel_ids (Sequence[int]): dataset category ids whose ground truth is dropped and whose
            pseudo boxes are kept.

    Returns:
        str: ``name``.
    """
    if name in DatasetCatalog.list():
        return name
    novel = set(int(i) for i in novel_ids)

    def load() -> List[Dict[str, Any]]:
        world_map = MetadataCatalog.get(world_train).thing_dataset_id_to_contiguous_id
        novel_contiguous = {world_map[i] for i in novel}
        pseudo_dicts = DatasetCatalog.get(pseudo_name)
        pseudo_inv = {c: i for i, c in
                      MetadataCatalog.get(pseudo_name).thing_dataset_id_to_contiguous_id.items()}
        pseudo_by_image = {}
        for d in pseudo_dicts:
            anns = []
            for a in d["annotations"]:
                dataset_id = pseudo_inv[a["category_id"]]
                if dataset_id in novel:
                    anns.append({**a, "category_id": world_map[dataset_id]})
            pseudo_by_image[d["image_id"]] = anns
        out = []
        for d in DatasetCatalog.get(world_train):
            base = [a for a in d["annotations"] if a["category_id"] not in novel_contiguous]
            out.append({**d, "annotations": base + pseudo_by_image.get(d["image_id"], [])})
        return out

    DatasetCatalog.register(name, load)
    src = MetadataCatalog.get(world_train)
    MetadataCatalog.get(name).set(
        thing_classes=list(src.thing_classes),
        thing_dataset_id_to_contiguous_id=dict(src.thing_dataset_id_to_contiguous_id),
        novel_category_ids=sorted(novel), evaluator_type="lvis")
    return name


def register_all_open_vocab() -> None:
    """Registers the default open-vocabulary splits (idempotent, nothing generated or read
    beyond existing split files)."""
    names = register_lt_shapes_ov()
    # Pseudo boxes of the default LT-Shapes world's training images (tools/generate_pseudo_boxes.py
    # writes them; docs/open_vocab.md).
    register_pseudo_box_dataset(
        "lt_shapes_ov_pseudo_train", os.getenv(
            "DET_EXT_LT_SHAPES_OV_PSEUDO_JSON",
            os.path.join(datasets_root(), "lt_shapes_ov", "pseudo_boxes_train.json")))
    # (c)'s fine-tuning data: base ground truth plus the novel classes' pseudo boxes (read lazily).
    register_base_with_pseudo_novel(
        "lt_shapes_ov_base_pseudo_novel_train", names["train"], "lt_shapes_ov_pseudo_train",
        MetadataCatalog.get(names["val"]).novel_category_ids)
    register_coco_ov()
    register_lvis_ov()
