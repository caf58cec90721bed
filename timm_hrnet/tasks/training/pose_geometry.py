"""The person crop of pose training: the crop of `tasks.pose.crop_boxes` (the codec's grid over the box, the one
bilinear warp `tasks.pose.warp_grid`) with the official augmentations added: scale, rotation about the box centre
and a horizontal flip, and the half-body box.

A crop is a 2x3 matrix M mapping crop pixel (u, v) to image point M @ (u, v, 1):
    image = centre + F @ R(rotation) @ diag(step) @ ((u, v) - origin)
with F = diag(-1, 1) for a flip and origin, step the codec's `frame` of the box (official: (w, h) / 2 and box width
/ w on both axes; UDP: (w - 1, h - 1) / 2 and box size / (size - 1) per axis). Without rotation and flip that is
exactly `crop_boxes`, so training crops and inference crops agree. The flip mirrors the image about the box centre
as the official code's flip of the whole image does (which is why the plain codecs' flip test shifts the heatmaps
by one column).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..pose import warp_grid
from ..pose_codecs import PoseCodec, parse_codec

__all__ = ['crop_matrix', 'warp_crop', 'to_crop', 'half_body_box']


def crop_matrix(center: Sequence[float], box_size: Sequence[float], output_size: tuple[int, int],
                rotation: float = 0.0, flip: bool = False, codec: PoseCodec | str = 'official') -> np.ndarray:
    """The (2, 3) float64 matrix from crop pixels to image points (module docstring) of a box of `box_size`
    (width, height) at `center`; `rotation` in degrees."""
    origin, step = parse_codec(codec).frame(torch.tensor([list(box_size)], dtype=torch.float64), output_size)
    theta = math.radians(rotation)
    linear = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    linear = linear @ np.diag(step[0].numpy())
    if flip:
        linear = np.diag([-1.0, 1.0]) @ linear
    offset = np.asarray(center, dtype=np.float64) - linear @ origin.numpy()
    return np.concatenate([linear, offset[:, None]], axis=1)


def warp_crop(image: Tensor, matrix: np.ndarray, output_size: tuple[int, int]) -> Tensor:
    """(C, h, w) crop of a (C, H, W) float image: each crop pixel samples the image bilinearly at its point, zero
    outside (`warp_grid`, as `crop_boxes`)."""
    out_h, out_w = output_size
    u = torch.arange(out_w, dtype=torch.float64)
    v = torch.arange(out_h, dtype=torch.float64)
    m = torch.from_numpy(matrix)
    xs = m[0, 0] * u[None, :] + m[0, 1] * v[:, None] + m[0, 2]
    ys = m[1, 0] * u[None, :] + m[1, 1] * v[:, None] + m[1, 2]
    return warp_grid(image, xs[None], ys[None])[0]


def to_crop(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Image points (N, 2) in crop pixels: the inverse of the crop's matrix."""
    linear, offset = matrix[:, :2], matrix[:, 2]
    return (np.asarray(points, dtype=np.float64) - offset) @ np.linalg.inv(linear).T


def half_body_box(joints: np.ndarray, labelled: np.ndarray, upper_body: Sequence[int], use_upper: bool,
                  aspect_ratio: float, padding: float = 1.5) -> tuple[np.ndarray, np.ndarray] | None:
    """(centre, (w, h)) of the official half-body crop: the labelled joints of the upper (or lower) body, their mean
    as the centre, their extent widened to the aspect ratio and enlarged by `padding`. The upper half is taken
    when `use_upper` and it has more than two labelled joints, else the lower half if it has, else the upper; None
    when fewer than two joints remain."""
    upper_mask = np.zeros(len(joints), dtype=bool)
    upper_mask[list(upper_body)] = True
    upper = joints[labelled & upper_mask]
    lower = joints[labelled & ~upper_mask]
    if use_upper and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) * padding
