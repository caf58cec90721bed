"""Convert released HRNet checkpoints into the canonical (official / timm) state dict layout.

Two layouts exist in the wild:

* ``canonical``: the official HRNet-Image-Classification release and timm's hub weights (``conv1.*``,
  ``stage4.*``, ``incre_modules.*``, ``downsamp_modules.*``, ``final_layer.*``, ``classifier.*``).
* ``mmpretrain``: OpenMMLab mmpretrain / mmclassification (``backbone.*``, the ``HRFuseScales`` neck under
  ``neck.0.*`` and ``head.fc.*``). Its neck convs carry no bias (it is folded into the following BatchNorm), so zero
  biases are filled in when the target variant has them.

The expected keys and shapes always come from the model itself, built on the meta device, so the converter follows the
architecture instead of duplicating it.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models import clean_state_dict

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
]

_logger = logging.getLogger(__name__)

CANONICAL = 'canonical'
MMPRETRAIN = 'mmpretrain'
# user facing source names -> layout; the official release and timm's hub weights share the canonical layout
LAYOUT_NAMES = {'canonical': CANONICAL, 'official': CANONICAL, 'timm': CANONICAL, 'mmpretrain': MMPRETRAIN}

PICKLE_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')
# wrapper keys of training checkpoints, most preferred first (EMA weights first, as timm's load_checkpoint does)
_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')

_CANONICAL_ROOTS = frozenset({
    'conv1', 'bn1', 'conv2', 'bn2', 'layer1', 'transition1', 'transition2', 'transition3', 'stage2', 'stage3',
    'stage4', 'incre_modules', 'downsamp_modules', 'final_layer', 'classifier',
})
_MMPRETRAIN_ROOTS = frozenset({'backbone', 'neck', 'head'})

_MMPRETRAIN_RENAMES = (
    (re.compile(r'^backbone\.'), ''),
    (re.compile(r'^neck\.0\.increase_layers\.'), 'incre_modules.'),
    (re.compile(r'^neck\.0\.downsample_layers\.(\d+)\.conv\.'), r'downsamp_modules.\1.0.'),
    (re.compile(r'^neck\.0\.downsample_layers\.(\d+)\.bn\.'), r'downsamp_modules.\1.1.'),
    (re.compile(r'^neck\.0\.final_layer\.conv\.'), 'final_layer.0.'),
    (re.compile(r'^neck\.0\.final_layer\.bn\.'), 'final_layer.1.'),
    (re.compile(r'^head\.fc\.'), 'classifier.'),
)
# convs followed by BatchNorm in the classification neck: mmpretrain stores them without bias
_FOLDED_BIAS = re.compile(r'^(downsamp_modules\.\d+\.0|final_layer\.0)\.bias$')
_BN_COUNTER = '.num_batches_tracked'


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the target model; every offending key is listed by name."""

    def __init__(
            self,
            model_name: str,
            source: str,
            missing: list[str],
            unexpected: list[str],
            mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
            hint: str = '(pass allow_partial=True to keep only the matching tensors)',
    ) -> None:
        self.model_name = model_name
        self.source = source
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f'{source} does not fit {model_name}:']
        if missing:
            lines.append(f'  missing keys ({len(missing)}): ' + ', '.join(missing))
        if unexpected:
            lines.append(f'  unexpected (unmapped) keys ({len(unexpected)}): ' + ', '.join(unexpected))
        for key, (got, want) in mismatched.items():
            lines.append(f'  shape mismatch for {key}: checkpoint {list(got)} vs model {list(want)}')
        lines.append(f'  {hint}')
        super().__init__('\n'.join(lines))


def _describe(source: Any) -> str:
    return f"'{source}'" if isinstance(source, (str, os.PathLike)) else 'state dict'


def _unwrap(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a training checkpoint and strip DDP / torch.compile prefixes."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'{source} holds a {type(checkpoint).__name__}, not a state dict')
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not checkpoint:
        raise ValueError(
            f'{source} is not a state dict of tensors (no {"/".join(_WRAPPER_KEYS)} entry found); '
            f'non-tensor entries: {", ".join(map(str, not_tensors[:10])) or "none, it is empty"}'
        )
    return clean_state_dict(dict(checkpoint))


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing pickled code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}'")
    if path.suffix == '.safetensors':
        try:
            checkpoint = safetensors.torch.load_file(path, device='cpu')
        except Exception as e:  # safetensors raises its own SafetensorError for corrupt headers
            raise ValueError(f"'{path}' is not a readable safetensors file: {e}") from e
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            # timm training checkpoints keep their argparse.Namespace 'args'; allowing it executes no code
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as e:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            except (ValueError, RuntimeError) as not_torch:
                raise ValueError(f"'{path}' is not a readable PyTorch checkpoint: {not_torch}") from e
            raise ValueError(
                f"refusing to load '{path}': the pickle needs more than torch.load(weights_only=True) allows "
                f"(it references {', '.join(unsafe) or 'arbitrary Python objects'}); only load trusted files "
                f"with weights_only=False yourself, then save their state dict as .safetensors"
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise ValueError(f"'{path}' is not a readable PyTorch checkpoint: {e}") from e
    else:
        raise ValueError(
            f"unsupported checkpoint extension '{path.suffix}' for '{path}'; expected .safetensors or one of "
            f"{', '.join(PICKLE_SUFFIXES)}"
        )
    return _unwrap(checkpoint, f"'{path}'")


def _guess_layout(state_dict: Mapping[str, Any]) -> str | None:
    roots = [key.split('.', 1)[0] for key in clean_state_dict(dict(state_dict))]
    canonical = sum(root in _CANONICAL_ROOTS for root in roots)
    mmpretrain = sum(root in _MMPRETRAIN_ROOTS for root in roots)
    if not canonical and not mmpretrain:
        return None
    return MMPRETRAIN if mmpretrain > canonical else CANONICAL


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell which release layout a state dict uses: 'canonical' (official / timm) or 'mmpretrain'."""
    layout = _guess_layout(state_dict)
    if layout is None:
        sample = ', '.join(list(state_dict)[:5]) or 'none, the state dict is empty'
        raise ValueError(
            'unknown checkpoint layout: no key starts with a canonical HRNet module '
            f'({", ".join(sorted(_CANONICAL_ROOTS))}) or an mmpretrain one (backbone., neck., head.); '
            f'first keys: {sample}'
        )
    return layout


def resolve_layout(name: str) -> str:
    """Map a user facing source name (official, timm, mmpretrain, canonical) to a layout."""
    if name not in LAYOUT_NAMES:
        close = difflib.get_close_matches(name, [*LAYOUT_NAMES, 'auto'], n=2)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ''
        raise ValueError(f"unknown checkpoint layout '{name}', expected auto or one of {', '.join(LAYOUT_NAMES)}{hint}")
    return LAYOUT_NAMES[name]


def _rename_mmpretrain(key: str) -> str | None:
    for pattern, replacement in _MMPRETRAIN_RENAMES:
        renamed, count = pattern.subn(replacement, key)
        if count:
            return renamed
    return None


def _to_canonical_keys(
        state_dict: Mapping[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename keys to the canonical layout; returns the renamed dict and the source keys that map nowhere."""
    if layout == CANONICAL:
        return dict(state_dict), []
    renamed, unmapped = {}, []
    for key, value in state_dict.items():
        new_key = _rename_mmpretrain(key)
        if new_key is None:
            unmapped.append(key)
        else:
            renamed[new_key] = value
    return renamed, unmapped


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


def _shape_mismatches(
        state_dict: Mapping[str, torch.Tensor],
        expected: Mapping[str, tuple[torch.Size, torch.dtype]],
        classifier: str,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Shape differences, except the class count of the classifier which callers read from the weights."""
    mismatched = {}
    for key, value in state_dict.items():
        if key not in expected or value.shape == expected[key][0]:
            continue
        want = expected[key][0]
        if key.startswith(classifier + '.') and value.shape[1:] == want[1:]:
            continue
        mismatched[key] = (tuple(value.shape), tuple(want))
    weight, bias = state_dict.get(classifier + '.weight'), state_dict.get(classifier + '.bias')
    if weight is not None and bias is not None and weight.shape[0] != bias.shape[0]:
        mismatched[classifier + '.bias'] = (tuple(bias.shape), (weight.shape[0],))
    return mismatched


def convert_state_dict(
        source: Mapping[str, torch.Tensor] | str | os.PathLike,
        model_name: str,
        layout: str = 'auto',
        allow_partial: bool = False,
) -> dict[str, torch.Tensor]:
    """Turn a checkpoint (path or state dict) of any known layout into a float32 canonical state dict for a variant.

    Raises CheckpointMismatchError naming every missing, unmapped or mis-shaped key unless ``allow_partial``, in which
    case only the matching tensors are returned. A classifier with another class count is kept as is.
    """
    description = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        state_dict = load_checkpoint_file(source)
    else:
        state_dict = _unwrap(source, description)
    layout = detect_layout(state_dict) if layout == 'auto' else resolve_layout(layout)
    expected, classifier = _model_layout(model_name)

    converted, unmapped = _to_canonical_keys(state_dict, layout)
    if layout == MMPRETRAIN:
        _fill_zeros(converted, expected, _FOLDED_BIAS.match)
    # older checkpoints predate BatchNorm's counter, which never affects outputs
    _fill_zeros(converted, expected, lambda key: key.endswith(_BN_COUNTER))

    missing = [k for k in expected if k not in converted]
    unexpected = unmapped + [k for k in converted if k not in expected]
    mismatched = _shape_mismatches(converted, expected, classifier)
    if missing or unexpected or mismatched:
        error = CheckpointMismatchError(model_name, description, missing, unexpected, mismatched)
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
    if _guess_layout(state_dict) != MMPRETRAIN:
        return state_dict
    converted, unmapped = _to_canonical_keys(state_dict, MMPRETRAIN)
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
    state_dict = _rename_foreign(_unwrap(state_dict, 'pretrained state dict'), model)
    own = model.state_dict()
    expected = _shapes(own)
    _fill_zeros(state_dict, expected, lambda key: key.endswith(_BN_COUNTER))
    # keys of modules pruned from this model (a features model's head) are dropped, not reported as foreign
    known = model.architecture_keys() if hasattr(model, 'architecture_keys') else frozenset(own)
    classifier = (model.pretrained_cfg or {}).get('classifier') or 'classifier'
    missing = [k for k in own if k not in state_dict and not k.startswith(classifier + '.')]
    unexpected = [k for k in state_dict if k not in known and not k.startswith(classifier + '.')]
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
    if prefix or _guess_layout(state_dict) != MMPRETRAIN:
        return
    converted = _rename_foreign(dict(state_dict), module)
    state_dict.clear()
    state_dict.update(converted)
