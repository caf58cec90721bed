"""Where a model to train starts: an ImageNet classifier's trunk (any `hrnet_*` timm name or tag, as the official
training starts), a released or own task checkpoint (fine-tuning), a model built by the caller, or a variant from
scratch."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ...checkpoints import PICKLE_SUFFIXES, Checkpoint, CheckpointMismatchError, key_differences
from ...convert import convert_state_dict
from ...download import is_url

__all__ = ['ModelInit', 'is_checkpoint', 'classifier_state_dict', 'load_trunk']

ModelInit = str | os.PathLike | Mapping[str, Any] | Checkpoint | nn.Module


def is_checkpoint(init: ModelInit) -> bool:
    """A checkpoint (file, URL, state dict) rather than a model name or a model."""
    if isinstance(init, (Mapping, Checkpoint)):
        return True
    if isinstance(init, nn.Module):
        return False
    text = os.fspath(init)
    return is_url(text) or Path(text).is_file() or text.endswith(('.safetensors', *PICKLE_SUFFIXES))


def classifier_state_dict(name: str, pretrained_file: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The weights of an ImageNet classifier: timm's pretrained ones (downloaded by timm), or a local file in any
    classification layout, read by the one checkpoint reader (no pickled code runs; a bad file is one error naming
    it) and checked against the variant."""
    if pretrained_file is not None:
        return convert_state_dict(pretrained_file, name)
    return timm.create_model(name, pretrained=True).state_dict()


def load_trunk(model: nn.Module, trunk: Mapping[str, torch.Tensor], head_prefix: str | tuple[str, ...],
               source: str) -> list[str]:
    """Copy a classifier's tensors into every key of `model` but its head (`head_prefix`, or several, left as
    initialised); a
    missing or mis-shaped trunk tensor is an error listing each. Returns the classifier keys not used (its own
    head and the branches a task model does not have)."""
    own = model.state_dict()
    wanted = {k: v.shape for k, v in own.items() if not k.startswith(head_prefix)}
    missing, unused, mismatched = key_differences(trunk, wanted)
    if missing or mismatched:
        raise CheckpointMismatchError(type(model).__name__, source, missing, [], mismatched,
                                      hint='(the classifier must be the variant of the model being trained)')
    with torch.no_grad():
        for key in wanted:
            own[key].copy_(trunk[key])
    return sorted(unused)
