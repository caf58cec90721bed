"""The committed reference fixtures under tests/fixtures/official and tests/fixtures/mmpretrain: their weights and
inputs, rebuilt from a manifest, and the outputs the reference code computed for them.

HRNet's classification head has fixed widths (2048 channels, 9.4M weights: 19 MB in float16 whatever the trunk), so
the fixtures store no weight tensors. Every tensor is a pseudo-random function of its key, shape and role (32-bit
integer hashing, no random generator: the same values on every platform and torch version), rounded to float16. The
generators (run with the reference code, which imports this file) and the tests build the same tensors; the
manifest keeps the keys, shapes and roles the reference code's own `state_dict()` had, and a digest of the values it
ran with, so a rebuilt checkpoint is checked to be the one the reference code saw. Only torch and numpy are
imported here.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / 'fixtures'

_MIX = np.uint32(0x45D9F3B)

# value ranges by role (uniform): BatchNorm statistics away from the identity, so folding or skipping one shows
ROLE_RANGES = {
    'bn_weight': (0.5, 1.5),
    'bn_bias': (-0.2, 0.2),
    'bn_mean': (-0.2, 0.2),
    'bn_var': (0.5, 2.0),
    'bias': (-0.2, 0.2),
    'input': (-2.0, 2.0),
}
LINEAR_STD = 0.01


def _mix(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer hash (uint32 arithmetic wraps modulo 2**32)."""
    x = ((x >> 16) ^ x) * _MIX
    x = ((x >> 16) ^ x) * _MIX
    return (x >> 16) ^ x


def pseudo_uniform(name: str, shape: Sequence[int], low: float, high: float) -> torch.Tensor:
    """float32 values in [low, high), a fixed function of `name` and the element index, rounded to float16."""
    seed = np.uint32(zlib.crc32(name.encode()))
    with np.errstate(over='ignore'):
        bits = _mix(_mix(np.arange(math.prod(shape), dtype=np.uint32) ^ seed) + seed)
    unit = torch.from_numpy(bits.astype(np.float64) / 2.0**32)
    return (low + (high - low) * unit).to(torch.float16).float().reshape(tuple(shape))


def _range(role: str, shape: Sequence[int]) -> tuple[float, float]:
    if role == 'conv':  # Kaiming-uniform scaled by 0.5: activations stay O(1) through the deep trunk
        bound = 0.5 * math.sqrt(2.0 / math.prod(shape[1:])) * math.sqrt(3.0)
        return -bound, bound
    if role == 'linear':
        bound = LINEAR_STD * math.sqrt(3.0)
        return -bound, bound
    return ROLE_RANGES[role]


def make_tensor(key: str, shape: Sequence[int], role: str) -> torch.Tensor:
    """The tensor stored under `key`: float16 for weights and statistics, int64 0 for BatchNorm's batch count."""
    if role == 'count':
        return torch.zeros(tuple(shape), dtype=torch.int64)
    return pseudo_uniform(key, shape, *_range(role, shape)).half()


def make_input(name: str, shape: Sequence[int]) -> torch.Tensor:
    return pseudo_uniform(name, shape, *ROLE_RANGES['input'])


_BN_ROLES = {'weight': 'bn_weight', 'bias': 'bn_bias', 'running_mean': 'bn_mean', 'running_var': 'bn_var',
             'num_batches_tracked': 'count'}


def tensor_roles(model: torch.nn.Module) -> list[list[Any]]:
    """Manifest entries `[key, shape, role]` of a model's state dict, the role from the module holding the tensor."""
    roles = {}
    for prefix, module in model.named_modules():
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for attr, _ in own:
            if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                role = _BN_ROLES[attr]
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                role = 'bias' if attr == 'bias' else 'conv' if isinstance(module, torch.nn.Conv2d) else 'linear'
            else:
                raise ValueError(f'no role for {prefix}.{attr} of a {type(module).__name__}')
            roles[f'{prefix}.{attr}' if prefix else attr] = role
    return [[key, list(value.shape), roles[key]] for key, value in model.state_dict().items()]


def make_state_dict(entries: Sequence[Sequence[Any]]) -> dict[str, torch.Tensor]:
    """A state dict from manifest entries `[key, shape, role]`, in their order."""
    return {key: make_tensor(key, shape, role) for key, shape, role in entries}


def manifest_text(manifest: dict[str, Any]) -> str:
    """A manifest as JSON, one tensor entry a line."""
    head = json.dumps({k: v for k, v in manifest.items() if k != 'tensors'}, indent=1)
    entries = ',\n'.join('  ' + json.dumps(entry) for entry in manifest['tensors'])
    return f'{head[:-2]},\n "tensors": [\n{entries}\n ]\n}}\n'


def digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every key, dtype, shape and value, in order."""
    sha = hashlib.sha256()
    for key, tensor in state_dict.items():
        sha.update(f'{key}|{tensor.dtype}|{list(tensor.shape)}|'.encode())
        sha.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


@dataclass(frozen=True)
class ReferenceFixture:
    """One committed fixture: the manifest, the checkpoint's tensors as the reference code had them (float16), and
    the reference outputs per input case (`cases[name]`: `input_shape`, outputs, `step` of any subsampling)."""

    name: str
    manifest: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    cases: dict[str, dict[str, Any]]

    def input(self, case: str) -> torch.Tensor:
        return make_input(f'{self.name}/{case}', self.cases[case]['input_shape'])

    def write_checkpoint(self, folder: Path) -> Path:
        """The checkpoint file as the reference code saves it (`manifest['wrapper']`: none, or mmengine's
        `{'meta', 'state_dict'}`), named `manifest['checkpoint']`."""
        path = Path(folder) / self.manifest['checkpoint']
        wrapper = self.manifest.get('wrapper')
        content = self.state_dict if wrapper is None else {'meta': wrapper['meta'], 'state_dict': self.state_dict}
        torch.save(content, path)
        return path


@functools.cache
def load_fixture(folder: str, name: str) -> ReferenceFixture:
    """Rebuild tests/fixtures/<folder>/<name> (once per process: callers must not change it); a ValueError if the
    tensors differ from what the reference code saw."""
    root = FIXTURES / folder
    manifest = json.loads((root / f'{name}.json').read_text())
    state_dict = make_state_dict(manifest['tensors'])
    if digest(state_dict) != manifest['digest']:
        raise ValueError(f'{root / name}.json: rebuilt tensors differ from the ones the reference code ran with')
    cases = torch.load(root / f'{name}_reference.pt', weights_only=True)
    return ReferenceFixture(name, manifest, state_dict, cases)


def subsample(tensor: torch.Tensor, step: int) -> torch.Tensor:
    """Every `step`-th value of the last two dimensions: how large outputs are kept in the fixtures."""
    return tensor[..., ::step, ::step]
