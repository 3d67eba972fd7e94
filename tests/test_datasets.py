# Copyright (c) det_ext authors.
"""Dataset registration, metadata statistics and the validated LVIS-format loader."""
import copy
import json
import os

import pytest
from conftest import TINY_SPEC
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from det_ext.data import get_class_statistics, prepare_datasets
from det_ext.data.datasets import load_lvis_format_json
from det_ext.data.datasets.lt_shapes import maybe_register_lt_shapes_name
from det_ext.utils.errors import DatasetFormatError


def test_lt_shapes_registration_and_metadata(tiny_world):
    assert tiny_world == {"train": "lt_shapes_tiny_train", "val": "lt_shapes_tiny_val"}
    dicts = DatasetCatalog.get("lt_shapes_tiny_train")
    assert len(dicts) == TINY_SPEC.num_train_images
    meta = MetadataCatalog.get("lt_shapes_tiny_train")
    assert meta.evaluator_type == "lvis" and len(meta.thing_classes) == 8
    assert os.path.isfile(meta.json_file) and os.path.isfile(meta.vocab_file)
    d = dicts[0]
    assert os.path.isfile(d["file_name"]) and d["height"] == d["width"] == 64
    assert "captions" in d and "neg_category_ids" in d
    for ann in d["annotations"]:
        assert ann["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= ann["category_id"] < 8
        assert isinstance(ann["segmentation"], dict)  # exact RLE
    stats = get_class_statistics("lt_shapes_tiny_train")
    total = sum(len(x["annotations"]) for x in dicts)
    assert stats.instance_counts.sum() == total
    assert stats.instance_counts.tolist() == meta.class_instance_count
    assert stats.frequency == meta.class_frequency
    # val metadata carries the *training* statistics, as LVIS val does
    val_meta = MetadataCatalog.get("lt_shapes_tiny_val")
    DatasetCatalog.get("lt_shapes_tiny_val")
    assert val_meta.class_instance_count == meta.class_instance_count


def test_class_statistics_computed_from_dicts_when_metadata_lacks_them(tiny_world, tmp_path):
    name = "det_ext_test_plain_copy"
    json_file = MetadataCatalog.get("lt_shapes_tiny_train").json_file
    with open(json_file) as f:
        data = json.load(f)
    for c in data["categories"]:
        for key in ("instance_count", "image_count", "frequency"):
            c.pop(key)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(data))
    root = os.path.dirname(json_file)
    DatasetCatalog.register(name, lambda: load_lvis_format_json(str(plain), root))
    MetadataCatalog.get(name).set(thing_classes=[c["name"] for c in data["categories"]])
    stats = get_class_statistics(name)
    assert stats.instance_counts.tolist() == MetadataCatalog.get(
        "lt_shapes_tiny_train").class_instance_count


def test_on_demand_seed_names_and_unknown_names():
    assert maybe_register_lt_shapes_name("lt_shapes_seed7_val") == (
        "lt_shapes_seed7_train", "lt_shapes_seed7_val")
    assert MetadataCatalog.get("lt_shapes_seed7_train").lt_shapes_spec.seed == 7
    assert maybe_register_lt_shapes_name("coco_2017_train") is None
    with pytest.raises(DatasetFormatError, match="not registered"):
        prepare_datasets(["no_such_dataset"])


def test_missing_real_dataset_names_expected_path():
    with pytest.raises(DatasetFormatError, match=r"lvis_v1_val.json"):
        prepare_datasets(["lvis_v1_val"])
    with pytest.raises(DatasetFormatError, match=r"coco_lt_train.json"):
        prepare_datasets(["coco_lt_train"])


@pytest.fixture()
def small_json(tiny_world, tmp_path):
    meta = MetadataCatalog.get("lt_shapes_tiny_val")
    DatasetCatalog.get("lt_shapes_tiny_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    return data, os.path.dirname(meta.json_file), tmp_path


def _write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


BAD_CASES = [
    ("image_id", lambda d: d["annotations"][0].update(image_id=987654), r"image_id.*987654"),
    ("category_id", lambda d: d["annotations"][0].update(category_id=99), r"category_id.*99"),
    ("zero_box", lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 5]),
     r"bbox.*zero or negative"),
    ("neg_box", lambda d: d["annotations"][0].update(bbox=[1, 2, 3, -5]),
     r"bbox.*zero or negative"),
    ("nan_box", lambda d: d["annotations"][0].update(bbox=[1, float("nan"), 3, 5]), r"bbox.*NaN"),
    ("short_box", lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"bbox must be"),
    ("no_images", lambda d: d.pop("images"), r"'images' is missing"),
    ("image_field", lambda d: d["images"][0].pop("height"), r"images\[0\] lacks field 'height'"),
    ("missing_file", lambda d: d["images"][0].update(file_name="images/none.png"),
     r"file_name: image file not found: .*none.png"),
    ("neg_ids", lambda d: d["images"][0].update(neg_category_ids=[77]), r"neg_category_ids.*77"),
]


@pytest.mark.parametrize("case,mutate,pattern", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_annotations_name_file_entry_and_field(small_json, case, mutate, pattern):
    data, root, tmp_path = small_json
    bad = copy.deepcopy(data)
    mutate(bad)
    path = _write(tmp_path, bad)
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        load_lvis_format_json(path, root)
    assert str(info.value).startswith(path)
    assert "\n" not in str(info.value)


def test_malformed_and_truncated_json(small_json):
    data, root, tmp_path = small_json
    text = json.dumps(data)
    path = _write(tmp_path, text[: len(text) // 2], "truncated.json")
    with pytest.raises(DatasetFormatError, match=r"truncated.json: malformed or truncated JSON"):
        load_lvis_format_json(path, root)
    path = _write(tmp_path, "[1, 2]", "list.json")
    with pytest.raises(DatasetFormatError, match="top level must be an object"):
        load_lvis_format_json(path, root)
    with pytest.raises(DatasetFormatError, match="annotation file not found"):
        load_lvis_format_json(str(tmp_path / "absent.json"), root)
