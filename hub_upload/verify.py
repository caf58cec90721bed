"""Check a staged repo directory: load it the way users will (``local-dir:``) and compare it with its source checkpoint
run through code that did not produce it (``hub_upload.reference``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
import timm
import torch
from huggingface_hub import constants

from timm_hrnet.convert import detect_layout, resolve_layout
from timm_hrnet.download import FetchedFile, resolve_checkpoint

from .names import TASK_ARCHITECTURES, TASK_SOURCES
from .push import read_weights_metadata
from .reference import (
    Reference,
    ReferenceLoadError,
    build_reference,
    builtin_reference_for_weights,
    read_source_state_dict,
)

if TYPE_CHECKING:
    from .tasks import TaskVerifyReport

__all__ = ['WEIGHTS_NAME', 'VerifyReport', 'read_weights_metadata', 'verify_dir']

WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE
DEFAULT_TOLERANCE = 1e-4  # on logits (classifiers: absolute; pose / segmentation repos: relative max difference)


@dataclass(frozen=True)
class VerifyReport:
    repo_dir: Path
    architecture: str
    against: str  # what the repo was compared with: the source checkpoint, or its own weights
    reference: str  # the code that computed the reference outputs
    independent: bool  # False: the reference came from the converter that wrote the repo (self-consistency only)
    max_abs_diff: float
    atol: float
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and self.max_abs_diff <= self.atol

    def summary(self) -> str:
        """One line: verdict, what was compared through what, the difference and any problems."""
        verdict = 'OK' if self.ok else 'FAILED'
        scope = '' if self.independent else ' (self-consistency only)'
        line = (f'verify {verdict}{scope}: {self.repo_dir} ({self.architecture}) vs {self.against} through '
                f'{self.reference}: max abs diff {self.max_abs_diff:.3g} (tolerance {self.atol:g})')
        return '; '.join([line, *self.problems])


def _require_fields(config: dict, path: Path) -> None:
    """A config.json that timm could not build from is named with the field it lacks, instead of a bare KeyError."""
    if not isinstance(config.get('architecture'), str):
        raise ValueError(f"'{path}' has no 'architecture' field; it is not a timm config.json")
    if 'input_size' not in (config.get('pretrained_cfg') or {}):
        raise ValueError(f"'{path}' has no 'pretrained_cfg.input_size' field; it is not a timm config.json")


def _own_weights_reference(repo_dir: Path, architecture: str) -> Reference:
    weights = safetensors.torch.load_file(repo_dir / WEIGHTS_NAME)
    reference = builtin_reference_for_weights(weights, architecture)
    if reference is None:
        raise ValueError(f'timm has no built-in {architecture} to check {repo_dir} against; pass --against SOURCE')
    return reference


def verify_dir(
        repo_dir: str | os.PathLike,
        against: FetchedFile | str | os.PathLike | None = None,
        source: str = 'auto',
        atol: float | None = None,
        batch_size: int = 2,
        image_size: int | None = None,
        seed: int = 0,
        rtol: float | None = None,
) -> VerifyReport | TaskVerifyReport:
    """Compare logits of ``timm.create_model('local-dir:DIR')`` with the source run through independent code.

    ``against`` is the source checkpoint (a path, or a `FetchedFile` already fetched and hashed); its sha256 must be the
    one the repo records. Without it, the repo's own weights go through timm's built-in HRNet, which checks that
    config.json builds the right architecture and that every tensor loads, but not the conversion. ``image_size``
    (default: the config's input size) trades coverage for speed on slow machines. ``atol`` (default 1e-4) is the
    tolerance on classifier logits. Pose and segmentation repos (config.json's ``task``) go to
    ``tasks.verify_task_dir``, with ``rtol`` (default 1e-4) on the relative max difference.
    """
    repo_dir = Path(repo_dir)
    for required in (WEIGHTS_NAME, 'config.json'):
        if not (repo_dir / required).is_file():
            raise FileNotFoundError(f"'{repo_dir}' is not a staged repo: {required} is missing")
    config = json.loads((repo_dir / 'config.json').read_text(encoding='utf-8'))
    if isinstance(config, dict) and config.get('task') in TASK_ARCHITECTURES:
        from .tasks import verify_task_dir  # imports the task models only for task repos

        if atol is not None:
            raise ValueError(f"--atol applies to classifier repos; '{repo_dir}' is a {config['task']} repo, compared "
                             'by relative max difference: --rtol')
        if source not in TASK_SOURCES:
            raise ValueError(f"--source {source}: '{repo_dir}' is a {config['task']} repo, whose sources come in the "
                             'official layout only')
        return verify_task_dir(repo_dir, against, rtol=DEFAULT_TOLERANCE if rtol is None else rtol,
                               batch_size=batch_size, image_size=image_size, seed=seed)
    if rtol is not None:
        raise ValueError(f"--rtol applies to pose and segmentation repos; '{repo_dir}' is a classifier repo: --atol")
    atol = DEFAULT_TOLERANCE if atol is None else atol
    _require_fields(config, repo_dir / 'config.json')
    architecture = config['architecture']
    recorded = read_weights_metadata(repo_dir / WEIGHTS_NAME).get('source_sha256')
    problems = []

    if against is None:
        description = 'its own weights'
        reference = _own_weights_reference(repo_dir, architecture)
    else:
        if not isinstance(against, FetchedFile):
            against = resolve_checkpoint(against)
        description = str(against.url or against.path)
        if recorded and recorded != against.sha256:
            problems.append(f'{against.path.name} has sha256 {against.sha256}, the repo records {recorded}')
        state_dict = read_source_state_dict(against.path)
        layout = detect_layout(state_dict) if source == 'auto' else resolve_layout(source)
        try:
            reference = build_reference(state_dict, architecture, layout)
        except ReferenceLoadError as e:
            return VerifyReport(repo_dir, architecture, description, 'an independent reference', True, float('inf'),
                                atol, (*problems, str(e)))

    loaded = timm.create_model(f'local-dir:{repo_dir}', pretrained=True).eval()
    input_size = tuple(config['pretrained_cfg']['input_size'])
    if image_size is not None:
        input_size = (input_size[0], image_size, image_size)
    images = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, actual = reference.model(images).float(), loaded(images)
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
        against=description,
        reference=reference.description,
        independent=reference.independent,
        max_abs_diff=max_abs_diff,
        atol=atol,
        problems=tuple(problems),
    )
