"""Check a staged repo directory: load it the way users will (``local-dir:``) and compare with its source checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors
import timm
import torch
from huggingface_hub import constants

from timm_hrnet.convert import convert_state_dict

__all__ = ['WEIGHTS_NAME', 'VerifyReport', 'file_sha256', 'read_weights_metadata', 'verify_dir']

WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE


@dataclass(frozen=True)
class VerifyReport:
    repo_dir: Path
    architecture: str
    reference: str  # what the repo was compared with
    max_abs_diff: float
    atol: float
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and self.max_abs_diff <= self.atol

    def summary(self) -> str:
        verdict = 'OK' if self.ok else 'FAILED'
        lines = [
            f'verify {verdict}: {self.repo_dir} ({self.architecture}) vs {self.reference}: '
            f'max abs diff {self.max_abs_diff:.3g} (tolerance {self.atol:g})'
        ]
        lines += [f'  problem: {problem}' for problem in self.problems]
        return '\n'.join(lines)


def file_sha256(path: str | os.PathLike) -> str:
    """Hash in chunks so multi-hundred-MB checkpoints do not need to fit in memory twice."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights_metadata(repo_dir: str | os.PathLike) -> dict[str, str]:
    with safetensors.safe_open(Path(repo_dir) / WEIGHTS_NAME, framework='pt') as f:
        return dict(f.metadata() or {})


def _require_fields(config: dict, path: Path) -> None:
    """A config.json that timm could not build from is named with the field it lacks, instead of a bare KeyError."""
    if not isinstance(config.get('architecture'), str):
        raise ValueError(f"'{path}' has no 'architecture' field; it is not a timm config.json")
    if 'input_size' not in (config.get('pretrained_cfg') or {}):
        raise ValueError(f"'{path}' has no 'pretrained_cfg.input_size' field; it is not a timm config.json")


def verify_dir(
        repo_dir: str | os.PathLike,
        against: str | os.PathLike | None = None,
        source: str = 'auto',
        atol: float = 1e-4,
        batch_size: int = 2,
        image_size: int | None = None,
        seed: int = 0,
        against_sha256: str | None = None,
) -> VerifyReport:
    """Compare logits of ``timm.create_model('local-dir:DIR')`` with the source converted independently.

    Without ``against`` the repo is compared with its own weights file, which still checks that config.json builds
    the right architecture and that every tensor loads strictly. ``image_size`` (default: the config's input size)
    trades coverage for speed on slow machines. ``against_sha256`` spares hashing ``against`` again when the caller
    has just hashed it.
    """
    repo_dir = Path(repo_dir)
    for required in (WEIGHTS_NAME, 'config.json', 'README.md'):
        if not (repo_dir / required).is_file():
            raise FileNotFoundError(f"'{repo_dir}' is not a staged repo: {required} is missing")
    config = json.loads((repo_dir / 'config.json').read_text(encoding='utf-8'))
    _require_fields(config, repo_dir / 'config.json')
    architecture = config['architecture']
    problems = []

    reference_file = Path(against) if against is not None else repo_dir / WEIGHTS_NAME
    if against is not None:
        recorded = read_weights_metadata(repo_dir).get('source_sha256')
        actual = against_sha256 or file_sha256(reference_file)
        if recorded and recorded != actual:
            problems.append(f'{reference_file.name} has sha256 {actual}, the repo records {recorded}')

    loaded = timm.create_model(f'local-dir:{repo_dir}', pretrained=True).eval()
    reference_state = convert_state_dict(reference_file, architecture, layout=source if against is not None else 'auto')
    num_classes = config.get('num_classes', loaded.num_classes)
    with torch.device('meta'):  # skips random init: the converted tensors are assigned
        reference_model = timm.create_model(architecture, pretrained=False, num_classes=num_classes).eval()
    reference_model.load_state_dict(reference_state, assign=True)

    input_size = tuple(config['pretrained_cfg']['input_size'])
    if image_size is not None:
        input_size = (input_size[0], image_size, image_size)
    images = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, actual = reference_model(images), loaded(images)
    if expected.shape != actual.shape:
        problems.append(f'output shape {tuple(actual.shape)} differs from the reference {tuple(expected.shape)}')
        max_abs_diff = float('inf')
    else:
        max_abs_diff = (expected - actual).abs().max().item()
    if not torch.isfinite(actual).all():
        problems.append('the loaded model produces non-finite outputs')
    return VerifyReport(
        repo_dir=repo_dir,
        architecture=architecture,
        reference=str(reference_file),
        max_abs_diff=max_abs_diff,
        atol=atol,
        problems=tuple(problems),
    )
