"""Top-down pose training data: COCO-format keypoint annotations (any number of joints) to person crops with the
official augmentations and Gaussian heatmap targets (those of the model's codec).

The annotation file is scanned once when the dataset is built, before training: annotations that are crowds or
have no labelled joint are not training samples (as in the official code); a zero-area box, a box outside its image,
a missing image file or a labelled joint outside its image is a bad sample: an error listing them (default) or,
with `on_bad_sample='skip'`, left out (a joint outside the image: that joint is treated as unlabelled) and counted.
An image that cannot be decoded, or decodes to another size than annotated, is found only when it is loaded: an
error naming it, or with 'skip' an empty sample (all joint weights 0, `valid` 0) counted in the training log.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ...images import UnreadableImageError, image_to_tensor
from ..datasets import KeypointInfo
from ..pose import BOX_PADDING, HEATMAP_STRIDE, box_to_center_size, flip_order
from ..pose_codecs import PoseCodec, parse_codec
from .pose_geometry import crop_matrix, half_body_box, to_crop, warp_crop
from .samples import BadSampleError, Problems, check_policy, image_header_size, refuse_or_skip, sample_rng

__all__ = ['PersonSample', 'PoseAnnotations', 'read_pose_annotations', 'PoseAugmentation', 'PoseTrainDataset']

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersonSample:
    """One annotated person: image file and (width, height), box (x, y, w, h) clipped to the image, joints (J, 2)
    in image pixels and which of them are labelled (COCO visibility > 0)."""

    image: Path
    image_size: tuple[int, int]
    box: tuple[float, float, float, float]
    joints: np.ndarray
    labelled: np.ndarray
    annotation_id: Any = None


@dataclass
class PoseAnnotations:
    """A scanned annotation file: the training samples, the keypoint category and what was left out, by kind."""

    samples: list[PersonSample]
    category: dict[str, Any] | None
    ignored: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def _keypoint_category(data: Mapping[str, Any], ann_file: str) -> dict[str, Any]:
    categories = [c for c in data.get('categories') or [] if isinstance(c, dict) and c.get('keypoints')]
    if len(categories) > 1:
        categories = [c for c in categories if c.get('name') == 'person'] or categories
    if len(categories) != 1:
        raise BadSampleError(f'{ann_file}: needs exactly one category with "keypoints" names, found '
                             f'{len(categories)}')
    return categories[0]


def read_pose_annotations(ann_file: str | PathLike, image_dir: str | PathLike,
                          on_bad_sample: str = 'error') -> PoseAnnotations:
    """Scan a COCO keypoint annotation file (module docstring): every check that needs no image decoding."""
    check_policy(on_bad_sample)
    ann_file = str(ann_file)
    try:
        with open(ann_file) as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadSampleError(f'cannot read annotation file {ann_file}: {error}') from error
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) or not isinstance(
            data.get('annotations'), list):
        raise BadSampleError(f'{ann_file} is not a COCO annotation file (needs "images" and "annotations" lists)')
    category = _keypoint_category(data, ann_file)
    num_joints = len(category['keypoints'])
    images = {image['id']: image for image in data['images'] if isinstance(image, dict) and 'id' in image}
    image_dir = Path(image_dir)
    problems = Problems(on_bad_sample)
    ignored: dict[str, int] = {}
    sizes: dict[Any, tuple[int, int] | None] = {}

    def image_size(image_id: Any) -> tuple[int, int] | None:
        """(width, height) of an annotated image, None (a problem recorded) when it cannot be used."""
        if image_id in sizes:
            return sizes[image_id]
        info = images[image_id]
        path = image_dir / info['file_name']
        size: tuple[int, int] | None = None
        if not path.is_file():
            problems.add('missing images', f'image not found: {path} (image id {image_id})')
        elif 'width' in info and 'height' in info:
            size = (int(info['width']), int(info['height']))
        else:
            try:
                size = image_header_size(path)
            except BadSampleError as error:
                problems.add('unreadable images', str(error))
        sizes[image_id] = size
        return size

    samples = []
    for ann in data['annotations']:
        if not isinstance(ann, dict) or ann.get('category_id') != category['id']:
            continue
        where = f'{ann_file}: annotation {ann.get("id")}'
        keypoints = ann.get('keypoints')
        if not isinstance(keypoints, list) or len(keypoints) != 3 * num_joints:
            raise BadSampleError(f'{where} has {len(keypoints) if isinstance(keypoints, list) else "no"} keypoint '
                                 f'values, expected {3 * num_joints} (x, y, visibility for {num_joints} joints)')
        if ann.get('iscrowd', 0):
            ignored['crowd'] = ignored.get('crowd', 0) + 1
            continue
        if max(keypoints) <= 0:
            ignored['without labelled joints'] = ignored.get('without labelled joints', 0) + 1
            continue
        if ann.get('image_id') not in images:
            raise BadSampleError(f'{where} refers to image id {ann.get("image_id")!r}, not in "images"')
        size = image_size(ann['image_id'])
        if size is None:
            continue
        width, height = size
        x, y, w, h = (float(v) for v in ann.get('bbox', (0, 0, 0, 0)))
        if not (w > 0 and h > 0):
            problems.add('zero-area boxes', f'{where} has a zero-area box {[x, y, w, h]}')
            continue
        # the official clipping (COCODataset._load_coco_keypoint_annotation_kernal)
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1)), min(height - 1.0, y1 + max(0.0, h - 1))
        if x2 < x1 or y2 < y1 or (x2 == x1 and y2 == y1):
            problems.add('boxes outside their image', f'{where}: box {[x, y, w, h]} is outside its {width}x{height} '
                                                      'image')
            continue
        points = np.asarray(keypoints, dtype=np.float64).reshape(num_joints, 3)
        labelled = points[:, 2] > 0
        outside = labelled & ((points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0)
                              | (points[:, 1] > height))
        if outside.any():
            names = category['keypoints']
            joints = ', '.join(f'{names[j]} at {points[j, :2].tolist()}' for j in np.flatnonzero(outside))
            problems.add('joints outside their image', f'{where}: {joints} outside the {width}x{height} image')
            if on_bad_sample == 'error':
                continue
            labelled = labelled & ~outside
            if not labelled.any():
                continue
        samples.append(PersonSample(image_dir / images[ann['image_id']]['file_name'], (width, height),
                                    (x1, y1, x2 - x1, y2 - y1), points[:, :2].copy(), labelled, ann.get('id')))
    skipped = problems.finish(ann_file)
    if ignored:
        _logger.info('%s: not training samples (as in the official code): %s', ann_file,
                     ', '.join(f'{n} {kind}' for kind, n in ignored.items()))
    if not samples:
        raise BadSampleError(f'{ann_file} has no usable person annotations with labelled joints')
    return PoseAnnotations(samples, category, ignored, skipped)


@dataclass(frozen=True)
class PoseAugmentation:
    """The official COCO recipe (experiments/coco/hrnet/*.yaml and JointsDataset): scale x clip(N(1, 0.35),
    0.65, 1.35); with probability 0.6 a rotation clip(N(0, 45), -90, 90) degrees; a flip with probability 0.5;
    with probability 0.3 the half-body crop when more than `half_body_min_joints` joints are labelled (default:
    half of them, 8 of COCO's 17), of the upper body when a standard normal draw is below 0.5 (about 69 %, as the
    official code draws it), else of the lower body."""

    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int | None = None
    box_padding: float = BOX_PADDING

    @classmethod
    def none(cls) -> PoseAugmentation:
        """Crops exactly as inference makes them."""
        return cls(scale_factor=0.0, rotation_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0)


class PoseTrainDataset(Dataset):
    """Person crops (normalised, (C, H, W)) cropped and heatmap targets (J, H/4, W/4) encoded by `codec` (the
    model's), joint weights (J, 1), a `valid` flag and the sample index; items are looked up by (epoch, index)
    pairs (`samples.EpochSampler`) or a bare index (epoch 0), and every random choice is a function of (seed,
    epoch, index)."""

    def __init__(
            self,
            samples: list[PersonSample],
            keypoints: KeypointInfo,
            input_size: tuple[int, int],
            mean: tuple[float, ...],
            std: tuple[float, ...],
            augmentation: PoseAugmentation | None = None,
            sigma: float = 2.0,
            seed: int = 0,
            on_bad_sample: str = 'error',
            codec: PoseCodec | str = 'official',
    ) -> None:
        check_policy(on_bad_sample)
        if any(s.joints.shape[0] != keypoints.num_joints for s in samples):
            raise ValueError(f'the samples do not all have the {keypoints.num_joints} joints of the keypoint set')
        self.samples = samples
        self.keypoints = keypoints
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (self.input_size[0] // HEATMAP_STRIDE, self.input_size[1] // HEATMAP_STRIDE)
        self.in_chans = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augmentation = augmentation or PoseAugmentation()
        self.sigma = sigma
        self.seed = seed
        self.on_bad_sample = on_bad_sample
        self.codec = parse_codec(codec)
        self.flip_order = np.array(flip_order(keypoints.num_joints, keypoints.flip_pairs))

    def __len__(self) -> int:
        return len(self.samples)

    def _empty(self, index: int) -> dict[str, Tensor]:
        joints = self.keypoints.num_joints
        return dict(image=torch.zeros(self.in_chans, *self.input_size),
                    target=torch.zeros(joints, *self.heatmap_size), target_weight=torch.zeros(joints, 1),
                    valid=torch.tensor(0.0), index=torch.tensor(index))

    def geometry(self, sample: PersonSample, epoch: int, index: int) -> tuple[np.ndarray, bool]:
        """The crop matrix and whether it is flipped, for this sample in this epoch."""
        aug = self.augmentation
        rng = sample_rng(self.seed, epoch, index)
        u_half, u_rotate, u_flip = rng.random(3)  # always drawn, in this order: a fixed stream per sample
        n_upper, n_scale, n_rotate = rng.standard_normal(3)
        aspect = self.input_size[1] / self.input_size[0]
        # the box as inference crops it (box_to_center_size), so that without augmentation the crops agree
        centers, sizes = box_to_center_size(torch.tensor([sample.box], dtype=torch.float64), aspect, aug.box_padding)
        center, size = centers[0].numpy(), sizes[0].numpy()
        min_joints = self.keypoints.num_joints // 2 if aug.half_body_min_joints is None else aug.half_body_min_joints
        if (self.keypoints.upper_body and sample.labelled.sum() > min_joints and u_half < aug.half_body_prob):
            # the official half_body_transform takes the upper body when np.random.randn() < 0.5 (69 %)
            half = half_body_box(sample.joints, sample.labelled, self.keypoints.upper_body, n_upper < 0.5, aspect)
            if half is not None:
                center, size = half
        size = size * float(np.clip(n_scale * aug.scale_factor + 1, 1 - aug.scale_factor, 1 + aug.scale_factor))
        rotation = 0.0
        if u_rotate < aug.rotation_prob:
            rotation = float(np.clip(n_rotate * aug.rotation_factor, -2 * aug.rotation_factor, 2 * aug.rotation_factor))
        flip = bool(u_flip < aug.flip_prob)
        return crop_matrix(center, size, self.input_size, rotation, flip, self.codec), flip

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.samples[index]
        try:
            pixels = image_to_tensor(sample.image, self.in_chans)
        except UnreadableImageError as error:
            refuse_or_skip(str(error), self.on_bad_sample)
            return self._empty(index)
        if (pixels.shape[-1], pixels.shape[-2]) != sample.image_size:
            refuse_or_skip(f'image {sample.image} is {pixels.shape[-1]}x{pixels.shape[-2]} pixels, annotated as '
                           f'{sample.image_size[0]}x{sample.image_size[1]}', self.on_bad_sample)
            return self._empty(index)
        matrix, flip = self.geometry(sample, epoch, index)
        crop = warp_crop(pixels, matrix, self.input_size)
        joints = to_crop(sample.joints, matrix)
        labelled = sample.labelled.copy()
        if flip:
            joints, labelled = joints[self.flip_order], labelled[self.flip_order]
        # as the official JointsDataset: a labelled joint keeps weight 1 unless its cut Gaussian misses the heatmap
        target, weight = self.codec.encode(joints, labelled.astype(np.float32), self.heatmap_size,
                                           self.codec.heatmap_scale(self.input_size, self.heatmap_size), self.sigma)
        return dict(image=(crop - self.mean) / self.std, target=torch.from_numpy(target),
                    target_weight=torch.from_numpy(weight), valid=torch.tensor(1.0), index=torch.tensor(index))
