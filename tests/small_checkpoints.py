"""Synthetic checkpoints of hrnet_w18_small in every release layout, shared by the conversion and loading tests.

The canonical -> mmpretrain export is written independently of timm_hrnet.convert, in the direction mmpretrain's
exporter goes, so that the converter is tested against something it did not produce.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import timm
import torch

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)

SMALL_MODEL = 'hrnet_w18_small'

# written independently of timm_hrnet.convert, in the direction mmpretrain's exporter goes: canonical -> mmpretrain
_TO_MMPRETRAIN = (
    (re.compile(r'^incre_modules\.'), 'neck.0.increase_layers.'),
    (re.compile(r'^downsamp_modules\.(\d+)\.0\.'), r'neck.0.downsample_layers.\1.conv.'),
    (re.compile(r'^downsamp_modules\.(\d+)\.1\.'), r'neck.0.downsample_layers.\1.bn.'),
    (re.compile(r'^final_layer\.0\.'), 'neck.0.final_layer.conv.'),
    (re.compile(r'^final_layer\.1\.'), 'neck.0.final_layer.bn.'),
    (re.compile(r'^classifier\.'), 'head.fc.'),
)
NECK_CONV_BIAS = re.compile(r'^(downsamp_modules\.\d+\.0|final_layer\.0)\.bias$')


def canonical_to_mmpretrain(state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.float16) -> dict:
    """The mmpretrain layout of a canonical state dict: neck convs without bias, weights stored in ``dtype``."""
    converted = {}
    for key, value in state_dict.items():
        if NECK_CONV_BIAS.match(key):
            continue
        for pattern, replacement in _TO_MMPRETRAIN:
            key, count = pattern.subn(replacement, key)
            if count:
                break
        else:
            key = f'backbone.{key}'
        converted[key] = value.to(dtype) if value.is_floating_point() else value
    return converted


def random_state_dict(model_name: str, seed: int, **model_kwargs) -> dict[str, torch.Tensor]:
    """Every tensor random, BatchNorm statistics included, and exactly representable in float16.

    Random statistics make any key mix-up change the outputs; float16-exact values let the float16 mmpretrain copy
    hold the very same numbers. Neck conv biases are zero, as in weights whose bias was folded into the BatchNorm,
    the only kind mmpretrain can store.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.device('meta'):
        shapes = timm.create_model(model_name, pretrained=False, **model_kwargs).state_dict()
    state_dict = {}
    for key, value in shapes.items():
        if key.endswith('num_batches_tracked'):
            state_dict[key] = torch.tensor(0)
        elif NECK_CONV_BIAS.match(key):
            state_dict[key] = torch.zeros(value.shape)
        elif key.endswith('running_var') or (value.ndim == 1 and key.endswith('.weight')):
            state_dict[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state_dict[key] = torch.randn(value.shape, generator=generator) * 0.05
    return {k: v.half().float() if v.is_floating_point() else v for k, v in state_dict.items()}


@dataclass(frozen=True)
class SmallCheckpoints:
    """One set of hrnet_w18_small weights saved in every layout."""

    state_dict: dict[str, torch.Tensor]
    canonical_safetensors: Path
    canonical_pth: Path
    mmpretrain_pth: Path


def write_small_checkpoints(root: Path, seed: int = 0) -> SmallCheckpoints:
    state_dict = random_state_dict(SMALL_MODEL, seed)
    checkpoints = SmallCheckpoints(
        state_dict=state_dict,
        canonical_safetensors=root / 'hrnet_w18_small.safetensors',
        canonical_pth=root / 'hrnet_w18_small.pth',
        mmpretrain_pth=root / 'hrnet-w18-small_mmpretrain.pth',
    )
    root.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state_dict, checkpoints.canonical_safetensors)
    torch.save(state_dict, checkpoints.canonical_pth)
    torch.save({'meta': {'note': 'synthetic'}, 'state_dict': canonical_to_mmpretrain(state_dict)},
               checkpoints.mmpretrain_pth)
    return checkpoints


def assert_state_dicts_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected) or sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value.to(actual[key].dtype)), key
