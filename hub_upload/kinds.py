"""The interface between the one staging / verification path and what differs between kinds of repo.

A kind (``hub_upload.classifier.CLASSIFIER``, ``hub_upload.task_repos.POSE`` / ``SEGMENTATION``) turns a read
source into a `Prepared` repo (weights, config.json writer, card, what to record) and, for verification, a repo
directory into a `Comparison` (the model as users load it next to a reference). ``hub_upload.stage`` writes,
verifies and moves into place; ``hub_upload.verify`` hashes, runs and compares. Neither knows a kind's details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from huggingface_hub import ModelCard
from torch import nn

from timm_hrnet.checkpoints import Checkpoint
from timm_hrnet.download import FetchedFile

from .report import VerifyReport
from .source import Source

__all__ = ['Comparison', 'Prepared', 'RepoKind', 'RepoOptions', 'float32_tensors']


@dataclass(frozen=True)
class Prepared:
    """A converted repo before anything is written: what `stage` writes, verifies with and records."""

    architecture: str  # config.json's; task repos: hrnet_pose / hrnet_seg
    num_outputs: int  # classes; pose: joints
    state_dict: dict[str, torch.Tensor]  # float32, contiguous
    layout: str  # the source's layout as the repo records it (model.safetensors' source_layout)
    write_config: Callable[[Path], None]
    card: Callable[[VerifyReport], ModelCard]  # built once verification passed; its sentence says how
    origin: str  # where config.json's preprocessing / input size / align_corners comes from
    converted_with: str
    verify_options: Mapping[str, Any]  # verify_dir's source and tolerance (atol or rtol)
    recorded: Mapping[str, str] = field(default_factory=dict)  # extra metadata and marker entries (task)


@dataclass(frozen=True)
class Comparison:
    """A repo as users load it and the reference it must reproduce, as a kind builds them for `verify_dir`."""

    loaded: nn.Module | None  # None when ``failure`` stopped the check
    reference: nn.Module | None
    reference_text: str  # the code that computes the reference outputs
    independent: bool
    input_size: tuple[int, int, int]  # (C, H, W) of the verification images
    problems: tuple[str, ...] = ()
    failure: str | None = None  # the source does not load into the reference: a failed verification


class RepoKind(Protocol):
    """What differs between classifier, pose and segmentation repos; everything else is shared."""

    name: str  # names.TASKS
    description: str  # in messages: 'a classifier repo', 'a pose repo'
    tolerance: str  # 'atol' or 'rtol'
    sources: tuple[str, ...]  # the --source values a repo of this kind accepts

    def prepare(self, source: Source, options: Any, repo_id: str, log: Callable[[str], None]) -> Prepared:
        """The repo of ``source``; a ValueError in one line for what cannot be converted or stated."""

    def comparison(self, repo_dir: Path, config: dict[str, Any], against: FetchedFile | None,
                   source: str) -> Comparison:
        """The staged repo's model and its reference (``against`` read by its own path, or the repo's own weights)."""


class RepoOptions(Protocol):
    """What a caller states about one conversion; it names the kind that converts the checkpoint."""

    def kind_for(self, checkpoint: Checkpoint) -> RepoKind:
        """The kind for ``checkpoint``, or a ValueError saying what the checkpoint is instead."""


def float32_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What model.safetensors holds: float tensors as float32, every tensor contiguous (safetensors needs it)."""
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
