# Copyright (c) det_ext authors.
"""Test-session set-up: datasets go to a temporary root, and a tiny LT-Shapes world is shared."""
import atexit
import os
import shutil
import tempfile

# Before det_ext is imported anywhere: keep generated data out of the repository, and remove it when
# the test process exits (each run writes about 100 MB of rendered images there).
os.environ["DETECTRON2_DATASETS"] = tempfile.mkdtemp(prefix="det_ext_test_datasets_")
atexit.register(shutil.rmtree, os.environ["DETECTRON2_DATASETS"], ignore_errors=True)

import pytest  # noqa: E402

from det_ext.data import LTShapesSpec, register_lt_shapes  # noqa: E402

TINY_SPEC = LTShapesSpec(seed=3, image_size=64, num_train_images=48, num_val_images=16,
                         num_categories=8, num_twins=2, instances_per_image=3.0,
                         min_val_instances=3)


@pytest.fixture(scope="session")
def datasets_root() -> str:
    return os.environ["DETECTRON2_DATASETS"]


@pytest.fixture(scope="session")
def tiny_world() -> dict:
    """A tiny LT-Shapes world registered as ``lt_shapes_tiny_{train,val}``."""
    return register_lt_shapes(TINY_SPEC, prefix="lt_shapes_tiny")


def tiny_model_opts(output_dir: str, max_iter: int = 2) -> list:
    """Config overrides that make the tiny LT-Shapes Mask R-CNN train on the tiny world in
    seconds."""
    return ["DATASETS.TRAIN", "('lt_shapes_tiny_train',)",
            "DATASETS.TEST", "('lt_shapes_tiny_val',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "8", "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", output_dir, "SEED", "1"]


def tiny_pretrain_opts(out, method: str, epochs: int = 2) -> list:
    """Config overrides for a seconds-long pre-training of ``method`` on tiny LT-Shapes crops."""
    return ["OUTPUT_DIR", str(out), "SEED", "1", "PRETRAIN.METHOD", method,
            "PRETRAIN.MODEL.ARCH", "resnet18", "PRETRAIN.MODEL.DIM", "16",
            "PRETRAIN.MODEL.HEAD", "mlp" if method in ("pcl", "moco") else "mopro",
            "PRETRAIN.MOCO.QUEUE_SIZE", "32", "PRETRAIN.MOCO.MOMENTUM", "0.9",
            "PRETRAIN.PCL.NUM_CLUSTERS", "[4, 8]", "PRETRAIN.PCL.WARMUP_EPOCHS", "1",
            "PRETRAIN.PCL.NUM_NEG_PROTOS", "4", "PRETRAIN.PCL.KMEANS_REDO", "1",
            "PRETRAIN.MOPRO.START_CLEAN_EPOCH", "1", "PRETRAIN.ICCL.WARMUP_EPOCHS", "1",
            "PRETRAIN.DATA.DATASETS", "('lt_shapes_tiny_train',)", "PRETRAIN.DATA.STORE_SIZE", "20",
            "PRETRAIN.DATA.INPUT_SIZE", "16", "PRETRAIN.DATA.NOISE_RATE", "0.2",
            "PRETRAIN.SOLVER.EPOCHS", str(epochs), "PRETRAIN.SOLVER.BATCH_SIZE", "16",
            "PRETRAIN.SOLVER.CHECKPOINT_PERIOD", "1"]
