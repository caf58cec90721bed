"""Parameters and multiply-accumulates of a model, counted on the meta device (no memory, no compute).

MACs are FlopCounterMode's FLOPs / 2, i.e. convolutions and matmuls; BatchNorm, activations and pooling are not
counted, as in the usual published GMAC figures.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_params_and_macs', 'model_params_and_macs']


def _meta_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, *input_size, device='meta'))
    return counter.get_total_flops() // 2


def model_params_and_macs(model: nn.Module, input_size: tuple[int, ...]) -> tuple[int, int]:
    """Parameters of `model` and the MACs of one (C, H, W) input, counted on a meta-device copy of it."""
    params = sum(p.numel() for p in model.parameters())
    twin = copy.deepcopy(model).to('meta')
    return params, _meta_macs(twin, input_size)


@lru_cache(maxsize=64)
def count_params_and_macs(architecture: str, input_size: tuple[int, int, int], **model_kwargs: Any) -> tuple[int, int]:
    """Parameters and MACs of a timm architecture at a (C, H, W) input size. Cached: counting w64 takes seconds and
    never changes."""
    with torch.device('meta'):
        model = timm.create_model(architecture, **model_kwargs)
    return sum(p.numel() for p in model.parameters()), _meta_macs(model, input_size)
