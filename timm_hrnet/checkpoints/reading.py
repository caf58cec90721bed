"""One function turns any supported checkpoint into one typed value: `read_checkpoint`.

Path, URL (downloaded once into the cache, see `timm_hrnet.download`) or state dict in, a `Checkpoint` out: the
canonical tensors, the layout and task they came in, the task architecture read from them (once), the training-only
keys dropped and the class names an OpenMMLab checkpoint's meta carries. Model constructors, converters,
`hub_upload` and the CLI all take this value, so a file is read and worked out once.

Pose checkpoints trained for another heatmap codec (mmpose's UDP and DARK models: the same tensors as the plain
heatmap model, cropped and decoded differently) are recognised here, by file name or by the config in their meta,
and `Checkpoint.codec` says which (`timm_hrnet.tasks.pose_codecs` implements them).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..download import is_url, resolve_checkpoint
from .architecture import HRNETV2, TaskArchitecture, read_architecture
from .files import read_checkpoint_object, unwrap_state_dict
from .layouts import MMPOSE, POSE, SEGMENTATION, Layout, detect_layout, strip_training_wrapper, to_canonical_keys

__all__ = ['Checkpoint', 'read_checkpoint', 'CheckpointSource']

_logger = logging.getLogger(__name__)

CheckpointSource = str | os.PathLike | Mapping[str, Any]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint worked out: canonical tensors plus what is known about them.

    `unmapped` are source keys that no rename of the layout covers; they are kept under their own names in
    `state_dict`, so loading names them. `path` is the local file (a URL's cached download), None for a state dict.
    `codec` (pose) is the spec of the heatmap codec the file was trained with (`timm_hrnet.tasks.pose_codecs`):
    'dark' / 'udp...' with the blur kernel where its meta config states one, found from `codec_evidence`; without
    evidence, the rule of the code its layout comes from ('mmpose' or 'official').
    """

    state_dict: dict[str, Tensor]
    source: str
    layout: Layout
    architecture: TaskArchitecture | None = None
    dropped: tuple[str, ...] = ()
    unmapped: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None
    path: Path | None = None
    codec: str | None = None
    codec_evidence: str | None = None

    @property
    def task(self) -> str | None:
        return self.layout.task


def _meta(raw: Any) -> Mapping[str, Any]:
    meta = raw.get('meta') if isinstance(raw, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _meta_class_names(raw: Any) -> tuple[str, ...] | None:
    """Class names an OpenMMLab checkpoint keeps in its meta: meta.dataset_meta.classes (mmseg 1.x) or
    meta.CLASSES (mmseg 0.x, mmcv's save_checkpoint)."""
    meta = _meta(raw)
    dataset_meta = meta.get('dataset_meta')
    for classes in (dataset_meta.get('classes') if isinstance(dataset_meta, Mapping) else None, meta.get('CLASSES')):
        if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
            return tuple(classes)
    return None


# mmpose's file names: td-hm_hrnet-w32_udp-8xb64-..., hrnet_w32_coco_256x192_dark-07f147eb_20200812.pth
_CODEC_IN_NAME = re.compile(r'(?i)(?<![a-z])(udp|dark)(?![a-z])')
# mmpose 1.x configs: codec type='UDPHeatmap' / MSRAHeatmap(unbiased=True), blur_kernel_size (default 11); 0.x:
# use_udp=True, post_process='unbiased', modulate_kernel (config text, or a config dict's entries as `_texts` writes
# them); the first match wins
_CODEC_IN_CONFIG = (
    (re.compile(r"UDPHeatmap"), 'udp-mmpose1'),
    (re.compile(r"\buse_udp\s*=\s*True"), 'udp-mmpose0'),
    (re.compile(r"\bunbiased\s*=\s*True|\bpost_process\s*=\s*['\"]unbiased['\"]"), 'dark'),
)
_KERNEL_IN_CONFIG = re.compile(r"\b(?:blur_kernel_size|modulate_kernel)\s*=\s*(\d+)")
# UDP's combined targets (a heatmap and two offset maps per joint): mmpose's udp-regress files
_COMBINED = re.compile(r"(?i)udp-regress|CombinedTarget|heatmap_type\s*=\s*['\"]combined")


def _texts(value: Any) -> list[str]:
    """The strings of a (nested) meta value, and each mapping entry as `key=value` text, so a config kept as a dict
    reads like config text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        texts = []
        for key, item in value.items():
            texts.extend(_texts(item))
            if not isinstance(item, (Mapping, list, tuple)):
                texts.append(f'{key}={item!r}')
        return texts
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _texts(v)]
    return []


def _pose_codec(raw: Any, path: Path | None, source: str, layout: str,
                old_mmpose: bool, landmarks: bool) -> tuple[str, str | None]:
    """The codec spec a pose checkpoint was trained with and the evidence for it (None: only the layout speaks):
    the config in its meta (which also gives the blur kernel, mmpose's default 11 where it states none), else its
    file name (mmpose 0.x's layout then meaning mmpose 0.x's UDP); else the layout's rule (the official facial
    landmark files: `official-face`). UDP's combined targets are refused."""
    text = '\n'.join(_texts(_meta(raw)))
    name = path.name if path is not None else ''
    if _COMBINED.search(name) or _COMBINED.search(text):
        raise ValueError(f'{source} is a UDP checkpoint with combined targets (a heatmap and two offset maps per '
                         'joint, mmpose\'s udp-regress), which timm_hrnet does not decode')
    for pattern, codec in _CODEC_IN_CONFIG:
        if hit := pattern.search(text):
            kernel = _KERNEL_IN_CONFIG.search(text)
            return f'{codec}:{kernel.group(1) if kernel else 11}', f'its meta config has {hit.group(0)}'
    if match := _CODEC_IN_NAME.search(name):
        codec = match.group(1).lower()
        if codec == 'udp' and old_mmpose:
            return 'udp-mmpose0', f'its file name says {match.group(1)}, in mmpose 0.x\'s layout'
        return codec, f'its file name says {match.group(1)}'
    if layout == MMPOSE:
        return 'mmpose', None
    return ('official-face' if landmarks else 'official'), None


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
    architecture = codec = evidence = None
    if layout.task in (POSE, SEGMENTATION):
        architecture = read_architecture(canonical, layout.task, source, layout.name)
    if layout.task == POSE:
        old_mmpose = any(key.startswith('keypoint_head.') for key in state_dict)
        codec, evidence = _pose_codec(raw, path, source, layout.name, old_mmpose, architecture.head == HRNETV2)
    if dropped:
        _logger.info('%s: dropped training-only keys %s', source, ', '.join(dropped))
    return Checkpoint(canonical, source, layout, architecture, tuple(dropped), tuple(unmapped),
                      _meta_class_names(raw), path, codec, evidence)
