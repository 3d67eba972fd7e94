#!/usr/bin/env python
# Copyright (c) det_ext authors.
"""Pre-trains a ResNet with PCL, MoPro or ICCL (CPU, or GPUs with torch.distributed).

    python tools/pretrain_net.py --method pcl --config configs/pretrain/pcl_R18_lt_shapes.yaml
    python tools/pretrain_net.py --method mopro --config ... --num-gpus 8 --resume
    python tools/convert_pretrained.py OUTPUT_DIR/checkpoint_last.pth.tar backbone.pkl

Checkpoints (OUTPUT_DIR/checkpoint_last.pth.tar, checkpoint_{epoch:04d}.pth.tar) use the reference
repositories' format; --resume continues from the last completed epoch.
"""
from detectron2.engine import launch

from det_ext.engine import run_cli
from det_ext.pretrain.cli import pretrain_argument_parser, pretrain_main


def main() -> None:
    args = pretrain_argument_parser().parse_args()
    if args.num_gpus > 1 or args.num_machines > 1:
        launch(pretrain_main, args.num_gpus, args.num_machines, args.machine_rank,
               args.dist_url, args=(args,))
    else:
        pretrain_main(args)


if __name__ == "__main__":
    run_cli(main)
