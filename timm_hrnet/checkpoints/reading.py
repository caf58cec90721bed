"""One function turns any supported checkpoint into one typed value: `read_checkpoint`.

Path, URL (downloaded once into the cache, see `timm_hrnet.download`) or state dict in, a `Checkpoint` out: the
canonical tensors, the layout and task they came in, the task architecture read from them (once), the training-only
keys dropped and the class names an OpenMMLab checkpoint's meta carries. Model constructors, converters,
`hub_upload` and the CLI all take this value, so a file is read and worked out once.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..download import is_url, resolve_checkpoint
from .architecture import TaskArchitecture, read_architecture
from .files import read_checkpoint_object, unwrap_state_dict
from .layouts import POSE, SEGMENTATION, Layout, detect_layout, strip_training_wrapper, to_canonical_keys

__all__ = ['Checkpoint', 'read_checkpoint', 'CheckpointSource']

_logger = logging.getLogger(__name__)

CheckpointSource = str | os.PathLike | Mapping[str, Any]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint worked out: canonical tensors plus what is known about them.

    `unmapped` are source keys that no rename of the layout covers; they are kept under their own names in
    `state_dict`, so loading names them. `path` is the local file (a URL's cached download), None for a state dict.
    """

    state_dict: dict[str, Tensor]
    source: str
    layout: Layout
    architecture: TaskArchitecture | None = None
    dropped: tuple[str, ...] = ()
    unmapped: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None
    path: Path | None = None

    @property
    def task(self) -> str | None:
        return self.layout.task


def _meta_class_names(raw: Any) -> tuple[str, ...] | None:
    """Class names an OpenMMLab checkpoint keeps in meta.dataset_meta.classes (mmseg 1.x writes them)."""
    meta = raw.get('meta') if isinstance(raw, Mapping) else None
    dataset_meta = meta.get('dataset_meta') if isinstance(meta, Mapping) else None
    classes = dataset_meta.get('classes') if isinstance(dataset_meta, Mapping) else None
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    return None


def read_checkpoint(checkpoint: CheckpointSource | Checkpoint, *, allow_http: bool = False) -> Checkpoint:
    """Read and work out a checkpoint of any supported layout and task (a `Checkpoint` is returned as it is).

    Raises ValueError for unreadable files, unknown layouts and task checkpoints whose tensors do not form an
    HRNet, FileNotFoundError for missing files.
    """
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    path = None
    if isinstance(checkpoint, (str, os.PathLike)):
        path = resolve_checkpoint(checkpoint, allow_http=allow_http).path if is_url(checkpoint) else Path(checkpoint)
        source = f"'{checkpoint}'"
        raw = read_checkpoint_object(path)
    else:
        source, raw = 'state dict', checkpoint
    state_dict, dropped = strip_training_wrapper(unwrap_state_dict(raw, source))
    layout = detect_layout(state_dict, source)
    canonical, unmapped = to_canonical_keys(state_dict, layout.name)
    canonical.update({key: state_dict[key] for key in unmapped})
    architecture = None
    if layout.task in (POSE, SEGMENTATION):
        architecture = read_architecture(canonical, layout.task, source, layout.name)
    if dropped:
        _logger.info('%s: dropped training-only keys %s', source, ', '.join(dropped))
    return Checkpoint(canonical, source, layout, architecture, tuple(dropped), tuple(unmapped),
                      _meta_class_names(raw), path)
