"""Convert released HRNet classification checkpoints into the canonical (official / timm) state dict of a variant.

Two classification layouts exist in the wild (`timm_hrnet.checkpoints.layouts` has them all, task ones included):

* ``canonical``: the official HRNet-Image-Classification release and timm's hub weights (``conv1.*``,
  ``stage4.*``, ``incre_modules.*``, ``downsamp_modules.*``, ``final_layer.*``, ``classifier.*``).
* ``mmpretrain``: OpenMMLab mmpretrain / mmclassification (``backbone.*``, the ``HRFuseScales`` neck under
  ``neck.0.*`` and ``head.fc.*``). Its neck convs carry no bias (it is folded into the following BatchNorm), so zero
  biases are filled in when the target variant has them.

Files are read by `timm_hrnet.checkpoints.read_checkpoint`; the expected keys and shapes always come from the model
itself, built on the meta device, so the converter follows the architecture instead of duplicating it.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import timm
import torch

from .checkpoints import (
    CANONICAL,
    LAYOUT_NAMES,
    MMPRETRAIN,
    Checkpoint,
    CheckpointMismatchError,
    key_differences,
    load_checkpoint_file,
    read_checkpoint,
    to_canonical_keys,
    unwrap_state_dict,
)
from .checkpoints import detect_layout as _detect
from .variants import VARIANTS

__all__ = [
    'CANONICAL',
    'MMPRETRAIN',
    'LAYOUT_NAMES',
    'CheckpointMismatchError',
    'load_checkpoint_file',
    'detect_layout',
    'resolve_layout',
    'convert_state_dict',
    'checkpoint_filter_fn',
    'canonicalize_on_load',
    'fitting_variant',
    'mismatch_summary',
]

_logger = logging.getLogger(__name__)

_CLASSIFICATION_LAYOUTS = (CANONICAL, MMPRETRAIN)
# convs followed by BatchNorm in the classification neck: mmpretrain stores them without bias
_FOLDED_BIAS = re.compile(r'^(downsamp_modules\.\d+\.0|final_layer\.0)\.bias$')
_BN_COUNTER = '.num_batches_tracked'


def _layout_name(state_dict: Mapping[str, Any]) -> str | None:
    try:
        return _detect(state_dict).name
    except ValueError:
        return None


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell which release layout a state dict uses: 'canonical' (official / timm) or 'mmpretrain' (also 'mmpose' and
    'mmseg' for those task checkpoints)."""
    return _detect(unwrap_state_dict(state_dict, 'state dict')).name


def resolve_layout(name: str) -> str:
    """Map a user facing source name (official, timm, mmpretrain, canonical) to a layout."""
    if name not in LAYOUT_NAMES:
        close = difflib.get_close_matches(name, [*LAYOUT_NAMES, 'auto'], n=2)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ''
        raise ValueError(f"unknown checkpoint layout '{name}', expected auto or one of {', '.join(LAYOUT_NAMES)}{hint}")
    return LAYOUT_NAMES[name]


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    return {k: (v.shape, v.dtype) for k, v in state_dict.items()}


@lru_cache(maxsize=16)
def _model_layout(model_name: str) -> tuple[dict[str, tuple[torch.Size, torch.dtype]], str]:
    """Keys, shapes and dtypes of a variant's state dict plus its classifier name, from a meta-device model."""
    if not timm.is_model(timm.models.split_model_name_tag(model_name)[0]):
        close = difflib.get_close_matches(model_name, timm.list_models('hrnet*'), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ''
        raise ValueError(f"unknown model '{model_name}'{hint}")
    with torch.device('meta'):
        model = timm.create_model(model_name, pretrained=False)
    expected = _shapes(model.state_dict())
    return expected, model.pretrained_cfg.get('classifier') or 'classifier'


def _fill_zeros(state_dict: dict[str, torch.Tensor], expected: Mapping[str, tuple[torch.Size, torch.dtype]],
                wanted: Callable[[str], object]) -> None:
    for key, (shape, dtype) in expected.items():
        if key not in state_dict and wanted(key):
            state_dict[key] = torch.zeros(shape, dtype=dtype)


def _with_class_count(
        expected: Mapping[str, tuple[torch.Size, torch.dtype]], classifier: str, state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Size]:
    """The variant's shapes with the checkpoint's class count (its classifier weight's, else its bias'), because a
    classifier for another number of classes is kept as is, not reported."""
    shapes = {key: shape for key, (shape, _) in expected.items()}
    head = state_dict.get(classifier + '.weight', state_dict.get(classifier + '.bias'))
    if head is not None:
        for key in (classifier + '.weight', classifier + '.bias'):
            if key in shapes:
                shapes[key] = torch.Size((head.shape[0], *shapes[key][1:]))
    return shapes


def convert_state_dict(
        source: Checkpoint | Mapping[str, torch.Tensor] | str | os.PathLike,
        model_name: str,
        layout: str = 'auto',
        allow_partial: bool = False,
) -> dict[str, torch.Tensor]:
    """Turn a classification checkpoint (`Checkpoint`, path, URL or state dict) of either layout into a float32
    canonical state dict for a variant.

    Raises CheckpointMismatchError naming every missing, unmapped or mis-shaped key unless ``allow_partial``, in which
    case only the matching tensors are returned. A classifier with another class count is kept as is. ``layout``
    other than 'auto' asserts the layout the file must be in.
    """
    checkpoint = read_checkpoint(source)
    if layout != 'auto' and resolve_layout(layout) != checkpoint.layout.name:
        raise ValueError(f'{checkpoint.source} is in the {checkpoint.layout.name} layout, not {layout}')
    if checkpoint.layout.name not in _CLASSIFICATION_LAYOUTS:
        raise ValueError(f'{checkpoint.source} is an {checkpoint.layout.name} {checkpoint.task} checkpoint, not a '
                         'classifier: load it with timm_hrnet.create_pose_model / create_seg_model')
    expected, classifier = _model_layout(model_name)
    converted = dict(checkpoint.state_dict)
    if checkpoint.layout.name == MMPRETRAIN:
        _fill_zeros(converted, expected, _FOLDED_BIAS.match)
    # older checkpoints predate BatchNorm's counter, which never affects outputs
    _fill_zeros(converted, expected, lambda key: key.endswith(_BN_COUNTER))

    missing, unexpected, mismatched = key_differences(converted, _with_class_count(expected, classifier, converted))
    if missing or unexpected or mismatched:
        error = CheckpointMismatchError(model_name, checkpoint.source, missing, unexpected, mismatched)
        if not allow_partial:
            raise error
        _logger.warning('Partial conversion, these tensors are left out or absent. %s', error)

    return {
        key: converted[key].float().contiguous() if converted[key].is_floating_point() else converted[key].contiguous()
        for key in expected
        if key in converted and key not in mismatched
    }


def _rename_foreign(state_dict: dict, model: torch.nn.Module) -> dict:
    """Rename an mmpretrain dict to canonical keys (bias-free neck convs get zero biases); others pass through."""
    if _layout_name(state_dict) != MMPRETRAIN:
        return state_dict
    converted, unmapped = to_canonical_keys(state_dict, MMPRETRAIN)
    expected = _shapes(model.state_dict())
    _fill_zeros(converted, expected, _FOLDED_BIAS.match)
    converted.update({key: state_dict[key] for key in unmapped})  # left for load_state_dict to report by name
    return converted


def checkpoint_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict:
    """timm ``pretrained_filter_fn``: accept any known layout and refuse incomplete or foreign weights by key name.

    timm loads non-strictly whenever the class count changes (and always for features models), which would leave
    a missing trunk weight randomly initialised without a word; here every trunk key the model has must be present
    and every key must belong to the architecture. Weights of modules pruned from the model (the head of a features
    model) are dropped; the classifier is left to timm, which re-initialises it for another class count and adapts
    the first conv for other input channels.
    """
    state_dict = _rename_foreign(unwrap_state_dict(state_dict, 'pretrained state dict'), model)
    own = model.state_dict()
    _fill_zeros(state_dict, _shapes(own), lambda key: key.endswith(_BN_COUNTER))
    # keys of modules pruned from this model (a features model's head) are dropped, not reported as foreign
    known = model.architecture_keys() if hasattr(model, 'architecture_keys') else frozenset(own)
    classifier = (model.pretrained_cfg or {}).get('classifier') or 'classifier'
    trunk = {k: v for k, v in state_dict.items() if (k in own or k not in known) and not k.startswith(classifier + '.')}
    # shapes are not judged here: timm adapts the input conv (in_chans) after this filter, and load_state_dict
    # names any other mis-shaped tensor
    missing, unexpected, _ = key_differences(
        trunk, {k: v.shape for k, v in own.items() if not k.startswith(classifier + '.')})
    if missing or unexpected:
        name = (model.pretrained_cfg or {}).get('architecture') or type(model).__name__
        raise CheckpointMismatchError(
            name, 'pretrained weights', missing, unexpected, {},
            hint='(partial loads: convert_state_dict(..., allow_partial=True), then load_state_dict(strict=False))',
        )
    return {k: v for k, v in state_dict.items() if k in own or k.startswith(classifier + '.')}


def canonicalize_on_load(module: torch.nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook (``module.register_load_state_dict_pre_hook``): convert a foreign layout in place.

    Only acts on the top-level call so that ``model.load_state_dict(mmpretrain_sd)`` and
    ``timm.create_model(..., checkpoint_path=mmpretrain.pth)`` work; canonical dicts pass through untouched.
    """
    if prefix or _layout_name(state_dict) != MMPRETRAIN:
        return
    converted = _rename_foreign(dict(state_dict), module)
    state_dict.clear()
    state_dict.update(converted)


def _examples(keys: list[str], count: int = 2) -> str:
    return ', '.join(keys[:count]) + (', ...' if len(keys) > count else '')


def fitting_variant(
        state_dict: Checkpoint | Mapping[str, torch.Tensor] | str | os.PathLike,
        layout: str = 'auto',
        exclude: str = '',
) -> str | None:
    """The first HRNet variant a checkpoint converts to without a mismatch (the likely cause of one), or None.

    The checkpoint is read once, then tried against every variant.
    """
    try:
        checkpoint = read_checkpoint(state_dict)
    except ValueError:  # no HRNet checkpoint: no variant fits
        return None
    for variant in VARIANTS:
        if variant == exclude:
            continue
        try:
            convert_state_dict(checkpoint, variant, layout=layout)
        except ValueError:
            continue
        return variant
    return None


def mismatch_summary(
        error: CheckpointMismatchError, state_dict: Checkpoint | Mapping[str, torch.Tensor] | None = None,
        layout: str = 'auto', source: str | None = None,
) -> str:
    """One line instead of every key name: counts, a couple of names per kind, and the variant it does fit.

    ``state_dict`` (the checkpoint's own, best the `Checkpoint` already read) lets it name the variant that fits;
    ``source`` names the file.
    """
    parts = []
    if error.missing:
        parts.append(f'{len(error.missing)} missing ({_examples(error.missing)})')
    if error.unexpected:
        parts.append(f'{len(error.unexpected)} unexpected ({_examples(error.unexpected)})')
    if error.mismatched:
        key, (got, want) = next(iter(error.mismatched.items()))
        parts.append(f'{len(error.mismatched)} mis-shaped (e.g. {key}: checkpoint {list(got)}, model {list(want)})')
    summary = f"{source or error.source} does not fit {error.model_name}: {', '.join(parts)} keys"
    variant = fitting_variant(state_dict, layout, exclude=error.model_name) if state_dict is not None else None
    if variant is not None:
        summary += f'; it is a {variant} checkpoint: pass --model {variant}'
    return summary
