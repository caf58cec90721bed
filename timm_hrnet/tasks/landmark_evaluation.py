"""Landmark metrics as the face and hand benchmarks publish them, on keypoints already predicted.

* NME (faces): the mean over annotated landmarks of the point-to-point error divided by a per-face distance:
  inter-ocular (the outer eye corners) for WFLW (points 60, 72), 300W (36, 45) and COFW (8, 9), as their papers,
  HRNet-Facial-Landmark-Detection's `compute_nme` and mmpose's `NME` metric define it; the face box size for AFLW.
  With every landmark annotated this is the official per-face mean averaged over faces.
* PCK, AUC, EPE (hands, mmpose's OneHand10K / RHD protocol): the share of annotated points within `threshold`
  (0.2) x the box's longer side, averaged over keypoints; the area under the PCK curve of errors normalised by a
  fixed 30 pixels at thresholds 0, 0.05 ... 0.95; and the mean error in pixels.

Arrays are (N, K, 2) keypoints in image pixels and an (N, K) mask of annotated points. `evaluate_landmarks` runs
a landmark model on a COCO-style annotation file (mmpose's face and hand annotations: a box and the keypoints per
face or hand, AFLW's `box_size`) and scores it.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..images import UnreadableImageError
from .datasets import KeypointInfo
from .pose import HRNetPose
from .pose_evaluation import PoseDataError, _read_json

__all__ = ['NME_NORMALISATION', 'normalisation_for', 'nme', 'pck', 'auc', 'epe', 'landmark_metrics',
           'evaluate_landmarks']

# the points whose distance normalises each face benchmark's NME; None: the face box size (AFLW)
NME_NORMALISATION: dict[str, tuple[int, int] | None] = {'wflw': (60, 72), '300w': (36, 45), 'cofw': (8, 9),
                                                        'aflw': None}


def _arrays(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f'predictions {list(pred.shape)} and annotations {list(gt.shape)} must both be (N, K, 2)')
    mask = np.ones(gt.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != gt.shape[:2]:
        raise ValueError(f'the mask is {list(mask.shape)}, the annotations {list(gt.shape[:2])} points')
    return pred, gt, mask & np.isfinite(gt).all(-1)


def _mean_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, norm: np.ndarray) -> float:
    """Mean of |pred - gt| / norm over annotated points (norm per face, (N,))."""
    errors = np.linalg.norm(pred - gt, axis=-1) / norm[:, None]
    return float(errors[mask].sum() / max(1, mask.sum()))


def normalisation_for(keypoints: KeypointInfo | str) -> tuple[int, int] | None:
    """The NME normalisation of a face keypoint set (its name), a ValueError for sets NME is not defined on."""
    name = keypoints if isinstance(keypoints, str) else keypoints.name
    if name not in NME_NORMALISATION:
        raise ValueError(f'NME is defined for the face sets {", ".join(NME_NORMALISATION)}, not {name!r}')
    return NME_NORMALISATION[name]


def nme(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
        keypoints: KeypointInfo | str = 'wflw', box_sizes: Sequence[float] | np.ndarray | None = None) -> float:
    """Normalised mean error of a face set (module docstring); AFLW needs `box_sizes` (N,). Faces whose
    normalisation points are not annotated, or coincide, are a ValueError naming the first."""
    pred, gt, mask = _arrays(pred, gt, mask)
    pair = normalisation_for(keypoints)
    name = keypoints if isinstance(keypoints, str) else keypoints.name
    if pair is None:
        if box_sizes is None:
            raise ValueError(f"{name}'s NME is normalised by the face box size: pass box_sizes")
        norm = np.asarray(box_sizes, dtype=np.float64).reshape(-1)
        if norm.shape != (len(gt),):
            raise ValueError(f'{len(norm)} box sizes for {len(gt)} faces')
        what = 'a box size'
    else:
        if max(pair) >= gt.shape[1]:
            raise ValueError(f"{name}'s NME is normalised by points {pair[0]} and {pair[1]}; the annotations have "
                             f'{gt.shape[1]} points')
        missing = np.flatnonzero(~(mask[:, pair[0]] & mask[:, pair[1]]))
        if len(missing):
            raise ValueError(f'face {missing[0]} ({len(missing)} in all) lacks landmark {pair[0]} or {pair[1]}, the '
                             f"outer eye corners {name}'s NME is normalised by")
        norm = np.linalg.norm(gt[:, pair[0]] - gt[:, pair[1]], axis=-1)
        what = f'coincident points {pair[0]} and {pair[1]}'
    bad = np.flatnonzero(~(np.isfinite(norm) & (norm > 0)))
    if len(bad):
        raise ValueError(f'face {bad[0]} has {what} of {norm[bad[0]]:g}: NME needs a positive normalisation')
    return _mean_error(pred, gt, mask, norm)


def _pck(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, norm: np.ndarray, threshold: float) -> float:
    """Share of annotated points within threshold x norm, per keypoint, averaged over keypoints with any."""
    within = (np.linalg.norm(pred - gt, axis=-1) / norm[:, None]) < threshold
    counts = mask.sum(0)
    per_keypoint = (within & mask).sum(0)[counts > 0] / counts[counts > 0]
    return float(per_keypoint.mean()) if len(per_keypoint) else 0.0


def pck(pred: np.ndarray, gt: np.ndarray, boxes: np.ndarray, mask: np.ndarray | None = None,
        threshold: float = 0.2) -> float:
    """PCK@threshold normalised by each box's longer side; `boxes` (N, 4) as x, y, width, height."""
    pred, gt, mask = _arrays(pred, gt, mask)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != len(gt):
        raise ValueError(f'{len(boxes)} boxes for {len(gt)} annotations')
    norm = boxes[:, 2:].max(-1)
    mask = mask & (norm > 0)[:, None]
    return _pck(pred, gt, mask, np.where(norm > 0, norm, 1.0), threshold)


def auc(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, norm_factor: float = 30.0,
        num_thresholds: int = 20) -> float:
    """Area under the PCK curve of errors / `norm_factor` pixels at thresholds k / num_thresholds, k < num."""
    pred, gt, mask = _arrays(pred, gt, mask)
    norm = np.full(len(gt), float(norm_factor))
    return float(np.mean([_pck(pred, gt, mask, norm, k / num_thresholds) for k in range(num_thresholds)]))


def epe(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean end-point error in pixels over annotated points."""
    pred, gt, mask = _arrays(pred, gt, mask)
    return _mean_error(pred, gt, mask, np.ones(len(gt)))


def landmark_metrics(pred: np.ndarray, gt: np.ndarray, keypoints: KeypointInfo, mask: np.ndarray | None = None,
                     boxes: np.ndarray | None = None, box_sizes: np.ndarray | None = None) -> dict[str, float]:
    """The published metrics of a landmark set: NME for the faces (AFLW's normalised by the annotated `box_sizes`),
    PCK@0.2 / AUC / EPE for hands (PCK normalised by `boxes` (N, 4) as x, y, width, height)."""
    if keypoints.name in NME_NORMALISATION:
        return dict(NME=nme(pred, gt, mask, keypoints, box_sizes))
    if boxes is None:
        raise ValueError(f'PCK of {keypoints.name} is normalised by the boxes: pass boxes')
    return dict(PCK=pck(pred, gt, boxes, mask), AUC=auc(pred, gt, mask), EPE=epe(pred, gt, mask))


def _annotations(ann_file: str | PathLike, joints: int) -> tuple[dict[int, str], dict[int, list[dict[str, Any]]]]:
    """Image file names by id and the annotations (box, keypoints) of each image, checked."""
    data = _read_json(ann_file, 'annotation file')
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ('images', 'annotations')):
        raise PoseDataError(f'{ann_file} is not a COCO annotation file (needs "images" and "annotations" lists)')
    names = {image['id']: image['file_name'] for image in data['images'] if 'id' in image and 'file_name' in image}
    per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for k, ann in enumerate(data['annotations']):
        points = ann.get('keypoints') if isinstance(ann, dict) else None
        if not isinstance(points, list) or len(points) != 3 * joints or len(ann.get('bbox') or []) != 4:
            raise PoseDataError(f'{ann_file}: annotation {k} needs a bbox and {joints} keypoints (x, y, v), the '
                                "model's landmark count")
        if ann.get('image_id') not in names:
            raise PoseDataError(f'{ann_file}: annotation {k} refers to image {ann.get("image_id")!r}, not listed')
        per_image[ann['image_id']].append(ann)
    return names, per_image


@torch.no_grad()
def evaluate_landmarks(model: HRNetPose, ann_file: str | PathLike, image_dir: str | PathLike, *,
                       flip_test: bool | None = None, batch_size: int = 64) -> dict[str, Any]:
    """The published metrics of a face / hand landmark model (`landmark_metrics`) on a COCO-style annotation file:
    each annotated box predicted (padded by 1.25 as both references do), `flip_test` as the codec's reference
    (None) or forced. Also returns `num_images`, `num_instances` and `images_per_second`."""
    info = model.keypoint_info
    if info is None:
        raise ValueError(f'no keypoint set known for {model.num_joints} landmarks: pass keypoint_info to the model')
    names, per_image = _annotations(ann_file, model.num_joints)
    start = time.perf_counter()
    preds, gts, masks, boxes, box_sizes = [], [], [], [], []
    for image_id, anns in sorted(per_image.items()):
        path = Path(image_dir) / names[image_id]
        try:
            result = model.predict_batch([path], [[a['bbox'] for a in anns]], flip_test, batch_size=batch_size)[0]
        except (FileNotFoundError, UnreadableImageError) as error:
            raise PoseDataError(f'{path}: {error}') from error
        preds.append(result['keypoints'].numpy())
        for ann in anns:
            points = np.asarray(ann['keypoints'], dtype=np.float64).reshape(-1, 3)
            gts.append(points[:, :2])
            masks.append(points[:, 2] > 0)
            boxes.append(ann['bbox'])
            box_sizes.append(ann.get('box_size', np.nan))
    seconds = time.perf_counter() - start
    sizes = np.asarray(box_sizes, dtype=np.float64)
    metrics = landmark_metrics(np.concatenate(preds), np.stack(gts), info, np.stack(masks), np.asarray(boxes),
                               None if np.isnan(sizes).all() else sizes)
    return dict(metrics, keypoint_set=info.name, codec=model.codec.spec, num_images=len(per_image),
                num_instances=len(gts), images_per_second=len(per_image) / max(seconds, 1e-9))
