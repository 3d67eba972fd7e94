# Copyright (c) det_ext authors.
"""add_det_ext_config, every shipped config file, and config input errors."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from det_ext.config import add_det_ext_config
from det_ext.engine import build_config
from det_ext.utils.errors import ConfigInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Detectron2 model configs (configs/pretrain/ holds pre-training configs of another schema).
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("Base")
                 and os.sep + "pretrain" + os.sep not in p)


def test_det_ext_keys_are_added():
    cfg = get_cfg()
    add_det_ext_config(cfg)
    assert list(cfg.TEST.INSTANCE_COUNT_BINS) == [1, 20, 400, 8000]
    assert cfg.TEST.MAX_DETS_PER_CATEGORY == 0


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_shipped_config_merges(path):
    cfg = get_cfg()
    add_det_ext_config(cfg)
    cfg.merge_from_file(path)  # no unknown key, valid _BASE_ chain
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES >= 1


def test_unknown_key_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NO_SUCH_KEY: 1\n")
    with pytest.raises(ConfigInputError, match=r"bad.yaml: unknown config key 'MODEL.NO_SUCH_KEY'"):
        build_config(str(bad))
    with pytest.raises(ConfigInputError, match=r"command-line opts: unknown config key 'FOO.BAR'"):
        build_config("", ["FOO.BAR", "1"])
    with pytest.raises(ConfigInputError, match=r"absent.yaml: config file not found"):
        build_config(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigInputError, match=r"MODEL.WEIGHTS: weight file not found: .*nope.pth"):
        build_config("", ["MODEL.WEIGHTS", str(tmp_path / "nope.pth")])
