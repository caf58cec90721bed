"""Heatmap targets of the official top-down training: one Gaussian per joint at its rounded heatmap position."""
from __future__ import annotations

import numpy as np

__all__ = ['gaussian_heatmaps']


def gaussian_heatmaps(
        joints: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int], stride: float, sigma: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(J, h, w) float32 targets and (J, 1) weights for joints (J, 2) in input-crop pixels.

    As the official JointsDataset: the centre is the joint / stride rounded to the nearest heatmap pixel, the
    Gaussian (peak 1) is cut at 3 sigma, and a joint whose cut Gaussian lies wholly outside the heatmap gets weight
    0 (as does any joint with weight 0 given; the rest keep their weight).
    """
    height, width = heatmap_size
    joints = np.asarray(joints, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float32).reshape(-1).copy()
    radius = int(sigma * 3)
    centres = np.floor(joints / stride + 0.5).astype(np.int64)
    outside = ((centres[:, 0] - radius >= width) | (centres[:, 1] - radius >= height)
               | (centres[:, 0] + radius < 0) | (centres[:, 1] + radius < 0))
    weights[outside] = 0
    dx = np.arange(width)[None, :] - centres[:, :1]  # (J, w)
    dy = np.arange(height)[None, :] - centres[:, 1:]  # (J, h)
    gx = np.where(np.abs(dx) <= radius, np.exp(-dx.astype(np.float64) ** 2 / (2 * sigma ** 2)), 0.0)
    gy = np.where(np.abs(dy) <= radius, np.exp(-dy.astype(np.float64) ** 2 / (2 * sigma ** 2)), 0.0)
    target = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
    target[weights == 0] = 0
    return target, weights[:, None]
