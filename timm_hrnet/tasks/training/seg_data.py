"""Segmentation training data: image / label-map folders (Cityscapes layout, class-index or palette PNGs; paired
and read by `tasks.seg_evaluation.find_seg_samples` and `tasks.label_maps`) to random crops with the official
augmentation (HRNet-Semantic-Segmentation's BaseDataset.gen_sample): a random scale 0.5 + randint(0, 16) / 10
(0.5-2.1 in steps of 0.1), padding to the crop (image black, labels `ignore_index`), a random crop and a horizontal
flip.

The folders are scanned when the dataset is built, reading file headers only: an image without a label map, an
unreadable header, a label map of another size than its image or of a mode that cannot hold class indices is an
error listing them (default) or, with `on_bad_sample='skip'`, left out and counted. Label values are checked when a
sample is loaded (or up front with `check_values=True`, which decodes every label map once): a value that is
neither a class nor `ignore_index` is an error naming the file, or with 'skip' an empty sample (every pixel
ignored, `valid` 0) counted in the training log.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ...images import UnreadableImageError, image_to_tensor
from ..label_maps import LabelMapError, check_label_values, read_labels
from ..seg_evaluation import SegSample, find_seg_samples
from .samples import BadSampleError, Problems, check_policy, image_header_size, refuse_or_skip, sample_rng

__all__ = ['SegAugmentation', 'scan_seg_folders', 'SegTrainDataset', 'IGNORE_INDEX']

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
_INDEX_MODES = ('L', 'P', 'I;16', 'I;16L', 'I;16B', 'I')


@dataclass(frozen=True)
class SegAugmentation:
    """Scale factors from `scale_range` in steps of `scale_step` (None: uniform), relative to the image's long
    side or to `base_size` when given (the official configs: 2048 for Cityscapes, i.e. its own size); a flip with
    probability `flip_prob` (classes in the dataset's flip pairs, e.g. LIP's left / right arm, swap)."""

    scale_range: tuple[float, float] = (0.5, 2.1)
    scale_step: float | None = 0.1
    flip_prob: float = 0.5
    base_size: int | None = None

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high or (self.scale_step is not None and self.scale_step <= 0):
            raise ValueError(f'scale_range must be 0 < low <= high and scale_step positive, got {self.scale_range}, '
                             f'{self.scale_step}')

    @classmethod
    def none(cls) -> SegAugmentation:
        """The image at its own size (or `base_size`), cropped at random, not flipped."""
        return cls(scale_range=(1.0, 1.0), scale_step=None, flip_prob=0.0)


def _reduce_zero_label(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    return np.where((labels == 0) | (labels == ignore_index), ignore_index, labels - 1)


def _label_header(path: PathLike, label_format: str) -> tuple[int, int]:
    from PIL import Image  # header only: the pixels are read through timm_hrnet.images / label_maps

    size = image_header_size(path)
    if label_format in ('index', 'cityscapes'):
        with Image.open(path) as image:
            if image.mode not in _INDEX_MODES:
                raise BadSampleError(f'label map {path} is a {image.mode} image, not class indices (L, P or 16-bit)')
    return size


def scan_seg_folders(
        image_dir: str | PathLike,
        label_dir: str | PathLike,
        *,
        label_format: str = 'auto',
        num_classes: int | None = None,
        palette: Sequence[tuple[int, int, int]] | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduce_zero_label: bool = False,
        check_values: bool = False,
        on_bad_sample: str = 'error',
) -> tuple[list[SegSample], dict[str, int]]:
    """The usable (image, label map) pairs and what was skipped, by kind (module docstring)."""
    check_policy(on_bad_sample)
    unlabelled: list[Path] = []
    try:
        samples = find_seg_samples(image_dir, label_dir, label_format, unlabelled)
    except LabelMapError as error:
        raise BadSampleError(str(error)) from error
    problems = Problems(on_bad_sample)
    for image in unlabelled:
        problems.add('images without a label map', f'no label map for {image} under {label_dir}')
    usable = []
    for sample in samples:
        try:
            image_size = image_header_size(sample.image)
            label_size = _label_header(sample.label, sample.label_format)
        except BadSampleError as error:
            problems.add('unreadable files', str(error))
            continue
        if image_size != label_size:
            problems.add('size mismatches', f'label map {sample.label} is {label_size[0]}x{label_size[1]} pixels, '
                                            f'its image {sample.image} {image_size[0]}x{image_size[1]}')
            continue
        if check_values:
            try:
                labels = read_labels(sample.label, sample.label_format, palette)
                if reduce_zero_label:
                    labels = _reduce_zero_label(labels, ignore_index)
                if num_classes is not None:
                    check_label_values(labels, num_classes, ignore_index, sample.label)
            except (LabelMapError, ValueError) as error:
                problems.add('bad label maps', str(error))
                continue
        usable.append(sample)
    skipped = problems.finish(f'{image_dir} / {label_dir}')
    if not usable:
        raise BadSampleError(f'no usable image / label map pairs under {image_dir} and {label_dir}')
    return usable, skipped


class SegTrainDataset(Dataset):
    """Random crops: normalised (C, h, w) images, (h, w) int64 labels (`ignore_index` where not trained), a `valid`
    flag and the sample index; items are looked up by (epoch, index) pairs (`samples.EpochSampler`) or a bare
    index (epoch 0), and every random choice is a function of (seed, epoch, index)."""

    def __init__(
            self,
            samples: list[SegSample],
            num_classes: int,
            crop_size: tuple[int, int],
            mean: tuple[float, ...],
            std: tuple[float, ...],
            augmentation: SegAugmentation | None = None,
            *,
            palette: Sequence[tuple[int, int, int]] | None = None,
            flip_pairs: Sequence[tuple[int, int]] = (),
            ignore_index: int = IGNORE_INDEX,
            reduce_zero_label: bool = False,
            seed: int = 0,
            on_bad_sample: str = 'error',
    ) -> None:
        check_policy(on_bad_sample)
        self.samples = samples
        self.num_classes = num_classes
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.in_chans = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augmentation = augmentation or SegAugmentation()
        self.palette = palette
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.seed = seed
        self.on_bad_sample = on_bad_sample
        lut = np.arange(max(num_classes, ignore_index + 1))
        for a, b in flip_pairs:
            lut[a], lut[b] = b, a
        self.flip_lut = torch.from_numpy(lut)

    def __len__(self) -> int:
        return len(self.samples)

    def _empty(self, index: int) -> dict[str, Tensor]:
        return dict(image=torch.zeros(self.in_chans, *self.crop_size),
                    label=torch.full(self.crop_size, self.ignore_index, dtype=torch.int64),
                    valid=torch.tensor(0.0), index=torch.tensor(index))

    def _scale(self, u: float) -> float:
        low, high = self.augmentation.scale_range
        step = self.augmentation.scale_step
        if step is None or high == low:
            return low + u * (high - low)
        count = int(round((high - low) / step)) + 1
        return low + min(int(u * count), count - 1) * step

    def _load(self, sample: SegSample) -> tuple[Tensor, np.ndarray]:
        pixels = image_to_tensor(sample.image, self.in_chans)
        labels = read_labels(sample.label, sample.label_format, self.palette)
        if self.reduce_zero_label:
            labels = _reduce_zero_label(labels, self.ignore_index)
        if tuple(labels.shape) != tuple(pixels.shape[-2:]):
            raise LabelMapError(f'label map {sample.label} is {labels.shape[1]}x{labels.shape[0]} pixels, its image '
                                f'{sample.image} {pixels.shape[-1]}x{pixels.shape[-2]}')
        check_label_values(labels, self.num_classes, self.ignore_index, sample.label)
        return pixels, labels

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.samples[index]
        try:
            pixels, labels = self._load(sample)
        except (UnreadableImageError, LabelMapError) as error:
            refuse_or_skip(str(error), self.on_bad_sample)
            return self._empty(index)
        u_scale, u_flip, u_top, u_left = sample_rng(self.seed, epoch, index).random(4)
        height, width = labels.shape
        scale = self._scale(u_scale)
        long_side = self.augmentation.base_size or max(height, width)
        long_scaled = int(long_side * scale + 0.5)  # the official multi_scale_aug rounding
        if height > width:
            scaled_h, scaled_w = long_scaled, int(width * long_scaled / height + 0.5)
        else:
            scaled_w, scaled_h = long_scaled, int(height * long_scaled / width + 0.5)
        crop_h, crop_w = self.crop_size
        top = int(u_top * (max(scaled_h, crop_h) - crop_h + 1))
        left = int(u_left * (max(scaled_w, crop_w) - crop_w + 1))
        image, label = self._crop(pixels, torch.from_numpy(labels), (scaled_h, scaled_w), top, left)
        if u_flip < self.augmentation.flip_prob:
            image, label = image.flip(-1), self.flip_lut[label.flip(-1)]
        return dict(image=(image - self.mean) / self.std, label=label, valid=torch.tensor(1.0),
                    index=torch.tensor(index))

    def _crop(self, pixels: Tensor, labels: Tensor, scaled: tuple[int, int], top: int,
              left: int) -> tuple[Tensor, Tensor]:
        """The crop at (top, left) of the image resized to `scaled` (bilinear, half-pixel centres as cv2 and
        F.interpolate; labels nearest), padded beyond the resized image (black, `ignore_index`), without making the
        resized image."""
        height, width = labels.shape
        scaled_h, scaled_w = scaled
        crop_h, crop_w = self.crop_size
        rows = torch.arange(top, top + crop_h)
        cols = torch.arange(left, left + crop_w)
        inside = (rows < scaled_h)[:, None] & (cols < scaled_w)[None, :]
        gx = (2 * cols.double() + 1) / scaled_w - 1
        gy = (2 * rows.double() + 1) / scaled_h - 1
        grid = torch.stack([gx[None, :].expand(crop_h, -1), gy[:, None].expand(-1, crop_w)], dim=-1).float()
        image = F.grid_sample(pixels[None], grid[None], mode='bilinear', padding_mode='border',
                              align_corners=False)[0] * inside
        source_rows = torch.clamp((rows.double() * height / scaled_h).floor().long(), max=height - 1)
        source_cols = torch.clamp((cols.double() * width / scaled_w).floor().long(), max=width - 1)
        label = labels[source_rows[:, None], source_cols[None, :]]
        label = torch.where(inside, label, torch.full_like(label, self.ignore_index))
        return image, label
