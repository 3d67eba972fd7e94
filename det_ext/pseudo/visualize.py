# Copyright (c) det_ext authors.
"""Drawing a pseudo box over its activation heatmap, with the ground-truth boxes when known."""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = ["draw_pseudo_box"]


def draw_pseudo_box(
    image: np.ndarray,
    act: Optional[np.ndarray],
    boxes: Sequence[Sequence[float]],
    gt_boxes: Sequence[Sequence[float]] = (),
    title: str = "",
    scale: int = 4,
) -> np.ndarray:
    """Heatmap overlay (JET, 50%) + chosen boxes (green) + ground-truth boxes (red) + title.

    Args:
        image (ndarray): RGB uint8 [H, W, 3].
        act (ndarray or None): activation [H, W] in [0, 1] (None: no overlay).
        boxes, gt_boxes: XYWH boxes in image pixels.
        scale (int): upscaling factor of the output (small images).

    Returns:
        ndarray: RGB uint8 [scale*H + 16, scale*W, 3].
    """
    h, w = image.shape[:2]
    canvas = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    if act is not None:
        heat = cv2.applyColorMap((np.clip(act, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        heat = cv2.resize(heat[:, :, ::-1], (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        canvas = cv2.addWeighted(canvas, 0.5, heat, 0.5, 0)
    canvas = np.ascontiguousarray(canvas)
    for colour, group in (((255, 40, 40), gt_boxes), ((40, 255, 40), boxes)):
        for x, y, bw, bh in group:
            cv2.rectangle(
                canvas,
                (int(round(x * scale)), int(round(y * scale))),
                (int(round((x + bw) * scale)), int(round((y + bh) * scale))),
                colour,
                2,
            )
    bar = np.full((16, canvas.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title[:80], (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, canvas], axis=0)
