"""Evaluating saliency maps against ground truth.

Weakly supervised localization (Zhou et al., 2016): threshold a map, box its largest connected
region, and count a hit when the box overlaps the true box with IoU > 0.5. Boxes are
(x0, y0, x1, y1) with x1 and y1 exclusive, as `vizlib.data.shapes` gives them.
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch

__all__ = ["localize", "box_iou", "localization_accuracy"]


def localize(saliency: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """The bounding box of the largest connected region where saliency > threshold × its max.

    `saliency`: one map [H, W] or a batch [N, H, W] / [N, 1, H, W]. Returns LongTensor [4] or
    [N, 4] of (x0, y0, x1, y1), x1 and y1 exclusive. Regions are 8-connected. A map with no
    positive value has no region and gets the empty box (0, 0, 0, 0).
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold: expected a fraction of the maximum in [0, 1), got {threshold!r}")
    maps = _as_maps(saliency)
    boxes = torch.tensor(np.array([_largest_region_box(m, threshold) for m in maps], dtype=np.int64).reshape(-1, 4))
    return boxes[0] if saliency.dim() == 2 else boxes


def _as_maps(saliency: torch.Tensor) -> np.ndarray:
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"saliency: expected a torch.Tensor, got {type(saliency).__name__}")
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() == 2:
        saliency = saliency[None]
    if saliency.dim() != 3:
        raise ValueError(f"saliency: expected [H, W], [N, H, W] or [N, 1, H, W], got shape {tuple(saliency.shape)}")
    return saliency.detach().cpu().double().numpy()


def _largest_region_box(saliency: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    peak = saliency.max()
    if not peak > 0:
        return 0, 0, 0, 0
    regions, count = scipy.ndimage.label(saliency > threshold * peak, structure=np.ones((3, 3)))
    largest = 1 + np.argmax(np.bincount(regions.ravel(), minlength=count + 1)[1:])
    rows, cols = np.nonzero(regions == largest)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def box_iou(boxes: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Intersection over union of corresponding boxes [N, 4] (or [4]), (x0, y0, x1, y1) exclusive; [N]."""
    boxes, other = torch.as_tensor(boxes).reshape(-1, 4).double(), torch.as_tensor(other).reshape(-1, 4).double()
    if len(boxes) != len(other):
        raise ValueError(f"boxes: expected as many boxes as other, got {len(boxes)} and {len(other)}")

    def area(b):
        return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)

    corner_low, corner_high = torch.maximum(boxes[:, :2], other[:, :2]), torch.minimum(boxes[:, 2:], other[:, 2:])
    intersection = (corner_high - corner_low).clamp(min=0).prod(dim=1)
    union = area(boxes) + area(other) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), 0)


def localization_accuracy(saliency: torch.Tensor, boxes: torch.Tensor, *, threshold: float = 0.2,
                          min_iou: float = 0.5) -> float:
    """Fraction of maps whose `localize` box has IoU > `min_iou` with the true box (Zhou et al., 2016)."""
    return (box_iou(localize(saliency, threshold), boxes) > min_iou).double().mean().item()
