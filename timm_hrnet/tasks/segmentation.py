"""Semantic segmentation with HRNetV2 (Wang et al., TPAMI 2019), computing what the official `seg_hrnet`
computes, on the shared `HRNetTrunk`.

Differences from the classifiers that the official code has, and so this model has: the exchange units upsample
**bilinearly** to the target branch's actual size (`spec.upsample='bilinear'`, `align_corners` from the training
config), and the head concatenates the four branches upsampled bilinearly to stride 4 and applies `last_layer`
(1x1 conv, BatchNorm, ReLU, conv to the classes). Logits stay at stride 4; `logits_at_input_size` upsamples them
as the official test does, and `predict` adds flip, multi-scale and sliding-window inference.

`HRNetOCR` replaces that head with HRNet + OCR's (the HRNet-OCR branch's `seg_hrnet_ocr`, mmseg's OCRNet): the
same head as the auxiliary one, then object-contextual representations (`timm_hrnet.ocr`) and a class conv.

`align_corners` is not stored in checkpoints, yet changes every output. The official configs set False for
Cityscapes, LIP and PASCAL-Context and keep the code's default True for ADE20K and COCO-Stuff, so
`create_seg_model` takes it from the class count of a released model and asks for it otherwise.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..checkpoints import MMSEG, OCR, SEGMENTATION, Checkpoint, CheckpointSource, check_task, read_checkpoint
from ..fused import InferenceOnlyModel, register_inference_only
from ..images import ImageInput
from ..necks import HRNetV2
from ..ocr import SpatialGather, SpatialOCR
from ..variants import HRNetSpec
from .base import HRNetTaskModel, init_head_conv, load_task_weights, resize
from .datasets import SegDatasetInfo, dataset_for_classes, generic_palette, seg_dataset, seg_dataset_for
from .saved_config import config_beside

__all__ = ['HRNetSeg', 'HRNetOCR', 'create_seg_model', 'OUTPUT_STRIDE', 'fcn_head', 'OFFICIAL_OCR_CHANNELS',
           'OFFICIAL_OCR_ALIGN_CORNERS']

OUTPUT_STRIDE = 4
OFFICIAL_OCR_CHANNELS = (512, 256)  # MODEL.OCR.MID_CHANNELS, KEY_CHANNELS of every official and mmseg OCR config
OFFICIAL_OCR_ALIGN_CORNERS = True  # MODEL.ALIGN_CORNERS' default, which no config of the HRNet-OCR branch changes


def fcn_head(channels: int, num_classes: int, kernel: int, bias: bool, dd: dict[str, Any]) -> nn.Sequential:
    """HRNetV2's head: 1x1 conv (`bias`: the official code's has one, mmseg's FCNHead conv not), BatchNorm, ReLU,
    conv to the classes (`kernel` 1 or 3)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 1, bias=bias, **dd),
        nn.BatchNorm2d(channels, **dd),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, num_classes, kernel, padding=kernel // 2, **dd),
    )


class HRNetSeg(HRNetTaskModel):
    """HRNetV2 segmentation model: `forward` maps (N, C, H, W) images to (N, K, H/4, W/4) class logits.

    `spec` must upsample bilinearly and keep all four branches (`upsample='bilinear'`, `multi_scale_output=True`).
    `dataset` names the classes and colours; by default the released dataset with `num_classes` classes, if any.
    The head is made by `build_head` (a subclass's own, with its `head_options`).
    """

    __jit_unused_properties__ = ['class_names', 'palette']  # Python-side metadata, not part of the scripted model

    def __init__(
            self,
            spec: HRNetSpec,
            num_classes: int,
            final_conv_kernel: int = 1,
            in_chans: int = 3,
            dataset: SegDatasetInfo | None = None,
            head_bias: bool = True,
            drop_path_rate: float = 0.0,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            **head_options: Any,
    ) -> None:
        if spec.upsample != 'bilinear' or not spec.multi_scale_output:
            raise ValueError(
                "segmentation needs spec.upsample='bilinear' and multi_scale_output=True (the seg_hrnet exchange "
                f'units); got upsample={spec.upsample!r}, multi_scale_output={spec.multi_scale_output}'
            )
        if final_conv_kernel not in (1, 3):
            raise ValueError(f'final_conv_kernel must be 1 or 3 (the official heads), got {final_conv_kernel}')
        dataset = dataset or seg_dataset_for(num_classes)
        if dataset is not None and dataset.num_classes != num_classes:
            raise ValueError(f'dataset {dataset.name!r} has {dataset.num_classes} classes, the model {num_classes}')
        super().__init__(spec, in_chans, drop_path_rate=drop_path_rate, device=device, dtype=dtype)
        dd: dict[str, Any] = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.final_conv_kernel = final_conv_kernel
        self.align_corners: bool = spec.align_corners  # a plain attribute: TorchScript cannot read the spec
        self.dataset = dataset
        self.head_bias = head_bias
        self.neck = HRNetV2(self.branch_channels, align_corners=self.align_corners)
        self.build_head(self.neck.out_channels, dd, **head_options)
        self.init_weights()

    def build_head(self, channels: int, dd: dict[str, Any]) -> None:
        """The head on the `channels`-wide HRNetV2 concatenation: `last_layer`. A subclass with another head (e.g.
        `HRNetOCR`) overrides it; `head_options` of the constructor come here."""
        self.last_layer = fcn_head(channels, self.num_classes, self.final_conv_kernel, self.head_bias, dd)

    def output_conv(self) -> nn.Conv2d:
        return self.last_layer[3]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names if self.dataset else tuple(f'class_{k}' for k in range(self.num_classes))

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.dataset.palette if self.dataset else generic_palette(self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """The HRNetV2 representation: all branches upsampled to stride 4 and concatenated."""
        return self.neck(self.forward_branches(self.forward_stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(self.forward_features(x))

    def logits_at_input_size(self, x: Tensor) -> Tensor:
        """Logits upsampled (bilinearly, with the model's align_corners) to the input's size, as the official test."""
        return resize(self(x), x.shape[-2:], self.align_corners)

    @torch.no_grad()
    def predict(
            self,
            image: ImageInput,
            scales: Sequence[float] = (1.0,),
            flip: bool = False,
            window: tuple[int, int] | None = None,
            progress: bool = False,
    ) -> dict[str, Any]:
        """Label map of `image` at its own size: `labels` (H, W), `scores` (H, W) (the winning class's probability),
        `class_names`. `progress` shows a bar (on stderr) over the forward passes: a multi-scale, flipped or
        sliding-window prediction of a large image runs many.

        Class probabilities are averaged over `scales` (the image resized by each factor), over the mirrored image
        with `flip` (swapping left/right classes, e.g. LIP's arms, legs and shoes) and, with `window` (height,
        width), over overlapping tiles (stride 2/3 of the window, as the official sliding test) so large images fit
        in memory. Runs in eval mode.
        """
        if not scales or min(scales) <= 0:
            raise ValueError(f'scales must be positive, got {list(scales)}')
        if window is not None and min(window) < self.min_input_size:
            raise ValueError(f'window must be at least {self.min_input_size}x{self.min_input_size}, got {window}')
        pixels = self.load_pixels(image)
        height, width = pixels.shape[-2:]
        sizes = [(max(1, round(height * scale)), max(1, round(width * scale))) for scale in scales]
        passes_per_size = [1 if window is None else len(_tile_starts(h, window[0])) * len(_tile_starts(w, window[1]))
                           for h, w in sizes]
        passes = sum(passes_per_size) * (2 if flip else 1)
        bar = tqdm(total=passes, desc='segment', unit='pass', disable=not progress or passes < 2, file=sys.stderr)
        total: Tensor | None = None
        with self.evaluating(), bar:
            for scale, size in zip(scales, sizes):
                scaled = pixels if scale == 1 else F.interpolate(
                    pixels[None], size=size, mode='bilinear', align_corners=False)[0]
                for mirrored in ((False, True) if flip else (False,)):
                    probs = self._probabilities(scaled.flip(-1) if mirrored else scaled, window, bar)
                    if mirrored:
                        probs = self._unflip(probs)
                    if scale != 1:
                        probs = resize(probs[None], (height, width), self.align_corners)[0]
                    total = probs if total is None else total + probs
        assert total is not None
        scores, labels = total.max(dim=0)
        averaged = len(scales) * (2 if flip else 1)  # tiles are averaged within each pass already
        return dict(labels=labels.cpu(), scores=(scores / averaged).cpu(), class_names=self.class_names)

    def _unflip(self, probs: Tensor) -> Tensor:
        order = list(range(self.num_classes))
        for a, b in self.dataset.flip_pairs if self.dataset else ():
            order[a], order[b] = b, a
        return probs.flip(-1)[order]

    def _probabilities(self, pixels: Tensor, window: tuple[int, int] | None, bar: tqdm) -> Tensor:
        """(K, h, w) class probabilities of a (C, h, w) image in [0, 1], whole or tile by tile."""
        height, width = pixels.shape[-2:]
        if window is None:
            probs = self._tile_probabilities(pixels, (height, width))
            bar.update()
            return probs
        rows, cols = _tile_starts(height, window[0]), _tile_starts(width, window[1])
        total = pixels.new_zeros(self.num_classes, height, width)
        count = pixels.new_zeros(1, height, width)
        for top in rows:
            for left in cols:
                tile = pixels[:, top:top + window[0], left:left + window[1]]
                probs = self._tile_probabilities(tile, window)
                total[:, top:top + tile.shape[1], left:left + tile.shape[2]] += probs
                count[:, top:top + tile.shape[1], left:left + tile.shape[2]] += 1
                bar.update()
        return total / count

    def _tile_probabilities(self, pixels: Tensor, pad_to: tuple[int, int]) -> Tensor:
        """Probabilities of one image or tile, padded with black (as the official test pads) to `pad_to` and to the
        network's minimum size, then cropped back."""
        height, width = pixels.shape[-2:]
        padded_h = max(height, pad_to[0], self.min_input_size)
        padded_w = max(width, pad_to[1], self.min_input_size)
        padded = F.pad(pixels, (0, padded_w - width, 0, padded_h - height))
        logits = self.logits_at_input_size(self.normalize(padded).unsqueeze(0))
        return logits[0, :, :height, :width].float().softmax(dim=0)

    def task_config(self) -> dict[str, Any]:
        """What a published repo's config.json needs to rebuild and run this model (JSON-serialisable)."""
        return dict(
            task=SEGMENTATION,
            num_classes=self.num_classes,
            align_corners=self.align_corners,
            output_stride=OUTPUT_STRIDE,
            final_conv_kernel=self.final_conv_kernel,
            head_bias=self.head_bias,
            dataset=self.dataset.name if self.dataset else None,
            class_names=list(self.class_names),
            **self.base_config(),
        )


class HRNetOCR(HRNetSeg):
    """HRNetV2 + OCR (object-contextual representations), as the official `seg_hrnet_ocr` and mmseg's OCRNet compute
    it: `forward(x)` maps images to (N, K, H/4, W/4) class logits, `forward(x, aux=True)` to (logits, auxiliary
    logits), the latter the coarse class map the OCR head gathers objects by (trained with weight 0.4).

    On the HRNetV2 concatenation: `aux_head` (conv, BN, ReLU, conv to the classes: the FCN head), `conv3x3_ocr`
    (3x3 conv to `ocr_channels[0]`, BN, ReLU), `ocr_gather_head` (one representation per class, weighted by the
    auxiliary logits), `ocr_distri_head` (pixel-object attention with `ocr_channels[1]` key channels, fused with the
    pixel features) and `cls_head` (1x1 conv to the classes). `head_bias`: whether the aux_head and conv3x3_ocr
    convs have biases (the official code's do, mmseg's not). `predict` and everything built on it use the main
    logits.
    """

    def __init__(
            self,
            spec: HRNetSpec,
            num_classes: int,
            ocr_channels: tuple[int, int] = OFFICIAL_OCR_CHANNELS,
            in_chans: int = 3,
            dataset: SegDatasetInfo | None = None,
            head_bias: bool = True,
            drop_path_rate: float = 0.0,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(spec, num_classes, 1, in_chans, dataset, head_bias, drop_path_rate, device, dtype,
                         ocr_channels=ocr_channels)

    def build_head(self, channels: int, dd: dict[str, Any], ocr_channels: tuple[int, int] = OFFICIAL_OCR_CHANNELS,
                   ) -> None:
        if len(ocr_channels) != 2 or min(ocr_channels) < 1:
            raise ValueError(f'ocr_channels must be two positive widths (mid, key), got {list(ocr_channels)}')
        mid, key = ocr_channels
        self.ocr_channels = (mid, key)
        self.aux_head = fcn_head(channels, self.num_classes, 1, self.head_bias, dd)
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(channels, mid, 3, padding=1, bias=self.head_bias, **dd),
            nn.BatchNorm2d(mid, **dd),
            nn.ReLU(inplace=True),
        )
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(mid, key, mid, **dd)
        self.cls_head = nn.Conv2d(mid, self.num_classes, 1, **dd)

    def output_conv(self) -> nn.Conv2d:
        return self.cls_head

    def reset_head(self) -> None:
        """Both class convs (main and auxiliary) initialised afresh, e.g. before fine-tuning."""
        init_head_conv(self.cls_head)
        init_head_conv(self.aux_head[3])

    def forward(self, x: Tensor, aux: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:  # noqa: UP007 (TorchScript)
        features = self.forward_features(x)
        aux_logits = self.aux_head(features)
        pixels = self.conv3x3_ocr(features)
        objects = self.ocr_gather_head(pixels, aux_logits)
        logits = self.cls_head(self.ocr_distri_head(pixels, objects))
        if aux:
            return logits, aux_logits
        return logits

    def task_config(self) -> dict[str, Any]:
        return dict(super().task_config(), head=OCR, ocr_channels=list(self.ocr_channels))


def _tile_starts(length: int, window: int) -> list[int]:
    """Top (left) edges of tiles covering `length` with stride 2/3 of `window`, the last one flush with the end."""
    stride = max(1, int(window * 2 / 3))
    count = max(math.ceil((length - window) / stride), 0) + 1
    return [max(min(k * stride + window, length) - window, 0) for k in range(count)]


def create_seg_model(
        checkpoint: CheckpointSource | Checkpoint,
        align_corners: bool | None = None,
        num_classes: int | None = None,
        dataset: str | None = None,
        device: torch.device | str | None = None,
) -> HRNetSeg:
    """An `HRNetSeg` with the architecture and weights of a segmentation checkpoint: official seg_hrnet or mmseg's
    HRNet + FCNHead (fcn_hr*), or an `HRNetOCR` for official seg_hrnet_ocr (HRNet-OCR branch, _torch04 and
    _torch11 files) or mmseg's OCRNet (ocrnet_hr*); a path, an https URL, a state dict or a `Checkpoint`.

    `align_corners` must match the training config. mmseg's models always resize with False (their exchange units,
    head and final resize), so for them it is known. For official checkpoints, left out, it is the official config's
    value for the released model with the checkpoint's class count (seg_hrnet: False for Cityscapes 19, LIP 20,
    PASCAL-Context 59/60; True for ADE20K 150, COCO-Stuff 171; any other class count is an error), and True for
    every official OCR model (no OCR config changes MODEL.ALIGN_CORNERS from its default). `num_classes` different
    from the checkpoint's gives freshly initialised class convs (the rest is loaded) for fine-tuning. `dataset` names
    the label set (see `timm_hrnet.tasks.datasets.SEG_DATASETS`); by default the class names an mmseg checkpoint
    carries, else the released dataset with that many classes. What the weights do not store and the arguments leave out
    comes first from the config.json that `train_seg` / `hub_upload` wrote beside them (`align_corners`, the label
    set, and whether the exchange units resize in mmseg's two steps, which a model fine-tuned from an mmseg
    checkpoint keeps). The model is returned in eval mode.
    """
    loaded = read_checkpoint(checkpoint)
    check_task(loaded.task, SEGMENTATION, loaded.source)
    arch = loaded.architecture
    classes = arch.num_outputs if num_classes is None else num_classes
    config = config_beside(loaded.path, SEGMENTATION, arch.num_outputs)
    if config is not None and align_corners is None:
        align_corners = config.align_corners
    if dataset:
        labels = seg_dataset(dataset)
        if labels.num_classes != classes:  # e.g. a 59-class file linked as a 60-class PASCAL-Context model
            raise ValueError(f'{loaded.source} has {classes} classes (read from its tensors), the dataset {dataset!r} '
                             f'{labels.num_classes}: pass num_classes={labels.num_classes} to fine-tune it for that '
                             'dataset, or the dataset it was trained on')
    elif config is not None and config.labels is not None and classes == arch.num_outputs:
        labels = config.labels
    elif loaded.class_names is not None and classes == len(loaded.class_names):
        labels = dataset_for_classes(loaded.class_names, bool(arch.align_corners))
    else:
        labels = seg_dataset_for(classes)
    if arch.align_corners is not None:
        if align_corners not in (None, arch.align_corners):
            raise ValueError(f'{loaded.source} is an {MMSEG} checkpoint: its model resizes with '
                             f'align_corners={arch.align_corners} throughout, not {align_corners}')
        align_corners = arch.align_corners
    elif arch.head == OCR and not arch.head_bias and (config is None or config.upsample_by_stride is None):
        raise ValueError(
            f"{loaded.source} has an OCR head without conv biases, as mmseg's OCRNet (the official seg_hrnet_ocr has "
            'them), in official keys: how its exchange units resize is not in the weights; load the mmseg file itself, '
            'or keep the config.json written with these weights beside them')
    elif align_corners is None and arch.head == OCR:
        align_corners = OFFICIAL_OCR_ALIGN_CORNERS
    elif align_corners is None:
        trained = labels if labels is not None and classes == arch.num_outputs else seg_dataset_for(arch.num_outputs)
        if trained is None:
            raise ValueError(
                f'{loaded.source} has {arch.num_outputs} classes, no released HRNet segmentation model has that many: '
                'pass align_corners=True or False as in its training config (MODEL.ALIGN_CORNERS; the official code '
                'defaults to True, its Cityscapes, LIP and PASCAL-Context configs set False)'
            )
        align_corners = trained.align_corners
    spec = dataclasses.replace(arch.spec, align_corners=align_corners)
    if config is not None and config.upsample_by_stride is not None:  # the weights do not show how it resizes
        spec = dataclasses.replace(spec, upsample_by_stride=config.upsample_by_stride)
    if arch.head == OCR:
        model: HRNetSeg = HRNetOCR(spec, classes, arch.ocr_channels, arch.in_chans, labels, arch.head_bias)
        class_convs: tuple[str, ...] = ('aux_head.3.', 'cls_head.')
    else:
        model = HRNetSeg(spec, classes, arch.final_conv_kernel, arch.in_chans, labels, arch.head_bias)
        class_convs = ('last_layer.3.',)
    load_task_weights(model, loaded, reinit_prefixes=class_convs if classes != arch.num_outputs else ())
    return model.to(device).eval()


@register_inference_only(HRNetSeg)
class InferenceOnlyHRNetSeg(InferenceOnlyModel, HRNetSeg):
    """A fused segmentation model (module level, so fused models pickle and `torch.save` whole)."""


@register_inference_only(HRNetOCR)
class InferenceOnlyHRNetOCR(InferenceOnlyModel, HRNetOCR):
    """A fused HRNet + OCR model (module level, so fused models pickle and `torch.save` whole)."""
