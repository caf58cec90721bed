"""The keypoint set a pose model is trained on: names, flip pairs and skeleton (a `KeypointInfo`), plus what only
training and evaluation need: the OKS sigmas and the upper-body joints of the half-body augmentation.

A set comes from the COCO categories of the annotation file (`keypoints` names, 1-based `skeleton`), from a small
JSON or YAML file, or from the built-in COCO / MPII sets by joint count.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

from ..datasets import COCO_KEYPOINTS, MPII_KEYPOINTS, KeypointInfo
from ..pose_evaluation import COCO_KEYPOINT_SIGMAS

__all__ = ['TrainKeypoints', 'COCO_TRAIN_KEYPOINTS', 'MPII_TRAIN_KEYPOINTS', 'read_keypoint_file',
           'keypoints_from_json', 'keypoints_from_category', 'resolve_keypoints']


@dataclass(frozen=True)
class TrainKeypoints:
    """A `KeypointInfo` with OKS sigmas (None: unknown, evaluation refuses) and the upper-body joints (empty: no
    half-body augmentation; the lower body is every other joint)."""

    info: KeypointInfo
    sigmas: tuple[float, ...] | None = None
    upper_body: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        joints = self.info.num_joints
        if self.sigmas is not None and (len(self.sigmas) != joints or min(self.sigmas) <= 0):
            raise ValueError(f'{self.info.name}: need {joints} positive OKS sigmas, got {list(self.sigmas)}')
        pairs = [j for pair in self.info.flip_pairs for j in pair] + [j for limb in self.info.skeleton for j in limb]
        if any(not 0 <= j < joints for j in [*pairs, *self.upper_body]):
            raise ValueError(f'{self.info.name}: joint indices must be in [0, {joints}); flip pairs '
                             f'{self.info.flip_pairs}, skeleton {self.info.skeleton}, upper body {self.upper_body}')
        flipped = [j for pair in self.info.flip_pairs for j in pair]
        if len(flipped) != len(set(flipped)) or any(a == b for a, b in self.info.flip_pairs):
            raise ValueError(f'{self.info.name}: each joint may be in one flip pair, with another joint; got '
                             f'{self.info.flip_pairs}')

    @property
    def num_joints(self) -> int:
        return self.info.num_joints

    @property
    def lower_body(self) -> tuple[int, ...]:
        return tuple(j for j in range(self.num_joints) if j not in self.upper_body) if self.upper_body else ()

    def to_json(self) -> dict[str, Any]:
        """The file format `read_keypoint_file` reads (names, pairs by index)."""
        return dict(name=self.info.name, keypoints=list(self.info.keypoint_names),
                    flip_pairs=[list(p) for p in self.info.flip_pairs], skeleton=[list(s) for s in self.info.skeleton],
                    sigmas=None if self.sigmas is None else list(self.sigmas), upper_body=list(self.upper_body))


COCO_TRAIN_KEYPOINTS = TrainKeypoints(COCO_KEYPOINTS, COCO_KEYPOINT_SIGMAS, tuple(range(11)))  # official upper_body_ids
# MPII is evaluated by PCKh, so it has no OKS sigmas; upper body as the official mpii.py
MPII_TRAIN_KEYPOINTS = TrainKeypoints(MPII_KEYPOINTS, None, (7, 8, 9, 10, 11, 12, 13, 14, 15))


def _index(value: Any, names: Sequence[str], where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f'{where}: {value!r} is not a joint')
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value in names:
        return names.index(value)
    raise ValueError(f'{where}: {value!r} is not a joint index or one of the names {list(names)}')


def _pairs(values: Any, names: Sequence[str], where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(values, list) or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in values):
        raise ValueError(f'{where} must be a list of [a, b] pairs (indices or names), got {values!r}')
    return tuple((_index(a, names, where), _index(b, names, where)) for a, b in values)


_SIDE = re.compile(r'(?i)(left|right)')


def _flip_pairs_from_names(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Pairs of names that differ only by left <-> right (e.g. left_eye / right_eye)."""
    swap = {'left': 'right', 'right': 'left', 'Left': 'Right', 'Right': 'Left', 'LEFT': 'RIGHT', 'RIGHT': 'LEFT'}
    pairs = []
    for a, name in enumerate(names):
        if _SIDE.search(name) is None:
            continue
        twin = _SIDE.sub(lambda m: swap.get(m.group(0), m.group(0)), name)
        if twin in names and names.index(twin) > a:
            pairs.append((a, names.index(twin)))
    return tuple(pairs)


def keypoints_from_json(data: Mapping[str, Any], source: str = 'keypoint set') -> TrainKeypoints:
    """A keypoint set from its mapping (`read_keypoint_file`'s format, `TrainKeypoints.to_json`'s output)."""
    names = data.get('keypoints')
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f'{source}: "keypoints" must be a list of joint names')
    flip = data.get('flip_pairs')
    info = KeypointInfo(
        name=str(data.get('name', Path(source).stem)),
        keypoint_names=tuple(names),
        flip_pairs=_flip_pairs_from_names(names) if flip is None else _pairs(flip, names, f'{source}: flip_pairs'),
        skeleton=_pairs(data.get('skeleton') or [], names, f'{source}: skeleton'),
    )
    sigmas = data.get('sigmas')
    if sigmas is not None and (not isinstance(sigmas, list) or not all(isinstance(s, (int, float)) for s in sigmas)):
        raise ValueError(f'{source}: "sigmas" must be a list of numbers, one per keypoint')
    upper = data.get('upper_body') or []
    return TrainKeypoints(info, None if sigmas is None else tuple(float(s) for s in sigmas),
                          tuple(_index(j, names, f'{source}: upper_body') for j in upper))


def read_keypoint_file(path: str | PathLike) -> TrainKeypoints:
    """A keypoint set from JSON or YAML: `keypoints` (names, heatmap order), optional `name`, `flip_pairs` (by
    index or name; default: names that differ by left/right), `skeleton`, `sigmas` (OKS, one per joint) and
    `upper_body` (joints of the half-body augmentation's upper half)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f'cannot read keypoint file {path}: {error}') from error
    if not isinstance(data, Mapping):
        raise ValueError(f'keypoint file {path} must hold a mapping with "keypoints" and optional "flip_pairs", '
                         '"skeleton", "sigmas", "upper_body"')
    return keypoints_from_json(data, str(path))


def keypoints_from_category(category: Mapping[str, Any]) -> TrainKeypoints:
    """The set of a COCO keypoint category (its `keypoints` names and 1-based `skeleton`): COCO's own set, sigmas
    and upper body when the names are COCO's, else flip pairs from left/right names and no sigmas or upper body."""
    names = tuple(category['keypoints'])
    if names == COCO_KEYPOINTS.keypoint_names:
        return COCO_TRAIN_KEYPOINTS
    skeleton = [[a - 1, b - 1] for a, b in category.get('skeleton') or []]
    return keypoints_from_json(dict(name=category.get('name', 'custom'), keypoints=list(names), skeleton=skeleton),
                         f'category {category.get("name")!r}')


def resolve_keypoints(keypoints: TrainKeypoints | str | PathLike | None, category: Mapping[str, Any] | None,
                      ) -> TrainKeypoints:
    """The keypoint set to train with: given (a set or a file), else from the annotation's category; a given set
    must have the category's joint count."""
    if isinstance(keypoints, (str, PathLike)):
        keypoints = read_keypoint_file(keypoints)
    if keypoints is None:
        if category is None:
            raise ValueError('no keypoint set: the annotation file has no keypoint category and none was given')
        return keypoints_from_category(category)
    if category is not None and len(category['keypoints']) != keypoints.num_joints:
        raise ValueError(f'the keypoint set {keypoints.info.name!r} has {keypoints.num_joints} joints, the annotation '
                         f'file {len(category["keypoints"])}')
    return keypoints
