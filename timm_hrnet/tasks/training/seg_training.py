"""`train_seg`: semantic segmentation training on image / label-map folders, the official HRNet-Semantic-
Segmentation recipe by default (Cityscapes W48: SGD with momentum 0.9, lr 0.01, weight decay 5e-4, poly decay with
power 0.9 over 484 epochs, 3 crops of 512x1024 per GPU; random scale, crop and flip; cross-entropy ignoring 255,
OHEM optional). HRNet + OCR models train as the HRNet-OCR branch's configs do: the OCR logits' loss plus 0.4 x the
auxiliary logits' (LOSS.BALANCE_WEIGHTS [0.4, 1]), OHEM, when asked for, on the OCR logits only."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...checkpoints import FCN, OCR, SEG_HEADS, SEGMENTATION, Checkpoint, read_checkpoint
from ...checkpoints.layouts import OCR_ROOTS
from ...distributed import process_group
from ...variants import resolve_variant
from ..datasets import SegDatasetInfo, generic_palette, seg_dataset, seg_dataset_for
from ..label_maps import LabelMapError
from ..saved_config import CONFIG_FILE, WEIGHTS_FILE, config_beside, read_model_config
from ..seg_evaluation import evaluate_seg, find_seg_samples
from ..segmentation import OFFICIAL_OCR_CHANNELS, HRNetOCR, HRNetSeg, create_seg_model
from .checkpointing import save_sidecar, save_weights
from .config import Recipe, TrainConfig, resolve_config
from .losses import SegCrossEntropy
from .model_init import ModelInit, classifier_state_dict, is_checkpoint, load_trunk
from .samples import BadSampleError, data_fingerprint
from .seg_data import IGNORE_INDEX, SegAugmentation, SegTrainDataset, scan_seg_folders
from .trainer import TrainResult, TrainTask, resume_path, run_training

__all__ = ['SEG_RECIPE', 'SegTrainConfig', 'train_seg', 'build_seg_model', 'load_seg_model', 'label_set']

# experiments/cityscapes/seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml: 3 per GPU on 4 GPUs
SEG_RECIPE = Recipe(epochs=484, batch_size=3, optimizer='momentum', lr=0.01, weight_decay=5e-4, schedule='poly')


@dataclass(frozen=True)
class SegTrainConfig(TrainConfig):
    """`TrainConfig` plus the segmentation data and loss: crop (height, width), augmentation, `align_corners` of a
    new model (None: False, as the official Cityscapes config and mmseg; a checkpoint's own otherwise), OHEM
    (threshold, pixels kept: None keeps the official share), per-class loss weights, `ignore_index`,
    `reduce_zero_label` (label 0 ignored, k -> k - 1), the label format, `check_labels` (decode every label map
    before training to find bad values up front), the evaluation's scales, flip and sliding window, the `head` of a
    new model ('fcn' or 'ocr'; None: a checkpoint's own, 'fcn' for a variant), a new OCR model's (mid, key)
    `ocr_channels` (the official 512, 256) and the weight of an OCR model's auxiliary loss (`aux_weight`, the
    official 0.4)."""

    crop_size: tuple[int, int] = (512, 1024)
    augmentation: SegAugmentation = SegAugmentation()
    align_corners: bool | None = None
    ohem: bool = False
    ohem_threshold: float = 0.7
    ohem_min_kept: int | None = None
    class_weights: tuple[float, ...] | None = None
    ignore_index: int = IGNORE_INDEX
    reduce_zero_label: bool = False
    label_format: str = 'auto'
    check_labels: bool = False
    eval_scales: tuple[float, ...] = (1.0,)
    eval_flip: bool = False
    eval_window: tuple[int, int] | None = None
    head: str | None = None
    aux_weight: float = 0.4
    ocr_channels: tuple[int, int] = OFFICIAL_OCR_CHANNELS


def label_set(num_classes: int | None = None, dataset: str | SegDatasetInfo | None = None,
              class_names: list[str] | tuple[str, ...] | None = None, align_corners: bool = False,
              ) -> SegDatasetInfo | None:
    """The classes to train: a known dataset by name, a list of class names (generic colours), or the released
    dataset with `num_classes` classes (None when there is none: generic names)."""
    if isinstance(dataset, str):
        dataset = seg_dataset(dataset)
    if dataset is not None and class_names is not None:
        raise ValueError('give a dataset or class names, not both')
    if class_names is not None:
        dataset = SegDatasetInfo('custom', tuple(class_names), generic_palette(len(class_names)), align_corners)
    if dataset is None:
        return seg_dataset_for(num_classes) if num_classes is not None else None
    if num_classes is not None and num_classes != dataset.num_classes:
        raise ValueError(f'{num_classes} classes asked for, the dataset {dataset.name!r} has {dataset.num_classes}')
    return dataset


def _head_of(model: HRNetSeg) -> str:
    return OCR if isinstance(model, HRNetOCR) else FCN


def build_seg_model(init: ModelInit, num_classes: int, labels: SegDatasetInfo | None = None,
                    align_corners: bool | None = None, pretrained: bool = True,
                    pretrained_file: str | PathLike | None = None, head: str | None = None,
                    ocr_channels: tuple[int, int] = OFFICIAL_OCR_CHANNELS) -> HRNetSeg:
    """The model to train: a given `HRNetSeg` (or `HRNetOCR`); a segmentation checkpoint (`create_seg_model`, the
    class convs re-initialised when the class count differs); or a variant name (`hrnet_w48`, `hrnet_w18.ms_in1k`,
    ...) with bilinear exchange units, the `head` asked for ('fcn', the default, or 'ocr' with `ocr_channels`) and
    the trunk of its ImageNet classifier (`pretrained`, optionally from `pretrained_file`) or from scratch. A model
    or checkpoint keeps its own head: another `head` is an error."""
    if head is not None and head not in SEG_HEADS:
        raise ValueError(f"unknown segmentation head {head!r}: choose one of {', '.join(SEG_HEADS)}")
    if isinstance(init, nn.Module):
        if not isinstance(init, HRNetSeg) or init.num_classes != num_classes:
            raise ValueError(f'the model to train must be an HRNetSeg with {num_classes} classes')
        model = init
    elif is_checkpoint(init):
        model = create_seg_model(init, align_corners=align_corners, num_classes=num_classes)
    else:
        spec = dataclasses.replace(resolve_variant(os.fspath(init)), upsample='bilinear', multi_scale_output=True,
                                   align_corners=bool(align_corners))
        if head == OCR:
            model = HRNetOCR(spec, num_classes, tuple(ocr_channels), dataset=labels)
        else:
            model = HRNetSeg(spec, num_classes, dataset=labels)
        if pretrained:
            load_trunk(model, classifier_state_dict(os.fspath(init), pretrained_file),
                       OCR_ROOTS if head == OCR else 'last_layer.', os.fspath(pretrained_file or init))
    if head is not None and _head_of(model) != head:
        raise ValueError(f'the model to fine-tune has an {_head_of(model)} head, not {head}: a checkpoint or model '
                         'keeps its own head (leave the head out, or start from a variant name)')
    if labels is not None:
        model.dataset = labels
    return model.train()


def _uses_cityscapes_ids(image_dir: str | PathLike, label_dir: str | PathLike, label_format: str) -> bool:
    """Whether the folders are the Cityscapes layout (whose 19 train ids then name the classes)."""
    if label_format not in ('auto', 'cityscapes'):
        return False
    try:
        samples = find_seg_samples(image_dir, label_dir, label_format, unlabelled=[])  # the scan reports those
    except LabelMapError as error:
        raise BadSampleError(str(error)) from error
    return any(s.label_format == 'cityscapes' or s.label.name.endswith('_gtFine_labelTrainIds.png') for s in samples)


def train_seg(
        image_dir: str | PathLike,
        label_dir: str | PathLike,
        *,
        num_classes: int | None = None,
        dataset: str | SegDatasetInfo | None = None,
        class_names: list[str] | tuple[str, ...] | None = None,
        init: ModelInit = 'hrnet_w48',
        pretrained: bool = True,
        pretrained_file: str | PathLike | None = None,
        val_image_dir: str | PathLike | None = None,
        val_label_dir: str | PathLike | None = None,
        config: SegTrainConfig | None = None,
        **options: Any,
) -> TrainResult:
    """Train a segmentation model on images and label maps (`find_seg_samples` pairs them: Cityscapes layout, or
    files matched by name); under torchrun on every rank.

    The classes are `dataset` (a name of `timm_hrnet.tasks.datasets.SEG_DATASETS` or a `SegDatasetInfo`),
    `class_names`, or `num_classes`; by default Cityscapes for the Cityscapes layout, else a checkpoint's own.
    `init` is a variant name (the trunk of its ImageNet classifier when `pretrained`), a segmentation checkpoint to
    fine-tune, or an `HRNetSeg`. `options` override fields of `config` (a `SegTrainConfig`). With a validation
    split, mIoU is measured every `eval_every` epochs (`evaluate_seg`). The trained model is written to
    `<output_dir>/model.safetensors` with `config.json` (`load_seg_model` reads them back, as does `create_seg_model`
    on the weights file).
    """
    config = resolve_config(dataclasses.replace(config or SegTrainConfig(), **options), SEG_RECIPE)
    if (val_image_dir is None) != (val_label_dir is None):
        raise ValueError('give both val_image_dir and val_label_dir, or neither')
    if isinstance(init, (str, PathLike)) and is_checkpoint(init):
        init = read_checkpoint(init)  # read once: its class count may be the default
    # fine-tuning an exported model (or a repo staged from one): its align_corners and classes are the model's
    exported = config_beside(init.path, SEGMENTATION) if isinstance(init, Checkpoint) else None
    if num_classes is None and dataset is None and class_names is None:
        if exported is not None and exported.labels is not None:
            dataset = exported.labels  # fine-tuning an exported model: its own classes
        elif isinstance(init, Checkpoint) and init.architecture is not None:
            num_classes = init.architecture.num_outputs
        elif isinstance(init, HRNetSeg):
            num_classes = init.num_classes
        elif _uses_cityscapes_ids(image_dir, label_dir, config.label_format):
            dataset = 'cityscapes'
        else:
            raise ValueError('how many classes? give num_classes, class_names or a dataset name')
    align_corners = config.align_corners
    if align_corners is None and exported is not None:
        align_corners = exported.align_corners
    if align_corners is None and not isinstance(init, (Checkpoint, HRNetSeg)):
        align_corners = False
    labels = label_set(num_classes, dataset, class_names, bool(align_corners))
    num_classes = labels.num_classes if labels is not None else num_classes
    with process_group(config.device) as context:
        samples, skipped = scan_seg_folders(
            image_dir, label_dir, label_format=config.label_format, num_classes=num_classes,
            palette=labels.palette if labels is not None else generic_palette(num_classes),
            ignore_index=config.ignore_index, reduce_zero_label=config.reduce_zero_label,
            check_values=config.check_labels, on_bad_sample=config.on_bad_sample)
        if val_image_dir is not None:
            try:
                find_seg_samples(val_image_dir, val_label_dir, config.label_format)
            except LabelMapError as error:
                raise BadSampleError(f'validation split: {error}') from error
        torch.manual_seed(config.seed)  # the same initial weights on every rank and in every run
        resuming = resume_path(config) is not None  # the trunk's weights would be overwritten: not fetched
        model = build_seg_model(init, num_classes, labels, align_corners, pretrained and not resuming,
                                pretrained_file, config.head, config.ocr_channels)
        train_data = SegTrainDataset(
            samples, num_classes, config.crop_size, model.mean, model.std, config.augmentation,
            palette=model.palette, flip_pairs=model.dataset.flip_pairs if model.dataset else (),
            ignore_index=config.ignore_index, reduce_zero_label=config.reduce_zero_label, seed=config.seed,
            on_bad_sample=config.on_bad_sample)
        if config.class_weights is not None and len(config.class_weights) != num_classes:
            raise ValueError(f'{len(config.class_weights)} class weights for {num_classes} classes')
        criterion = SegCrossEntropy(config.ignore_index, model.align_corners, config.ohem, config.ohem_threshold,
                                    config.ohem_min_kept, config.class_weights).to(context.device)
        # the official OCR loss: OHEM (if asked for) on the last output only, plain cross-entropy on the auxiliary one
        aux_criterion = SegCrossEntropy(config.ignore_index, model.align_corners,
                                        class_weights=config.class_weights).to(context.device)
        with_aux = isinstance(model, HRNetOCR)

        def loss(module: nn.Module, batch: dict[str, Tensor]) -> Tensor:
            if not with_aux:
                return criterion(module(batch['image']), batch['label'])
            logits, aux = module(batch['image'], aux=True)
            return criterion(logits, batch['label']) + config.aux_weight * aux_criterion(aux, batch['label'])

        def evaluate(trained: nn.Module) -> dict[str, Any]:
            return evaluate_seg(trained, val_image_dir, val_label_dir, label_format=config.label_format,
                                scales=config.eval_scales, flip=config.eval_flip, window=config.eval_window,
                                ignore_index=config.ignore_index, reduce_zero_label=config.reduce_zero_label,
                                progress=config.progress)

        def export(state_dict: dict[str, Tensor], output_dir: Path) -> dict[str, str]:
            weights, sidecar = output_dir / WEIGHTS_FILE, output_dir / CONFIG_FILE
            save_weights(weights, state_dict)
            save_sidecar(sidecar, dict(model.task_config(), palette=[list(c) for c in model.palette],
                                       flip_pairs=[list(p) for p in model.dataset.flip_pairs] if model.dataset else [],
                                       crop_size_hw=list(config.crop_size), weights=WEIGHTS_FILE,
                                       ema=config.ema_decay is not None, trained_on=os.fspath(image_dir)))
            return dict(weights=str(weights), config=str(sidecar))

        source = init.source if isinstance(init, Checkpoint) else (
            os.fspath(init) if isinstance(init, (str, PathLike)) else type(init).__name__)
        task = TrainTask('segmentation', model, train_data, loss, export, SEG_RECIPE,
                         evaluate if val_image_dir is not None else None,
                         scan=dict(samples=len(samples), skipped=skipped, classes=num_classes, head=_head_of(model),
                                   dataset=model.dataset.name if model.dataset else None, init=source),
                         fingerprint=data_fingerprint(
                             [s.image.relative_to(image_dir).as_posix(), s.label.relative_to(label_dir).as_posix(),
                              s.label_format] for s in samples))
        return run_training(task, config, context)


def load_seg_model(output_dir: str | PathLike, device: torch.device | str | None = None) -> HRNetSeg:
    """The model a `train_seg` run exported (its folder or `model.safetensors` with `config.json` beside it; a repo
    `hub_upload convert` staged reads the same), with its `align_corners`, class names, palette, flip pairs and
    exchange-unit resizes (mmseg's two steps for a model fine-tuned from an mmseg checkpoint), in eval mode. Unlike
    `create_seg_model`, it refuses weights without that config.json."""
    config = read_model_config(output_dir, SEGMENTATION)
    return create_seg_model(config.weights, device=device)
