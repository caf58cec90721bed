"""Object-contextual representations (OCR, Yuan et al., ECCV 2020): the blocks of the head HRNet + OCR puts on the
HRNetV2 concatenation.

A coarse class map (the auxiliary head's logits) softly assigns pixels to classes; `SpatialGather` averages the
features of each class's pixels into one object representation per class; `ObjectAttention` lets every pixel
attend over those K representations (scaled dot-product attention with 1x1 conv projections), and `SpatialOCR`
concatenates that context with the pixel's own features and mixes them with a 1x1 conv. Attribute names follow the
official `seg_hrnet_ocr` (HRNet-Semantic-Segmentation, branch HRNet-OCR), whose state dicts are the canonical
layout; mmseg's OCRHead computes the same from its own names (`timm_hrnet.checkpoints.layouts`). Both code bases
use scale 1 (no pooling of the query), the only one supported here.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['SpatialGather', 'ObjectAttention', 'SpatialOCR']


def _conv_bn_relu(in_channels: int, out_channels: int, dd: dict[str, Any]) -> list[nn.Module]:
    """A bias-free 1x1 conv and its BatchNorm + ReLU, the latter in a Sequential of their own (the official
    `BNReLU`)."""
    return [nn.Conv2d(in_channels, out_channels, 1, bias=False, **dd),
            nn.Sequential(nn.BatchNorm2d(out_channels, **dd), nn.ReLU(inplace=True))]


class SpatialGather(nn.Module):
    """One representation per class: the features averaged over the pixels with weights softmax(class logits)
    taken over the image. (N, C, H, W) features and (N, K, H, W) logits -> (N, C, K, 1)."""

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        weights = logits.flatten(2).softmax(dim=2)  # (N, K, HW)
        objects = torch.matmul(weights, features.flatten(2).transpose(1, 2))  # (N, K, C)
        return objects.transpose(1, 2).unsqueeze(3)


class ObjectAttention(nn.Module):
    """Each pixel's context: attention of its query (`f_pixel`: two 1x1 conv-BN-ReLU) over the class
    representations' keys (`f_object`, likewise) and values (`f_down`: one), scaled by key_channels^-0.5, then
    projected back to the pixel width (`f_up`). (N, C, H, W) pixels and (N, C, K, 1) objects -> (N, C, H, W)."""

    def __init__(self, in_channels: int, key_channels: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd: dict[str, Any] = dict(device=device, dtype=dtype)
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(*_conv_bn_relu(in_channels, key_channels, dd),
                                     *_conv_bn_relu(key_channels, key_channels, dd))
        self.f_object = nn.Sequential(*_conv_bn_relu(in_channels, key_channels, dd),
                                      *_conv_bn_relu(key_channels, key_channels, dd))
        self.f_down = nn.Sequential(*_conv_bn_relu(in_channels, key_channels, dd))
        self.f_up = nn.Sequential(*_conv_bn_relu(key_channels, in_channels, dd))

    def forward(self, pixels: Tensor, objects: Tensor) -> Tensor:
        query = self.f_pixel(pixels).flatten(2).transpose(1, 2)  # (N, HW, Ck)
        key = self.f_object(objects).flatten(2)  # (N, Ck, K)
        value = self.f_down(objects).flatten(2).transpose(1, 2)  # (N, K, Ck)
        attention = F.softmax(torch.matmul(query, key) * self.key_channels ** -0.5, dim=-1)
        context = torch.matmul(attention, value).transpose(1, 2)  # (N, Ck, HW)
        context = context.reshape(context.shape[0], context.shape[1], pixels.shape[2], pixels.shape[3])
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """The object-contextual representation: [context, pixels] mixed by a 1x1 conv-BN-ReLU (dropout in training, as
    the official head: 0.05)."""

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, dropout: float = 0.05,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd: dict[str, Any] = dict(device=device, dtype=dtype)
        self.object_context_block = ObjectAttention(in_channels, key_channels, **dd)
        self.conv_bn_dropout = nn.Sequential(*_conv_bn_relu(2 * in_channels, out_channels, dd),
                                             nn.Dropout2d(dropout))

    def forward(self, pixels: Tensor, objects: Tensor) -> Tensor:
        context = self.object_context_block(pixels, objects)
        return self.conv_bn_dropout(torch.cat([context, pixels], dim=1))
