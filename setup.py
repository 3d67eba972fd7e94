# Copyright (c) det_ext authors.
"""det_ext: Detectron2 extensions for long-tailed, noisy and open-vocabulary detection."""
from setuptools import find_packages, setup

setup(
    name="det_ext",
    version="0.1.0",
    description=(
        "Detectron2 extension: SimCal calibration, noise-resistant training, pseudo-box "
        "generation, open-vocabulary detection, contrastive backbones and LVIS-style evaluation."
    ),
    packages=find_packages(include=["det_ext", "det_ext.*"]),
    python_requires=">=3.10",
    # Ranges, not pins: users with their own torch / Detectron2 keep them. Detectron2 itself is not
    # listed because it has no official PyPI release (see README, "Installing into an existing
    # env").
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy>=1.23",
        "pycocotools>=2.0.6",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "matplotlib>=3.5",
        "Pillow>=9.0",
        "tabulate>=0.9",
        "tqdm>=4.60",
        "scipy>=1.9",
    ],
    extras_require={
        "vl": ["transformers>=4.40", "open_clip_torch>=2.20"],
        "test": ["pytest>=7"],
    },
)
