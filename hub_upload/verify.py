"""Check a staged repo directory: load it the way users will and compare it on fixed random images with its source
checkpoint, read again here by its own path (never what the conversion read) and run through the most independent
code available. The kind of repo (config.json's ``task``) decides how the models are built (``hub_upload.kinds``);
the hash check, the comparison and the report are the same for all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from timm_hrnet.download import FetchedFile, resolve_checkpoint

from .classifier import CLASSIFIER
from .kinds import Comparison, RepoKind
from .names import CONFIG_NAME, WEIGHTS_NAME
from .push import read_weights_metadata
from .report import VerifyReport
from .source import checkpoint_argument
from .task_repos import TASK_KINDS

__all__ = ['DEFAULT_TOLERANCE', 'WEIGHTS_NAME', 'VerifyReport', 'kind_of_repo', 'read_weights_metadata', 'verify_dir']

DEFAULT_TOLERANCE = 1e-4  # on logits (classifiers: absolute; pose / segmentation repos: relative max difference)
_APPLIES_TO = {'atol': 'classifier repos', 'rtol': 'pose and segmentation repos'}
_MEASURE = {'atol': 'max abs difference', 'rtol': 'relative max difference'}


def kind_of_repo(config: Any, path: Path) -> RepoKind:
    """A task repo by its config.json's ``task``; anything else is a classifier (timm's config.json)."""
    if not isinstance(config, dict):
        raise ValueError(f"'{path}' is not a JSON object; it is not a repo's config.json")
    return TASK_KINDS.get(config.get('task'), CLASSIFIER)


def _tolerance(kind: RepoKind, repo_dir: Path, atol: float | None, rtol: float | None) -> dict[str, float]:
    """The kind's tolerance (default 1e-4); the other kind's, given, is an error rather than ignored."""
    given = {'atol': atol, 'rtol': rtol}
    other = 'rtol' if kind.tolerance == 'atol' else 'atol'
    if given[other] is not None:
        raise ValueError(f"--{other} applies to {_APPLIES_TO[other]}; '{repo_dir}' is {kind.description} repo, "
                         f'compared by {_MEASURE[kind.tolerance]}: --{kind.tolerance}')
    value = given[kind.tolerance]
    return {kind.tolerance: DEFAULT_TOLERANCE if value is None else value}


def _source_problems(repo_dir: Path, against: FetchedFile | None) -> list[str]:
    """The source must be the file the repo records, by sha256."""
    if against is None:
        return []
    recorded = read_weights_metadata(repo_dir / WEIGHTS_NAME).get('source_sha256')
    if recorded and recorded != against.sha256:
        return [f'{against.path.name} has sha256 {against.sha256}, the repo records {recorded}']
    return []


def _differences(comparison: Comparison, images: torch.Tensor) -> tuple[float, float, list[str]]:
    """Max absolute and relative max difference of the repo's outputs from the reference's, and what is wrong."""
    with torch.no_grad():
        expected, actual = comparison.reference(images).float(), comparison.loaded(images).float()
    problems = []
    if expected.shape != actual.shape:
        problems.append(f'output shape {tuple(actual.shape)} differs from the reference {tuple(expected.shape)}')
        max_abs_diff = relative_diff = float('inf')
    else:
        max_abs_diff = (expected - actual).abs().max().item()
        relative_diff = max_abs_diff / max(expected.abs().max().item(), torch.finfo(torch.float32).tiny)
    if not torch.isfinite(actual).all():
        problems.append("the repo's model produces non-finite outputs")
    return max_abs_diff, relative_diff, problems


def verify_dir(
        repo_dir: str | os.PathLike,
        against: FetchedFile | str | os.PathLike | None = None,
        source: str = 'auto',
        atol: float | None = None,
        batch_size: int = 2,
        image_size: int | None = None,
        seed: int = 0,
        rtol: float | None = None,
) -> VerifyReport:
    """Compare the outputs of the repo as users load it with the source's through independent code.

    ``against`` is the source checkpoint (a path, or a `FetchedFile` already fetched and hashed); its sha256 must be the
    one the repo records. Without it, the repo's own weights are the reference (classifiers: through timm's built-in
    HRNet, which checks that config.json builds the right architecture and that every tensor loads, but not the
    conversion). ``source`` is the layout of ``against`` (auto: detected). ``image_size`` (N: N x N; default: the
    config's input size, 256x200 for segmentation) trades coverage for speed. Classifier repos are held to ``atol`` on
    logits, pose and segmentation repos to ``rtol`` on the relative max difference (both default 1e-4).
    """
    repo_dir = Path(repo_dir)
    for required in (WEIGHTS_NAME, CONFIG_NAME):
        if not (repo_dir / required).is_file():
            raise FileNotFoundError(f"'{repo_dir}' is not a staged repo: {required} is missing")
    config = json.loads((repo_dir / CONFIG_NAME).read_text(encoding='utf-8'))
    kind = kind_of_repo(config, repo_dir / CONFIG_NAME)
    tolerance = _tolerance(kind, repo_dir, atol, rtol)
    if source not in kind.sources:
        raise ValueError(f"--source {source}: '{repo_dir}' is {kind.description} repo, whose sources come in the "
                         f"{' or '.join(kind.sources[1:])} layout")
    if against is not None and not isinstance(against, FetchedFile):
        against = resolve_checkpoint(checkpoint_argument(against))
    description = 'its own weights' if against is None else str(against.url or against.path)
    problems = _source_problems(repo_dir, against)
    comparison = kind.comparison(repo_dir, config, against, source)
    architecture = str(config.get('architecture'))
    problems += comparison.problems
    if comparison.failure is not None:
        return VerifyReport(repo_dir, architecture, description, comparison.reference_text, comparison.independent,
                            float('inf'), relative_diff=float('inf'), problems=(*problems, comparison.failure),
                            **tolerance)
    channels, height, width = comparison.input_size
    if image_size is not None:
        height = width = image_size
    images = torch.randn(batch_size, channels, height, width, generator=torch.Generator().manual_seed(seed))
    max_abs_diff, relative_diff, found = _differences(comparison, images)
    return VerifyReport(repo_dir, architecture, description, comparison.reference_text, comparison.independent,
                        max_abs_diff, relative_diff=relative_diff, problems=(*problems, *found), **tolerance)
