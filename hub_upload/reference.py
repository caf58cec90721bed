"""Reference models for ``verify``: the source checkpoint run through code that did not produce the staged repo.

* canonical layout (official release, timm's weights): timm's built-in HRNet (``timm.models.hrnet``, which
  ``import timm_hrnet`` unregisters but does not remove), fed the source's own keys as read by timm's own loader;
* mmpretrain layout: mmpretrain's own ``ImageClassifier`` when mmpretrain is installed;
* otherwise there is no independent path: the reference is timm_hrnet's converter output in timm_hrnet's model,
  which only shows that the repo is self-consistent, and the report says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from dataclasses import dataclass

import timm
import timm.models.hrnet as builtin_hrnet
import torch
from torch import nn

from timm_hrnet.convert import CANONICAL, MMPRETRAIN, convert_state_dict

__all__ = [
    'Reference', 'ReferenceLoadError', 'build_reference', 'builtin_reference_for_weights', 'read_source_state_dict',
]

_BN_COUNTER = 'num_batches_tracked'
_MMPRETRAIN_WIDTHS = (18, 30, 32, 40, 44, 48, 64)  # mmpretrain's HRNet arch_zoo: 'w18' ... 'w64'


@dataclass(frozen=True)
class Reference:
    model: nn.Module  # eval mode, float32 logits
    description: str  # what computed the reference outputs, for the report and the model card
    independent: bool  # False: only self-consistency was checked


class ReferenceLoadError(ValueError):
    """The source does not load into the independent implementation (which is itself a verification failure)."""


def read_source_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The source's tensors as timm's own loader reads them (``weights_only=True``; EMA / wrapper keys unwrapped)."""
    with torch.serialization.safe_globals([argparse.Namespace]):  # timm training checkpoints keep their 'args'
        return timm.models.load_state_dict(str(path), weights_only=True)


def _load(model: nn.Module, state_dict: dict[str, torch.Tensor], who: str) -> None:
    """Copy the source tensors in (float16 sources are cast by copy_); BatchNorm counters alone may be absent."""
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ReferenceLoadError(f'the source does not load into {who}: {str(e).splitlines()[-1].strip()}') from e
    missing = [key for key in missing if not key.endswith(_BN_COUNTER)]
    if missing or unexpected:
        examples = ', '.join((missing + unexpected)[:3])
        raise ReferenceLoadError(f'the source does not load into {who}: {len(missing)} missing and {len(unexpected)} '
                                 f'unexpected keys (e.g. {examples})')


def _builtin_reference(architecture: str, state_dict: dict[str, torch.Tensor], num_classes: int) -> Reference | None:
    entrypoint = getattr(builtin_hrnet, architecture, None)
    if entrypoint is None or getattr(entrypoint, '__module__', None) != builtin_hrnet.__name__:
        return None
    with torch.device('meta'):  # no random init; every tensor is copied from the source below
        model = entrypoint(pretrained=False, num_classes=num_classes)
    model = model.to_empty(device='cpu')
    who = f"timm's built-in {architecture} (timm.models.hrnet, timm {timm.__version__})"
    _load(model, state_dict, who)
    return Reference(model.eval(), who, independent=True)


class _MMPretrainLogits(nn.Module):
    """mmpretrain's classifier returning plain logits (``mode='tensor'``: backbone, neck, head; no preprocessing)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x, mode='tensor')


def _mmpretrain_reference(architecture: str, state_dict: dict[str, torch.Tensor], num_classes: int) -> Reference | None:
    match = re.fullmatch(r'hrnet_w(\d+)(_ssld)?', architecture)
    if match is None or int(match.group(1)) not in _MMPRETRAIN_WIDTHS or importlib.util.find_spec('mmpretrain') is None:
        return None
    import mmpretrain
    from mmpretrain.models import build_classifier

    width = int(match.group(1))
    classifier = build_classifier(dict(  # mmpretrain's configs/_base_/models/hrnet/hrnet-wNN.py
        type='ImageClassifier',
        backbone=dict(type='HRNet', arch=f'w{width}'),
        neck=[dict(type='HRFuseScales', in_channels=tuple(width * 2**i for i in range(4))),
              dict(type='GlobalAveragePooling')],
        head=dict(type='LinearClsHead', in_channels=2048, num_classes=num_classes),
    ))
    who = f"mmpretrain's own ImageClassifier (mmpretrain {getattr(mmpretrain, '__version__', '?')}, arch w{width})"
    _load(classifier, state_dict, who)
    return Reference(_MMPretrainLogits(classifier).eval(), who, independent=True)


def _num_classes(state_dict: dict[str, torch.Tensor], layout: str) -> int:
    key = 'head.fc.weight' if layout == MMPRETRAIN else 'classifier.weight'
    if key not in state_dict:
        raise ReferenceLoadError(f'the source has no {key}: not a classifier checkpoint in the {layout} layout')
    return state_dict[key].shape[0]


def build_reference(state_dict: dict[str, torch.Tensor], architecture: str, layout: str) -> Reference:
    """The most independent reference for a source state dict (``read_source_state_dict``) in ``layout``."""
    num_classes = _num_classes(state_dict, layout)
    builder = {CANONICAL: _builtin_reference, MMPRETRAIN: _mmpretrain_reference}[layout]
    reference = builder(architecture, state_dict, num_classes)
    if reference is not None:
        return reference
    with torch.device('meta'):
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    model.load_state_dict(convert_state_dict(state_dict, architecture, layout=layout), assign=True)
    hint = '; installing mmpretrain gives one' if layout == MMPRETRAIN else ''
    return Reference(
        model.eval(),
        f"timm_hrnet's own converter (no independent implementation of {architecture} in the {layout} layout is "
        f'available{hint})',
        independent=False,
    )


def builtin_reference_for_weights(weights: dict[str, torch.Tensor], architecture: str) -> Reference | None:
    """timm's built-in model holding a repo's own canonical weights (``verify`` without a source)."""
    return _builtin_reference(architecture, weights, weights['classifier.weight'].shape[0])
