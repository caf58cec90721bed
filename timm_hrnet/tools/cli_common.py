"""Pieces shared by the `timm-hrnet` subcommands (and hub_upload's error messages): the user-facing error type,
argument types, the help formatter, device choice, autocast, checkpoint arguments and model loading."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from typing import TextIO

import torch
from torch import nn

from timm_hrnet.checkpoints import read_checkpoint
from timm_hrnet.classification import UnknownModelError, load_model, resolve_device, resolve_model_name
from timm_hrnet.convert import CheckpointMismatchError, fitting_variant, mismatch_summary
from timm_hrnet.download import FetchedFile, resolve_checkpoint
from timm_hrnet.hrnet import MIN_INPUT_SIZE
from timm_hrnet.tasks.classification_evaluation import amp_autocast
from timm_hrnet.tasks.pose_codecs import CODEC_NAMES, PoseCodec, parse_codec

__all__ = [
    'CliError', 'HelpFormatter', 'add_codec_argument', 'amp_autocast', 'checkpoint_file', 'crop_fraction',
    'device_or_fail', 'error_message', 'fitting_variant', 'flat_scales', 'image_size', 'load_model_or_fail',
    'mismatch_summary', 'non_negative_int', 'positive_int', 'print_json', 'scale_list', 'stdout_for_json_only',
]


_json_streams: list[TextIO] = []


@contextlib.contextmanager
def stdout_for_json_only(enabled: bool) -> Iterator[None]:
    """With --json, stdout carries the JSON alone: whatever else prints to it meanwhile (a library's download
    line, a warning printed by a dependency) goes to stderr; `print_json` writes to the real stdout."""
    if not enabled:
        yield
        return
    _json_streams.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_streams.pop()


def print_json(text: str) -> None:
    """A --json result on stdout (see `stdout_for_json_only`)."""
    print(text, file=_json_streams[-1] if _json_streams else sys.stdout, flush=True)


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


def _codec(text: str) -> PoseCodec:
    try:
        return parse_codec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_codec_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default_says: str) -> None:
    """--codec, the pose heatmap codec (`timm_hrnet.tasks.pose_codecs`), checked when parsed."""
    parser.add_argument('--codec', type=_codec, metavar='NAME[:KERNEL]',
                        help=f'heatmap codec: {", ".join(CODEC_NAMES)}, optionally with the DARK / UDP blur kernel '
                             f'(e.g. dark:17); default: {default_says}')


def crop_fraction(text: str) -> float:
    """argparse type: a center-crop fraction in (0, 1] (the image is resized to size / fraction, then cropped)."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from error
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f'must be in (0, 1], got {text}')
    return value


def scale_list(text: str) -> list[float]:
    """argparse type: test scales as 0.5,1.0,1.5; with nargs='+' also space-separated (the options that take scales
    accept both, flattened by `flat_scales`)."""
    try:
        values = [float(part) for part in text.split(',') if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected numbers such as 0.5,1.0,1.5, got {text!r}') from error
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f'scales must be positive, got {text!r}')
    return values


def flat_scales(groups: list[list[float]]) -> list[float]:
    """The scales of a `scale_list` option with nargs='+': 0.5,1 1.5 is [0.5, 1.0, 1.5]."""
    return [scale for group in groups for scale in group]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or '%(default)' in (action.help or ''):
            return action.help or ''
        return super()._get_help_string(action)


def device_or_fail(device: str | None) -> torch.device:
    """`resolve_device` with a malformed device string or an absent CUDA reported as `CliError`."""
    try:
        resolved = resolve_device(device)
    except RuntimeError as error:
        raise CliError(f'invalid --device {device!r}: {error}') from error
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise CliError(f'--device {device} requested but CUDA is not available')
    return resolved


def error_message(error: BaseException) -> str:
    """What a library error says, all of it (the lines after the first name the files), or its type when silent."""
    text = str(error).strip()
    return text or type(error).__name__


def checkpoint_file(checkpoint: str, allow_http: bool = False) -> FetchedFile:
    """A --checkpoint argument (path or URL, downloaded once into the cache) as a checked local file."""
    try:
        return resolve_checkpoint(checkpoint, allow_http=allow_http)
    except (OSError, ValueError) as error:
        raise CliError(error_message(error)) from error


def load_model_or_fail(name: str, checkpoint: str | None, allow_http: bool = False) -> nn.Module:
    """`load_model` with missing files, unknown names and unloadable checkpoints turned into one-line `CliError`s."""
    path = checkpoint_file(checkpoint, allow_http).path if checkpoint is not None else None
    weights = None
    try:
        resolve_model_name(name)  # an unknown name is reported before the file is read, as ever
        if path is not None:
            weights = read_checkpoint(path)  # read once: the load and the mismatch summary both take it
        return load_model(name, weights)
    except UnknownModelError as error:
        raise CliError(str(error)) from error
    except CheckpointMismatchError as error:
        raise CliError(mismatch_summary(error, weights, source=checkpoint)) from error
    except OSError as error:
        if checkpoint is None:
            raise CliError(f'cannot get the pretrained weights of {name} (offline or not cached?): '
                           f'{error_message(error)}') from error
        raise CliError(f'cannot load checkpoint {checkpoint} into {name}: {error_message(error)}') from error
    except (KeyError, ValueError, RuntimeError) as error:
        if checkpoint is None:
            raise
        raise CliError(f'cannot load checkpoint {checkpoint} into {name}: {error_message(error)}') from error
