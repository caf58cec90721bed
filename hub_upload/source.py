"""A source checkpoint read once: the file as fetched and hashed, what timm_hrnet's one reader made of it, and the
config.json a training run (``timm-hrnet train-pose`` / ``train-seg``) wrote beside it.

The CLI, batch and the converters pass this value on, so that the file is read, and a task checkpoint's
architecture worked out, once per conversion. Verification reads the source again on purpose, by its own path: it
must not trust what the conversion read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from timm_hrnet.checkpoints import POSE, SEGMENTATION, Checkpoint, read_checkpoint
from timm_hrnet.download import FetchedFile, is_url, resolve_checkpoint
from timm_hrnet.tasks.saved_config import ModelConfig, config_beside, model_weights

__all__ = ['Source', 'checkpoint_argument', 'fetched_file', 'read_source']


@dataclass(frozen=True)
class Source:
    fetched: FetchedFile
    checkpoint: Checkpoint
    exported: ModelConfig | None = None  # the config.json beside a local file that describes it (a training run's)

    @property
    def path(self) -> Path:
        return self.fetched.path


def checkpoint_argument(src: str | os.PathLike) -> str | os.PathLike:
    """A checkpoint argument with a training run's output folder standing for its weights file (model.safetensors,
    with config.json beside it); URLs and files as given."""
    if is_url(src) or not Path(src).is_dir():
        return src
    return model_weights(src)


def fetched_file(src: Source | FetchedFile | str | os.PathLike) -> FetchedFile:
    """The local, hashed file behind ``src`` (a local path is hashed here; URLs are fetched by the caller)."""
    if isinstance(src, Source):
        return src.fetched
    return src if isinstance(src, FetchedFile) else resolve_checkpoint(checkpoint_argument(src))


def read_source(src: Source | FetchedFile | str | os.PathLike) -> Source:
    """``src`` read by ``timm_hrnet.checkpoints.read_checkpoint``, unless it already was (a `Source`), with the
    config.json beside a local task checkpoint that describes it (none for downloads and classifiers)."""
    if isinstance(src, Source):
        return src
    fetched = fetched_file(src)
    checkpoint = read_checkpoint(fetched.path)
    exported = None
    if fetched.url is None and checkpoint.task in (POSE, SEGMENTATION):
        exported = config_beside(fetched.path)
    return Source(fetched, checkpoint, exported)
