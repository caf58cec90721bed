"""Pieces shared by the `timm-hrnet` subcommands: the user-facing error type, device choice, model loading."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from timm_hrnet.inference import UnknownModelError, load_model

__all__ = ['CliError', 'load_model_or_fail', 'resolve_device']


class CliError(Exception):
    """A problem with the user's input, printed as one line on stderr with exit code 2 instead of a traceback."""


def resolve_device(device: str | None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))


def load_model_or_fail(name: str, checkpoint: str | None, pretrained: bool = True) -> nn.Module:
    """`load_model` with missing files, unknown names and unloadable checkpoints turned into `CliError`."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CliError(f'checkpoint not found: {checkpoint}')
    try:
        return load_model(name, checkpoint, pretrained=pretrained and checkpoint is None)
    except UnknownModelError as error:
        raise CliError(str(error)) from error
    except OSError as error:
        if checkpoint is None:
            raise CliError(f'cannot get the pretrained weights of {name} (offline or not cached?): {error}') from error
        raise CliError(f'cannot load checkpoint {checkpoint} into {name}: {error}') from error
    except (KeyError, ValueError, RuntimeError) as error:
        if checkpoint is None:
            raise
        raise CliError(f'cannot load checkpoint {checkpoint} into {name}: {_abbreviate(str(error))}') from error


def _abbreviate(message: str, max_lines: int = 8) -> str:
    """Key-by-key mismatch reports run to hundreds of lines; the first few tell what is wrong."""
    lines = message.splitlines()
    if len(lines) <= max_lines:
        return message
    return '\n'.join(lines[:max_lines] + [f'  ... and {len(lines) - max_lines} more lines'])
