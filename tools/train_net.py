#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Train or evaluate a det_ext / Detectron2 model.

    python tools/train_net.py --config-file configs/LT-Shapes/mask_rcnn_R18_FPN_tiny.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8 MODEL.DEVICE cuda
"""
from det_ext.engine import launch_from_args, train_net_main

if __name__ == "__main__":
    launch_from_args(train_net_main)
