"""Read a checkpoint file without executing pickled code, and find the tensors inside training wrappers."""
from __future__ import annotations

import argparse
import functools
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from timm.models import clean_state_dict

__all__ = ['PICKLE_SUFFIXES', 'one_line', 'read_checkpoint_object', 'unwrap_state_dict', 'load_checkpoint_file']

PICKLE_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')
# wrapper keys of training checkpoints, most preferred first (EMA weights first, as timm's load_checkpoint does)
_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')


class TrainingStatePlaceholder:
    """What a training-only object of mmengine's message hub (a `HistoryBuffer`, one of its bound methods) is read
    as: an inert record of its pickled state, built without importing or running the class it names."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


@functools.cache
def _plain_data_globals() -> list[Any]:
    """What a weights-only load may reconstruct besides tensors: timm's argparse.Namespace; numpy arrays, dtypes and
    scalars (mmengine's Runner keeps the dataset's metainfo in meta['dataset_meta'] as numpy arrays), by numpy's own
    reconstruction functions, under their numpy 2 and numpy 1 names; and mmengine's message hub state (kept beside
    the weights, never used) as `TrainingStatePlaceholder`s. Nothing else that a pickle names is allowed."""
    import numpy as np
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed: list[Any] = [argparse.Namespace, np.ndarray, np.dtype, *vars(np.dtypes).values()]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        allowed += [(multiarray._reconstruct, f'{module}._reconstruct'), (multiarray.scalar, f'{module}.scalar')]
    for name in ('mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr', '__builtin__.getattr'):
        allowed.append((TrainingStatePlaceholder, name))
    return [g for g in allowed if isinstance(g, (type, tuple))]


def read_checkpoint_object(path: str | os.PathLike) -> Any:
    """What the file holds (a state dict, or a training wrapper around one): safetensors, or
    torch.load(weights_only=True) allowing plain data (`_plain_data_globals`); anything else is a ValueError naming
    the file (and, for a pickle that needs more, the globals it references)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}'")
    if path.suffix == '.safetensors':
        try:
            return safetensors.torch.load_file(path, device='cpu')
        except Exception as e:  # safetensors raises its own SafetensorError for corrupt headers
            raise ValueError(f"'{path}' is not a readable safetensors file: {one_line(e)}") from e
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(
            f"unsupported checkpoint extension '{path.suffix}' for '{path}'; expected .safetensors or one of "
            f"{', '.join(PICKLE_SUFFIXES)}"
        )
    try:
        with torch.serialization.safe_globals(_plain_data_globals()):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        stopped_at = re.findall(r'GLOBAL ([\w.]+)', str(e))  # the legacy format can only be asked this way
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as not_torch:  # noqa: BLE001 - garbage fails in any of the unpickler's ways
            if not stopped_at:
                raise ValueError(f"'{path}' is not a readable PyTorch checkpoint: {one_line(not_torch)}") from e
            unsafe = stopped_at
        allowed = {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}' for g in _plain_data_globals()}
        unsafe = [name for name in unsafe if name not in allowed] or unsafe  # else: misused, e.g. called
        raise ValueError(
            f"refusing to load '{path}': the pickle needs more than torch.load(weights_only=True) allows "
            f"(it references {', '.join(unsafe) or 'arbitrary Python objects'}); only load trusted files "
            f"with weights_only=False yourself, then save their state dict as .safetensors"
        ) from e
    except Exception as e:  # noqa: BLE001 - truncated or garbage files raise KeyError, IndexError, EOFError, ...
        raise ValueError(f"'{path}' is not a readable PyTorch checkpoint: {one_line(e)}") from e


def one_line(error: BaseException, limit: int = 300) -> str:
    """A loader's message (torch's run over several lines, a KeyError's is just the key) as one short line."""
    text = ' '.join(str(error).split())
    text = f'{type(error).__name__}: {text}' if isinstance(error, (KeyError, IndexError)) or not text else text
    return text if len(text) <= limit else text[:limit - 3] + '...'


def unwrap_state_dict(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a training checkpoint, with DDP / torch.compile prefixes stripped."""
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
    """The state dict of a checkpoint file, as stored (no layout conversion)."""
    return unwrap_state_dict(read_checkpoint_object(path), f"'{Path(path)}'")
