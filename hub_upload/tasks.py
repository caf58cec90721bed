"""The pose / segmentation entry points by their earlier names, as thin calls of the one path: ``stage.convert``
with ``task_repos.TaskOptions`` and ``verify.verify_dir`` (the kinds themselves are ``hub_upload.task_repos``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch

from timm_hrnet.checkpoints import read_checkpoint
from timm_hrnet.download import FetchedFile

from .model_card import TaskFacts
from .report import VerifyReport
from .source import Source
from .stage import StageResult, convert, stderr_log
from .task_repos import TaskOptions, task_repo_config
from .verify import DEFAULT_TOLERANCE, verify_dir

__all__ = ['TaskVerifyReport', 'convert_task_to_dir', 'detect_task', 'task_repo_config', 'verify_task_dir']

TaskVerifyReport = VerifyReport  # one report for every kind of repo


def detect_task(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """'pose', 'segmentation' or 'classification' from a checkpoint's keys; None when they show none of them."""
    try:
        return read_checkpoint(state_dict).task
    except ValueError:
        return None


def convert_task_to_dir(
        src: Source | FetchedFile | str | os.PathLike,
        out_dir: str | os.PathLike,
        task: str | None = None,
        force: bool = False,
        repo_id: str | None = None,
        facts: TaskFacts | None = None,
        input_size: tuple[int, int] | None = None,
        align_corners: bool | None = None,
        num_outputs: int | None = None,
        rtol: float = DEFAULT_TOLERANCE,
        verify_image_size: int | None = None,
        log: Callable[[str], None] = stderr_log,
        source: str = 'auto',
) -> StageResult:
    """`convert` of a pose or segmentation checkpoint (see ``task_repos.TaskOptions``)."""
    options = TaskOptions(task, source, facts, input_size, align_corners, num_outputs, rtol)
    return convert(src, out_dir, options, force=force, repo_id=repo_id, verify_image_size=verify_image_size, log=log)


def verify_task_dir(
        repo_dir: str | os.PathLike,
        against: FetchedFile | str | os.PathLike | None = None,
        rtol: float = DEFAULT_TOLERANCE,
        batch_size: int = 2,
        image_size: int | None = None,
        seed: int = 0,
) -> VerifyReport:
    """`verify_dir` of a pose or segmentation repo."""
    return verify_dir(repo_dir, against, rtol=rtol, batch_size=batch_size, image_size=image_size, seed=seed)
