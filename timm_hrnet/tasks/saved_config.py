"""The config.json saved beside a task model's weights, read back: the one reader of it.

Weights alone do not say a pose model's input size, keypoint set and heatmap codec, nor a segmentation model's
`align_corners`, label set and how its exchange units resize (mmseg's two steps, `HRNetSpec.upsample_by_stride`).
`train_pose` / `train_seg` write them into the `config.json` beside `model.safetensors` (the field `weights` names
that file), and a repo `hub_upload convert` staged carries the same fields (its config.json describes its
`model.safetensors`; its spec is `hrnet_spec`, a run's `architecture`). `create_pose_model`, `create_seg_model`,
`load_pose_model`, `load_seg_model`, fine-tuning and `hub_upload` read them here, so that none of them drops what
the weights' maker knew.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from ..checkpoints import POSE, SEGMENTATION
from .datasets import KEYPOINT_SETS, SEG_DATASETS, KeypointInfo, SegDatasetInfo, generic_palette, keypoints_from_json
from .pose_codecs import parse_codec

__all__ = ['WEIGHTS_FILE', 'CONFIG_FILE', 'ModelConfig', 'model_weights', 'config_beside', 'read_model_config',
           'label_fields']

WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
_OUTPUTS = {POSE: ('num_joints', 'joints'), SEGMENTATION: ('num_classes', 'classes')}


@dataclass(frozen=True)
class ModelConfig:
    """What a config.json states about the weights it describes: the task; a pose model's input (height, width),
    keypoint set (None: the built-in set of its joint count) and heatmap codec spec; a segmentation model's
    `align_corners`, label set (None: generic names) and `upsample_by_stride`; None where it states nothing. Whether
    a training run wrote it: `from_training`."""

    path: Path
    weights: Path
    task: str
    data: Mapping[str, Any]
    input_size: tuple[int, int] | None = None
    keypoints: KeypointInfo | None = None
    codec: str | None = None
    align_corners: bool | None = None
    labels: SegDatasetInfo | None = None
    upsample_by_stride: bool | None = None

    @property
    def from_training(self) -> bool:
        return 'trained_on' in self.data


def model_weights(path: str | PathLike) -> Path:
    """The weights a path stands for: a folder's model file (the one its config.json names, else
    model.safetensors), or the path itself."""
    path = Path(path)
    if not path.is_dir():
        return path
    name = WEIGHTS_FILE
    config = path / CONFIG_FILE
    if config.is_file():
        data = _read_json(config)
        if isinstance(data, dict) and isinstance(data.get('weights'), str) and data['weights'] == Path(
                data['weights']).name:  # a file of the folder, not a path elsewhere
            name = data['weights']
    weights = path / name
    if not weights.is_file():
        raise FileNotFoundError(f'{path} is a folder without {name}: pass a weights file, or the output folder of '
                                'a training run (model.safetensors with config.json)')
    return weights


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f'cannot read {path}: {error}') from error


def _size(value: Any, length: int, where: str) -> tuple[int, ...]:
    if not (isinstance(value, list) and len(value) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f'{where} must be a list of {length} positive integers, got {value!r}')
    return tuple(value)


def _pose_fields(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Input size (`input_size_hw`, else `input_size` [C, H, W]), keypoint set (`keypoint_set`, else the built-in
    set `keypoints` names) and heatmap codec (`codec`) of a pose config; a set with another joint count is an error."""
    size = None
    if data.get('input_size_hw') is not None:
        size = _size(data['input_size_hw'], 2, f'{where}: input_size_hw')
    if data.get('input_size') is not None:
        full = _size(data['input_size'], 3, f'{where}: input_size')[1:]
        if size is not None and size != full:
            raise ValueError(f'{where}: input_size_hw {list(size)} and input_size {list(full)} disagree')
        size = full
    joints = data.get('num_joints') if isinstance(data.get('num_joints'), int) else None
    if data.get('keypoint_set') is not None:
        if not isinstance(data['keypoint_set'], Mapping):
            raise ValueError(f'{where}: keypoint_set must be a mapping with "keypoints" names')
        keypoints = keypoints_from_json(data['keypoint_set'], where)
        if joints is not None and keypoints.num_joints != joints:
            raise ValueError(f'{where}: the keypoint set {keypoints.name!r} has {keypoints.num_joints} joints, the '
                             f'model {joints}')
    else:
        keypoints = KEYPOINT_SETS.get(data['keypoints']) if isinstance(data.get('keypoints'), str) else None
        if keypoints is not None and joints is not None and keypoints.num_joints != joints:
            keypoints = None  # a name only, of no built-in set of this size
    codec = data.get('codec')
    if codec is not None:
        codec = parse_codec(codec, f'{where}: codec').spec
    return dict(input_size=(size[0], size[1]) if size else None, keypoints=keypoints, codec=codec)


def _seg_labels(data: Mapping[str, Any], align_corners: bool, where: str) -> SegDatasetInfo | None:
    """The label set of a segmentation config: its class names with its palette and class flip pairs, those of
    the built-in dataset it names, or generic colours; None when it states neither a dataset nor a palette."""
    name, palette = data.get('dataset'), data.get('palette')
    if name is None and palette is None:
        return None
    names = data.get('class_names')
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f'{where}: class_names must be a list of names, got {names!r}')
    count = len(names)
    if isinstance(data.get('num_classes'), int) and data['num_classes'] != count:
        raise ValueError(f'{where}: {count} class names for {data["num_classes"]} classes')
    known = SEG_DATASETS.get(name) if isinstance(name, str) else None
    flips = data.get('flip_pairs')
    if known is not None and palette is None and flips is None:
        # a released dataset by name; with other class names the file contradicts itself, which the model built
        # from the weights (the released dataset of its class count) then shows
        return known if known.class_names == tuple(names) else None
    if known is not None and known.class_names != tuple(names):
        known = None
    if palette is None:
        colours = known.palette if known is not None else generic_palette(count)
    elif not (isinstance(palette, list) and len(palette) == count and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette)):
        raise ValueError(f'{where}: palette must be {count} [r, g, b] colours of 0-255, got {palette!r}')
    else:
        colours = tuple((c[0], c[1], c[2]) for c in palette)
    if flips is None:
        pairs = known.flip_pairs if known is not None else ()
    elif not (isinstance(flips, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(k, int) and 0 <= k < count for k in p)
            for p in flips)):
        raise ValueError(f'{where}: flip_pairs must be [a, b] class pairs in [0, {count}), got {flips!r}')
    else:
        pairs = tuple((p[0], p[1]) for p in flips)
    return SegDatasetInfo(name if isinstance(name, str) else 'custom', tuple(names), colours, align_corners, pairs)


def _upsample_by_stride(data: Mapping[str, Any], where: str) -> bool | None:
    """Whether the spec the config records (a repo's `hrnet_spec`, a run's `architecture`) resizes in mmseg's two
    steps; None when it records no spec."""
    spec = data.get('hrnet_spec', data.get('architecture'))
    if not isinstance(spec, Mapping) or 'upsample_by_stride' not in spec:
        return None
    value = spec['upsample_by_stride']
    if not isinstance(value, bool):
        raise ValueError(f'{where}: upsample_by_stride must be true or false, got {value!r}')
    return value


def _parse(data: Mapping[str, Any], path: Path, weights: Path, num_outputs: int | None) -> ModelConfig:
    where = str(path)
    task = data['task']
    key, unit = _OUTPUTS[task]
    if num_outputs is not None and data.get(key, num_outputs) != num_outputs:
        raise ValueError(f'{where} describes {data[key]} {unit}, {weights} has {num_outputs}')
    if task == POSE:
        return ModelConfig(path, weights, task, data, **_pose_fields(data, where))
    align = data.get('align_corners')
    if not isinstance(align, bool):
        raise ValueError(f'{where}: align_corners must be true or false, got {align!r}')
    return ModelConfig(path, weights, task, data, align_corners=align, labels=_seg_labels(data, align, where),
                       upsample_by_stride=_upsample_by_stride(data, where))


def config_beside(weights: str | PathLike | None, task: str | None = None,
                  num_outputs: int | None = None) -> ModelConfig | None:
    """The config.json beside a weights file that describes it: a pose or segmentation config (of `task`, when
    given) whose `weights` names the file (a repo's config.json, without that field, describes its
    model.safetensors). None when there is none: another program's config.json, or one that is no JSON, is not
    ours. Ours with a bad field, or stating another joint / class count than the weights' `num_outputs`, is a
    ValueError naming it."""
    if weights is None:
        return None
    weights = Path(weights)
    path = weights.parent / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
    except ValueError:
        return None
    tasks = (task,) if task else (POSE, SEGMENTATION)
    if not isinstance(data, dict) or data.get('task') not in tasks:
        return None
    if data.get('weights', WEIGHTS_FILE) != weights.name:
        return None
    return _parse(data, path, weights, num_outputs)


def read_model_config(path: str | PathLike, task: str | None = None) -> ModelConfig:
    """The config of a trained model: its output folder (or a staged repo), or its weights file with config.json
    beside it; `task` ('pose' / 'segmentation') when only that task will do."""
    weights = model_weights(path)
    if not weights.is_file():
        raise FileNotFoundError(f'weights not found: {weights}')
    config = config_beside(weights)
    if config is None:
        raise ValueError(f'{os.fspath(path)}: no config.json describing {weights.name} beside it (train_pose / '
                         'train_seg write one with the weights)')
    if task is not None and config.task != task:
        raise ValueError(f'{config.path} describes a {config.task} model, not a {task} model')
    return config


def label_fields(keypoints: KeypointInfo | None, labels: SegDatasetInfo | None,
                 num_outputs: int) -> dict[str, Any]:
    """What a config.json must spell out about a label set beyond its name and class names, so that reading it
    back rebuilds the same set: a keypoint set that is no built-in one (`keypoint_set`: names, flip pairs,
    skeleton, OKS sigmas, upper body), a segmentation palette other than the generic colours and class flip pairs
    (a built-in dataset's come with its name)."""
    fields: dict[str, Any] = {}
    if keypoints is not None and KEYPOINT_SETS.get(keypoints.name) != keypoints:
        fields['keypoint_set'] = keypoints.to_json()
    known = SEG_DATASETS.get(labels.name) if labels is not None else None
    if labels is not None and (known is None or (known.class_names, known.palette, known.flip_pairs)
                               != (labels.class_names, labels.palette, labels.flip_pairs)):
        if tuple(labels.palette) != generic_palette(num_outputs):
            fields['palette'] = [list(c) for c in labels.palette]
        if labels.flip_pairs:
            fields['flip_pairs'] = [list(p) for p in labels.flip_pairs]
    return fields
