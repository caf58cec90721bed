"""Pieces shared by the `timm-hrnet` subcommands: the user-facing error type, argument types, device choice,
autocast and model loading."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from timm_hrnet.hrnet import MIN_INPUT_SIZE
from timm_hrnet.inference import UnknownModelError, load_model, resolve_device

__all__ = [
    'CliError', 'amp_autocast', 'device_or_fail', 'image_size', 'load_model_or_fail', 'non_negative_int',
    'positive_int',
]


class CliError(Exception):
    """A problem with the user's input, printed as one line on stderr with exit code 2 instead of a traceback."""


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from error
    if value < minimum:
        raise argparse.ArgumentTypeError(f'must be at least {minimum}, got {value}')
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, step counts, top-k), so zero fails at parse time."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (data-loading worker counts)."""
    return _int_at_least(text, 0)


def image_size(text: str) -> int:
    """argparse type: a square input size HRNet can run, i.e. at least one pixel on its stride-32 branch."""
    return _int_at_least(text, MIN_INPUT_SIZE)


def device_or_fail(device: str | None) -> torch.device:
    """`resolve_device` with a malformed device string or an absent CUDA reported as `CliError`."""
    try:
        resolved = resolve_device(device)
    except RuntimeError as error:
        raise CliError(f'invalid --device {device!r}: {error}') from error
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise CliError(f'--device {device} requested but CUDA is not available')
    return resolved


def amp_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision for `--amp`: float16 on CUDA, bfloat16 on CPU (where float16 kernels are slow or missing)."""
    return torch.autocast(device.type, dtype=torch.float16 if device.type == 'cuda' else torch.bfloat16,
                          enabled=enabled)


def load_model_or_fail(name: str, checkpoint: str | None) -> nn.Module:
    """`load_model` with missing files, unknown names and unloadable checkpoints turned into `CliError`."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CliError(f'checkpoint not found: {checkpoint}')
    try:
        return load_model(name, checkpoint)
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
