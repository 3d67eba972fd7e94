# Copyright (c) det_ext authors.
"""Reading the generator's inputs: the captions file and images."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from det_ext.utils.errors import DatasetFormatError
from det_ext.utils.io import read_json_input

__all__ = ["ImageRecord", "read_captions", "load_rgb"]


@dataclasses.dataclass
class ImageRecord:
    """One image of the captions file.

    Attributes:
        image_id (int), file_name (str, relative to the image root), captions (list[str]),
        height / width (int or None: read from the image).
    """

    image_id: int
    file_name: str
    captions: List[str]
    height: Optional[int] = None
    width: Optional[int] = None


def read_captions(path: str) -> List[ImageRecord]:
    """Reads ``[{image_id, file_name, captions}]`` or an LVIS/COCO JSON whose images carry
    ``captions`` (a single ``caption`` string is accepted too). Sorted by image id.

    Raises:
        DatasetFormatError: missing/malformed file, an entry without ``image_id``/``file_name``
            (or ``id``), non-string captions, or a duplicate image id.
    """
    raw = read_json_input(path, "captions file")
    entries: Any = raw["images"] if isinstance(raw, dict) and "images" in raw else raw
    if not isinstance(entries, list):
        raise DatasetFormatError(f"{path}: expected a list of {{image_id, file_name, captions}}")
    records: Dict[int, ImageRecord] = {}
    for n, e in enumerate(entries):
        if not isinstance(e, dict):
            raise DatasetFormatError(f"{path}: entry {n} is not an object")
        image_id = e.get("image_id", e.get("id"))
        if not isinstance(image_id, int) or not isinstance(e.get("file_name"), str):
            raise DatasetFormatError(
                f"{path}: entry {n}: 'image_id' (int) and 'file_name' (str) " "are required"
            )
        caps = e.get("captions", e.get("caption", []))
        caps = [caps] if isinstance(caps, str) else caps
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DatasetFormatError(
                f"{path}: image {image_id}: 'captions' must be a list of strings"
            )
        if image_id in records:
            raise DatasetFormatError(f"{path}: image id {image_id} appears twice")
        records[image_id] = ImageRecord(
            image_id, e["file_name"], caps, e.get("height"), e.get("width")
        )
    return [records[k] for k in sorted(records)]


def load_rgb(path: str) -> Optional[np.ndarray]:
    """The image as RGB uint8 [H, W, 3], or None when missing or unreadable."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError):
        return None
