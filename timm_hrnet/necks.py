"""Necks that turn HRNet's four parallel branches into the representations of its dense-prediction papers.

Both take the raw branch outputs (C, 2C, 4C, 8C channels at strides 4, 8, 16, 32), i.e. what
`timm.create_model(name, features_only=True, feature_location='', out_indices=(1, 2, 3, 4))` returns:

* `HRNetV2`: every branch upsampled to the highest resolution and concatenated (15C channels), the representation
  HRNetV2 feeds to its segmentation and pose heads.
* `HRNetV2p`: that concatenation re-pooled into a feature pyramid with one channel count, the representation the
  HRNetV2p detectors use. It exposes `out_channels`, so it plugs into torchvision detection models;
  `hrnet_detection_backbone` builds the whole backbone, with torchvision's `trainable_layers` and frozen
  BatchNorm.

Sizes are taken from the tensors, never assumed to be exact multiples, so any input size works.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from timm.utils.model import freeze, freeze_batch_norm_2d
from torch import Tensor, nn

__all__ = ['HRNetV2', 'HRNetV2p', 'HRNetDetectionBackbone', 'hrnet_detection_backbone', 'DETECTION_UNITS']


def _check_branches(features: Sequence[Tensor], in_channels: Sequence[int], neck: str) -> None:
    """Fail with the expected layout instead of a shape error deep inside a conv."""
    channels = [f.shape[1] for f in features]
    if channels != list(in_channels):
        raise ValueError(
            f'{neck} expects {len(in_channels)} branch features with channels {list(in_channels)}, got {channels}; '
            "build the backbone with features_only=True, feature_location='', out_indices=(1, 2, 3, 4)"
        )


class HRNetV2(nn.Module):
    """Concatenate all branches at the highest resolution (bilinear upsampling).

    Parameter free: the following head decides how to mix the `out_channels = sum(in_channels)` channels.
    `align_corners` is False for the detection and new models; the segmentation models take their training
    config's.
    """

    def __init__(self, in_channels: Sequence[int], align_corners: bool = False) -> None:
        super().__init__()
        if len(in_channels) < 1:
            raise ValueError('HRNetV2 needs at least one branch')
        self.in_channels = list(in_channels)
        self.out_channels = sum(self.in_channels)
        self.align_corners = align_corners

    def forward(self, features: list[Tensor]) -> Tensor:
        if not torch.jit.is_scripting():
            _check_branches(features, self.in_channels, 'HRNetV2')
        size = features[0].shape[-2:]
        upsampled = [features[0]]
        for feature in features[1:]:
            upsampled.append(F.interpolate(feature, size=size, mode='bilinear', align_corners=self.align_corners))
        return torch.cat(upsampled, dim=1)


class HRNetV2p(nn.Module):
    """Feature pyramid from the HRNetV2 concatenation: 1x1 reduction, average pooling by 2^k, then a 3x3 conv per level.

    Level k has stride 4 * 2^k relative to the input (with the default 5 levels: 4, 8, 16, 32, 64). Pooling rounds
    sizes up (ceil mode), the same rounding as the backbone's stride-2 convs.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_levels: int = 5) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f'num_levels must be at least 1, got {num_levels}')
        self.concat = HRNetV2(in_channels)
        self.in_channels = self.concat.in_channels
        self.out_channels = out_channels
        self.num_levels = num_levels
        self.reduction_conv = nn.Conv2d(self.concat.out_channels, out_channels, 1)
        self.level_convs = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(num_levels)]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        x = self.reduction_conv(self.concat(features))
        levels: list[Tensor] = []
        for k, conv in enumerate(self.level_convs):
            pooled = x if k == 0 else F.avg_pool2d(x, kernel_size=2**k, stride=2**k, ceil_mode=True)
            levels.append(conv(pooled))
        return levels


class HRNetDetectionBackbone(nn.Module):
    """HRNet branch features plus `HRNetV2p`, in the form torchvision detection models expect.

    Returns an OrderedDict of the pyramid levels keyed '0', '1', ... (the names torchvision's default
    `MultiScaleRoIAlign` reads) and exposes `out_channels`.
    """

    def __init__(self, body: nn.Module, neck: HRNetV2p) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels = neck.out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict((str(i), level) for i, level in enumerate(self.neck(self.body(x))))


# the backbone's parts from the input on, in the roles of ResNet's conv1, layer1 ... layer4 for `trainable_layers`
DETECTION_UNITS: tuple[tuple[str, ...], ...] = (
    ('conv1', 'bn1', 'conv2', 'bn2'),
    ('layer1',),
    ('transition1', 'stage2'),
    ('transition2', 'stage3'),
    ('transition3', 'stage4'),
)


def hrnet_detection_backbone(
        model_name: str = 'hrnet_w18',
        pretrained: bool = False,
        out_channels: int = 256,
        num_levels: int = 5,
        trainable_layers: int | None = None,
        frozen_batchnorm: bool | None = None,
        **kwargs,
) -> HRNetDetectionBackbone:
    """Build an HRNetV2p detection backbone; `kwargs` go to `timm.create_model` (e.g. `pretrained_cfg_overlay`).

    As torchvision's `resnet_fpn_backbone`: `trainable_layers` (0-5) counts the backbone units trained, from the
    last (stage 4) back to the stem (see `DETECTION_UNITS`); the others get no gradients and fixed BatchNorm
    statistics. With `frozen_batchnorm` every BatchNorm becomes torchvision's `FrozenBatchNorm2d`. Like torchvision's
    detection builders, the defaults depend on whether weights are loaded (`pretrained` or a `checkpoint_path`):
    3 trainable units and frozen BatchNorm then, everything trainable with ordinary BatchNorm otherwise. The
    HRNetV2p neck is always trained.
    """
    loaded = pretrained or bool(kwargs.get('checkpoint_path'))
    trainable_layers = (3 if loaded else len(DETECTION_UNITS)) if trainable_layers is None else trainable_layers
    if not 0 <= trainable_layers <= len(DETECTION_UNITS):
        raise ValueError(f'trainable_layers must be in [0, {len(DETECTION_UNITS)}], got {trainable_layers}')
    body = timm.create_model(
        model_name, pretrained=pretrained, features_only=True, feature_location='', out_indices=(1, 2, 3, 4), **kwargs
    )
    frozen = [name for unit in DETECTION_UNITS[:len(DETECTION_UNITS) - trainable_layers] for name in unit]
    if frozen:
        freeze(body, frozen)  # no gradients, and BatchNorm -> FrozenBatchNorm2d inside the frozen units
    frozen_batchnorm = loaded if frozen_batchnorm is None else frozen_batchnorm
    if frozen_batchnorm:
        body = freeze_batch_norm_2d(body)
    return HRNetDetectionBackbone(body, HRNetV2p(body.feature_info.channels(), out_channels, num_levels))
