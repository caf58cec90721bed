"""Semantic segmentation metrics of an `HRNetSeg` on images with label maps: per-class IoU, mIoU, pixel accuracy
(aAcc) and mean class accuracy, from one confusion matrix accumulated over the data set (mmseg's IoUMetric).

A class absent from both the labels and the predictions has IoU NaN and is left out of the means, as mmseg does;
the official HRNet code counts it as 0 (no difference on Cityscapes val, where every class occurs). Pixels labelled
`ignore_index` are not evaluated.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from ..images import IMAGE_SUFFIXES, image_to_tensor
from .eval_common import gather_or_raise, max_over_ranks, rank_and_world_size, read_ahead
from .label_maps import LABEL_FORMATS, LabelMapError, check_label_values, read_labels

__all__ = ['SegSample', 'find_seg_samples', 'confusion_matrix', 'seg_metrics', 'evaluate_seg']

_CITYSCAPES_IMAGE = '_leftImg8bit'
_CITYSCAPES_LABEL_IDS = '_gtFine_labelIds.png'
_CITYSCAPES_TRAIN_IDS = '_gtFine_labelTrainIds.png'  # written by cityscapesscripts' createTrainIdLabelImgs


@dataclass(frozen=True)
class SegSample:
    """An image, its label map and how to read the label map ('cityscapes', 'index', 'palette' or 'auto')."""

    image: Path
    label: Path
    label_format: str


def _files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise LabelMapError(f'{what} folder not found: {folder}')
    return sorted(p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _cityscapes_samples(images: list[Path], image_dir: Path, label_dir: Path,
                        unlabelled: list[Path] | None) -> list[SegSample]:
    samples = []
    for image in images:
        relative = image.relative_to(image_dir)
        if not relative.stem.endswith(_CITYSCAPES_IMAGE):
            raise LabelMapError(f'{image} is not a Cityscapes *{_CITYSCAPES_IMAGE}.png image (Cityscapes layout)')
        base = label_dir / relative.parent / relative.stem[:-len(_CITYSCAPES_IMAGE)]
        label_ids, train_ids = Path(f'{base}{_CITYSCAPES_LABEL_IDS}'), Path(f'{base}{_CITYSCAPES_TRAIN_IDS}')
        if label_ids.is_file():
            samples.append(SegSample(image, label_ids, 'cityscapes'))
        elif train_ids.is_file():
            samples.append(SegSample(image, train_ids, 'index'))
        elif unlabelled is not None:
            unlabelled.append(image)
        else:
            raise LabelMapError(f'no label map for {image}: expected {label_ids}')
    return samples


def find_seg_samples(image_dir: str | PathLike, label_dir: str | PathLike,
                     label_format: str = 'auto', unlabelled: list[Path] | None = None) -> list[SegSample]:
    """Images under `image_dir` paired with their label maps under `label_dir`.

    Cityscapes layout (`label_format` 'cityscapes', or 'auto' with `*_leftImg8bit.png` images):
    `<city>/X_leftImg8bit.png` pairs with `<city>/X_gtFine_labelIds.png` (34 ids mapped to the 19 train ids), or
    with `X_gtFine_labelTrainIds.png` when only that exists. Otherwise images and labels are matched by their path
    below the folder without the suffix (`a/b.jpg` with `a/b.png`). An image without a label is an error, or, given
    an `unlabelled` list (training that skips bad samples), appended to it and left out.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f'unknown label format {label_format!r}; known: {", ".join(LABEL_FORMATS)}')
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    images = _files(image_dir, 'image')
    if not images:
        raise LabelMapError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under {image_dir}')
    if not label_dir.is_dir():
        raise LabelMapError(f'label folder not found: {label_dir}')
    if label_format == 'cityscapes' or (
            label_format == 'auto' and any(p.stem.endswith(_CITYSCAPES_IMAGE) for p in images)):
        return _cityscapes_samples(images, image_dir, label_dir, unlabelled)
    labels: dict[str, Path] = {}
    for path in _files(label_dir, 'label'):
        key = path.relative_to(label_dir).with_suffix('').as_posix()
        if key in labels:
            raise LabelMapError(f'two label maps for {key}: {labels[key]} and {path}')
        labels[key] = path
    samples = []
    for image in images:
        key = image.relative_to(image_dir).with_suffix('').as_posix()
        if key not in labels:
            if unlabelled is None:
                raise LabelMapError(f'no label map for {image} (looked for {label_dir / key}.*)')
            unlabelled.append(image)
            continue
        samples.append(SegSample(image, labels[key], label_format))
    return samples


def confusion_matrix(prediction: Tensor, label: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(K, K) int64 pixel counts, rows the label and columns the prediction; `ignore_index` pixels left out."""
    if prediction.shape != label.shape:
        raise ValueError(f'prediction {list(prediction.shape)} and label {list(label.shape)} differ in size')
    valid = label != ignore_index
    index = label[valid].long() * num_classes + prediction[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def seg_metrics(confusion: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """IoU and accuracy per class (NaN where undefined), their NaN-ignoring means and the pixel accuracy."""
    counts = confusion.double()
    intersection = counts.diagonal()
    labelled, predicted = counts.sum(1), counts.sum(0)
    iou = intersection / (labelled + predicted - intersection)  # 0 / 0 = NaN: a class absent from both
    accuracy = intersection / labelled
    names = list(class_names) if class_names is not None else [f'class_{k}' for k in range(len(counts))]
    keys = [name if names.index(name) == k else f'{name} ({k})' for k, name in enumerate(names)]
    return dict(
        mIoU=float(iou.nanmean()),
        aAcc=float(intersection.sum() / labelled.sum()),
        mAcc=float(accuracy.nanmean()),
        IoU=iou.tolist(),
        Acc=accuracy.tolist(),
        per_class_iou=dict(zip(keys, iou.tolist())),
        per_class_acc=dict(zip(keys, accuracy.tolist())),
        num_pixels=int(labelled.sum()),
    )


def _reduce_zero_label(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """Label 0 ('other') ignored and label k > 0 becomes class k - 1 (mmseg's reduce_zero_label)."""
    return np.where((labels == 0) | (labels == ignore_index), ignore_index, labels - 1)


@torch.inference_mode()
def evaluate_seg(
        model: nn.Module,
        image_dir: str | PathLike,
        label_dir: str | PathLike,
        *,
        label_format: str = 'auto',
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        window: tuple[int, int] | None = None,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        progress: bool = True,
        read_ahead_images: int = 2,
) -> dict[str, Any]:
    """mIoU, aAcc, mAcc and per-class IoU / accuracy of `model` (an `HRNetSeg`, run through `predict(image,
    scales, flip, window)`) on the images under `image_dir` with the label maps under `label_dir`
    (`find_seg_samples` pairs them, `timm_hrnet.tasks.label_maps` reads them).

    A label map of another size than its image or with values that are neither a class nor `ignore_index` is an
    error naming the file. Under an initialised torch.distributed group each rank runs the images
    rank::world_size and the confusion matrices are summed, so every rank returns the same numbers.
    """
    samples = find_seg_samples(image_dir, label_dir, label_format)
    num_classes = model.num_classes
    palette = model.palette
    rank, world_size = rank_and_world_size()
    mine = samples[rank::world_size]

    def load(sample: SegSample) -> tuple[Tensor, np.ndarray]:
        labels = read_labels(sample.label, sample.label_format, palette)
        pixels = image_to_tensor(sample.image, model.in_chans)
        if tuple(labels.shape) != tuple(pixels.shape[-2:]):
            raise LabelMapError(f'label map {sample.label} is {labels.shape[1]}x{labels.shape[0]} pixels, its image '
                                f'{sample.image} {pixels.shape[-1]}x{pixels.shape[-2]}')
        if reduce_zero_label:
            labels = _reduce_zero_label(labels, ignore_index)
        check_label_values(labels, num_classes, ignore_index, sample.label)
        return pixels, labels

    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    failure: BaseException | None = None
    start = time.perf_counter()
    bar = tqdm(total=len(mine), desc='evaluate-seg', unit='image', disable=not progress or rank != 0)
    try:
        for _, (pixels, labels) in read_ahead(load, mine, read_ahead_images):
            prediction = model.predict(pixels, scales=scales, flip=flip, window=window)['labels'].cpu()
            confusion += confusion_matrix(prediction, torch.from_numpy(labels), num_classes, ignore_index)
            bar.update(1)
    except Exception as error:  # raised below on this rank; the other ranks stop too instead of waiting
        failure = error
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    counts = gather_or_raise(len(mine), failure, LabelMapError)
    if world_size > 1:
        device = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else 'cpu'
        total = confusion.to(device)
        dist.all_reduce(total)
        confusion = total.cpu()
    elapsed = max_over_ranks(elapsed)
    num_images = sum(counts)
    formats = sorted({s.label_format for s in samples})
    return dict(
        **seg_metrics(confusion, model.class_names),
        confusion_matrix=confusion,
        num_images=num_images,
        images_per_second=num_images / elapsed if elapsed > 0 else float('nan'),
        label_format='+'.join(formats),
        scales=[float(s) for s in scales],
        flip=flip,
        window=None if window is None else list(window),
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
        world_size=world_size,
    )
