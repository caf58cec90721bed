"""Pretrained weights: where they live, how to preprocess for them, and what they score on ImageNet-1k.

All weights are safetensors files in the canonical layout on the Hugging Face Hub under `timm/<arch>.<tag>`.
The first tag of each architecture is its default, chosen as the best published top-1 of that variant; this is
also timm's own choice, so moving between timm's built-in models and ours changes no result.

Accuracies are ImageNet-1k validation top-1/top-5 as published in timm's results tables (`None` where the
source publishes none). The SSLD weights are evaluated at their test size, 288x288 with crop 1.0.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

__all__ = ['WEIGHTS', 'default_cfgs', 'published_results', 'PublishedResult']

PAPER = 'Deep High-Resolution Representation Learning for Visual Recognition'
OFFICIAL = 'https://github.com/HRNet/HRNet-Image-Classification'
GLUON = 'https://cv.gluon.ai/model_zoo/classification.html'
PADDLE = 'https://github.com/PaddlePaddle/PaddleClas'


class PublishedResult(NamedTuple):
    top1: float
    top5: float | None


def _cfg(top1: float, top5: float | None, origin_url: str = OFFICIAL, **kwargs: Any) -> dict[str, Any]:
    cfg = dict(
        hf_hub_id='timm/',
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7),
        crop_pct=0.875, interpolation='bilinear', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv='conv1', classifier='classifier', license='mit',
        origin_url=origin_url, paper_name=PAPER, paper_ids='arXiv:1908.07919',
        notes=(f'ImageNet-1k top-1 {top1}',) + ((f'ImageNet-1k top-5 {top5}',) if top5 is not None else ()),
    )
    return {**cfg, **kwargs}


_SSLD = dict(origin_url=PADDLE, crop_pct=0.95, test_input_size=(3, 288, 288), test_crop_pct=1.0,
             description='SSLD knowledge-distilled weights from PaddleClas')
_GLUON = dict(origin_url=GLUON, interpolation='bicubic', license='apache-2.0',
              description='Weights trained by GluonCV; accuracy from timm (top-5 not published)')

# name.tag -> (top-1, top-5, cfg overrides); the first tag per architecture is its default
WEIGHTS: dict[str, tuple[float, float | None, dict[str, Any]]] = {
    'hrnet_w18_small.gluon_in1k': (73.934, None, _GLUON),
    'hrnet_w18_small.ms_in1k': (72.338, 90.678, {}),
    'hrnet_w18_small_v2.gluon_in1k': (78.202, None, _GLUON),
    'hrnet_w18_small_v2.ms_in1k': (75.114, 92.414, {}),
    'hrnet_w18.ms_aug_in1k': (78.126, 94.052, dict(crop_pct=0.95, description='CosineLR + CutMix, 300 epochs')),
    'hrnet_w18.ms_in1k': (76.752, 93.444, {}),
    'hrnet_w30.ms_in1k': (78.192, 94.222, {}),
    'hrnet_w32.ms_in1k': (78.444, 94.188, {}),
    'hrnet_w40.ms_in1k': (78.930, 94.464, {}),
    'hrnet_w44.ms_in1k': (78.892, 94.364, {}),
    'hrnet_w48.ms_in1k': (79.302, 94.516, {}),
    'hrnet_w64.ms_in1k': (79.474, 94.646, {}),
    'hrnet_w18_ssld.paddle_in1k': (82.046, 96.250, _SSLD),
    'hrnet_w48_ssld.paddle_in1k': (84.478, 97.234, _SSLD),
}

default_cfgs = generate_default_cfgs({
    name: _cfg(top1, top5, **overrides) for name, (top1, top5, overrides) in WEIGHTS.items()
})


def published_results(name: str) -> PublishedResult | None:
    """Published ImageNet-1k accuracy of `arch.tag` weights (`arch` alone means its default tag), or None."""
    if '.' not in name:
        name = next((k for k in WEIGHTS if k.split('.', 1)[0] == name), name)
    entry = WEIGHTS.get(name)
    return PublishedResult(entry[0], entry[1]) if entry else None
