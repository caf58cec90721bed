"""What the pose and segmentation models need to know about their datasets, as data: keypoint sets, class names,
colour palettes, and the `align_corners` each released segmentation model was trained with (the checkpoints cannot
tell).

A keypoint set (`KeypointInfo`) is the one description that training, prediction, drawing and evaluation share:
names, flip pairs, skeleton, OKS sigmas and upper body. It comes from the built-in COCO / MPII / COCO-WholeBody
sets, a small JSON or YAML file (`read_keypoint_file`) or the keypoint category of a COCO annotation file
(`keypoints_from_category`).
Keypoint sets and segmentation datasets are looked up by the number of joints / classes of a checkpoint, which
identifies every released HRNet model; a fine-tuned model with another count gets generic names and colours.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    'KeypointInfo', 'SegDatasetInfo', 'KEYPOINT_SETS', 'SEG_DATASETS', 'COCO_KEYPOINTS', 'MPII_KEYPOINTS',
    'COCO_WHOLEBODY_KEYPOINTS', 'WHOLEBODY_PARTS', 'FACE_KEYPOINT_SETS', 'HAND_KEYPOINTS', 'RHD_KEYPOINTS',
    'COCO_KEYPOINT_SIGMAS', 'keypoints_for', 'read_keypoint_file', 'keypoints_from_json', 'keypoints_from_category',
    'resolve_keypoints', 'seg_dataset_for', 'seg_dataset', 'dataset_for_classes', 'generic_palette',
]


def _int_pairs(values: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    if any(len(pair) != 2 for pair in values):
        raise ValueError(f'flip pairs and limbs must be (a, b) joint indices, got {values!r}')
    return tuple((int(a), int(b)) for a, b in values)


@dataclass(frozen=True)
class KeypointInfo:
    """A keypoint set: names in heatmap order, left/right pairs swapped by the flip test, limbs to draw, the OKS
    sigmas COCO-style evaluation scores with (None: unknown, so evaluation asks for them) and the upper-body joints
    of the half-body augmentation (empty: none; the lower body is every other joint).

    One value serves training, prediction and evaluation, so a custom set's flip pairs and sigmas cannot drift
    apart between them. Lists are accepted and stored as tuples; inconsistent sets are a ValueError.
    """

    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] | None = None
    upper_body: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: normalise once, here
        set_field(self, 'keypoint_names', tuple(self.keypoint_names))
        set_field(self, 'flip_pairs', _int_pairs(self.flip_pairs))
        set_field(self, 'skeleton', _int_pairs(self.skeleton))
        set_field(self, 'upper_body', tuple(int(j) for j in self.upper_body))
        if self.sigmas is not None:
            set_field(self, 'sigmas', tuple(float(s) for s in self.sigmas))
        joints = self.num_joints
        if self.sigmas is not None and len(self.sigmas) != joints:
            raise ValueError(f'keypoint set {self.name!r}: {len(self.sigmas)} OKS sigmas for {joints} keypoints '
                             '(one per keypoint, in heatmap order)')
        if self.sigmas is not None and not all(math.isfinite(s) and s > 0 for s in self.sigmas):
            raise ValueError(f'keypoint set {self.name!r}: OKS sigmas must be positive, got {list(self.sigmas)}')
        pairs = [j for pair in self.flip_pairs for j in pair] + [j for limb in self.skeleton for j in limb]
        if any(not 0 <= j < joints for j in [*pairs, *self.upper_body]):
            raise ValueError(f'{self.name}: joint indices must be in [0, {joints}); flip pairs {self.flip_pairs}, '
                             f'skeleton {self.skeleton}, upper body {self.upper_body}')
        flipped = [j for pair in self.flip_pairs for j in pair]
        if len(flipped) != len(set(flipped)) or any(a == b for a, b in self.flip_pairs):
            raise ValueError(f'{self.name}: each joint may be in one flip pair, with another joint; got '
                             f'{self.flip_pairs}')

    @property
    def num_joints(self) -> int:
        return len(self.keypoint_names)

    @property
    def lower_body(self) -> tuple[int, ...]:
        return tuple(j for j in range(self.num_joints) if j not in self.upper_body) if self.upper_body else ()

    def to_json(self) -> dict[str, Any]:
        """The file format `read_keypoint_file` reads (names, pairs by index)."""
        return dict(name=self.name, keypoints=list(self.keypoint_names),
                    flip_pairs=[list(p) for p in self.flip_pairs], skeleton=[list(s) for s in self.skeleton],
                    sigmas=None if self.sigmas is None else list(self.sigmas), upper_body=list(self.upper_body))


@dataclass(frozen=True)
class SegDatasetInfo:
    """A segmentation label set and what the official models trained on it assume.

    `align_corners` is the value of the official config (MODEL.ALIGN_CORNERS) the released checkpoints were trained
    with; `flip_pairs` are classes that swap under a horizontal flip (left/right body parts in LIP).
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    align_corners: bool
    flip_pairs: tuple[tuple[int, int], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# COCO's per-keypoint OKS constants, the values pycocotools' COCOeval uses (its Params.kpt_oks_sigmas)
COCO_KEYPOINT_SIGMAS: tuple[float, ...] = tuple(s / 10.0 for s in (
    .26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89))

COCO_KEYPOINTS = KeypointInfo(
    name='coco',
    keypoint_names=(
        'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder', 'left_elbow',
        'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle',
        'right_ankle',
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
        (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    sigmas=COCO_KEYPOINT_SIGMAS,
    upper_body=tuple(range(11)),  # the official coco.py upper_body_ids
)

MPII_KEYPOINTS = KeypointInfo(
    name='mpii',
    keypoint_names=(
        'right_ankle', 'right_knee', 'right_hip', 'left_hip', 'left_knee', 'left_ankle', 'pelvis', 'thorax',
        'upper_neck', 'head_top', 'right_wrist', 'right_elbow', 'right_shoulder', 'left_shoulder', 'left_elbow',
        'left_wrist',
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12), (12, 7), (7, 13),
        (13, 14), (14, 15),
    ),
    upper_body=(7, 8, 9, 10, 11, 12, 13, 14, 15),  # the official mpii.py; MPII is scored by PCKh: no OKS sigmas
)



def _coco_wholebody() -> KeypointInfo:
    """COCO-WholeBody (Jin et al., "Whole-Body Human Pose Estimation in the Wild", ECCV 2020): COCO's 17 body
    keypoints, 6 foot, 68 face (the 300W / iBUG layout) and 21 per hand, in that order (the annotation file's
    keypoints, foot_kpts, face_kpts, lefthand_kpts, righthand_kpts), with the dataset's per-keypoint OKS sigmas."""
    foot = ('left_big_toe', 'left_small_toe', 'left_heel', 'right_big_toe', 'right_small_toe', 'right_heel')
    fingers = [f'{finger}{k}' for finger in ('thumb', 'forefinger', 'middle_finger', 'ring_finger', 'pinky_finger')
               for k in range(1, 5)]
    hand = ('hand_root', *fingers)
    names = (*COCO_KEYPOINTS.keypoint_names, *foot, *(f'face-{k}' for k in range(68)),
             *(f'left_{n}' for n in hand), *(f'right_{n}' for n in hand))
    # the 68-point face mirrored: jaw, brows, nose, eyes, mouth (face-local indices)
    face = [(k, 16 - k) for k in range(8)] + [(17 + k, 26 - k) for k in range(5)] + [(31, 35), (32, 34)]
    face += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (48, 54), (49, 53), (50, 52), (55, 59),
             (56, 58), (60, 64), (61, 63), (65, 67)]
    flip_pairs = (*COCO_KEYPOINTS.flip_pairs, (17, 20), (18, 21), (19, 22), *((23 + a, 23 + b) for a, b in face),
                  *((91 + k, 112 + k) for k in range(21)))
    face_sigmas = (
        .042, .043, .044, .043, .040, .035, .031, .025, .020, .023, .029, .032, .037, .038, .043, .041, .045, .013,
        .012, .011, .011, .012, .012, .011, .011, .013, .015, .009, .007, .007, .007, .012, .009, .008, .016, .010,
        .017, .011, .009, .011, .009, .007, .013, .008, .011, .012, .010, .034, .008, .008, .009, .008, .008, .007,
        .010, .008, .009, .009, .009, .007, .007, .008, .011, .008, .008, .008, .010, .008)
    hand_sigmas = (.029, .022, .035, .037, .047, .026, .025, .024, .035, .018, .024, .022, .026, .017, .021, .021,
                   .032, .020, .019, .022, .031)
    sigmas = (*COCO_KEYPOINT_SIGMAS, .068, .066, .066, .092, .094, .094, *face_sigmas, *hand_sigmas, *hand_sigmas)
    return KeypointInfo('coco_wholebody', names, flip_pairs, COCO_KEYPOINTS.skeleton, sigmas, tuple(range(11)))


COCO_WHOLEBODY_KEYPOINTS = _coco_wholebody()
# the parts COCO-WholeBody is scored on, as [start, end) keypoint ranges of COCO_WHOLEBODY_KEYPOINTS, with the
# annotation file's field of each
WHOLEBODY_PARTS: dict[str, tuple[int, int, str]] = {
    'body': (0, 17, 'keypoints'), 'foot': (17, 23, 'foot_kpts'), 'face': (23, 91, 'face_kpts'),
    'lefthand': (91, 112, 'lefthand_kpts'), 'righthand': (112, 133, 'righthand_kpts'),
}



def _face(name: str, count: int, flip_pairs: Sequence[tuple[int, int]]) -> KeypointInfo:
    """A face landmark set: numbered points (the benchmarks name none), its mirror pairs as the datasets define
    them (the flip test of the landmark models)."""
    return KeypointInfo(name, tuple(f'{name}_{k}' for k in range(count)), flip_pairs)


def _mirrored(pairs: Sequence[tuple[int, int]], *ranges: tuple[int, int, int]) -> list[tuple[int, int]]:
    """`pairs` plus (first + k, last - k) for k in range(count) per (first, last, count): the runs of points
    numbered from one side of the face to the other."""
    return [*pairs, *((first + k, last - k) for first, last, count in ranges for k in range(count))]


# WFLW (98 points), 300W / iBUG (68), COFW (29), AFLW (19): the face sets of HRNet-Facial-Landmark-Detection and
# mmpose's face models; mirror pairs as the datasets define them
FACE_KEYPOINT_SETS: dict[str, KeypointInfo] = {info.name: info for info in (
    _face('wflw', 98, _mirrored(
        [(38, 50), (39, 49), (40, 48), (41, 47), (65, 75), (66, 74), (67, 73), (96, 97)],
        (0, 32, 16), (33, 46, 5), (55, 59, 2), (60, 72, 5), (76, 82, 3), (83, 87, 2), (88, 92, 2), (93, 95, 1))),
    _face('300w', 68, _mirrored(
        [(40, 47), (41, 46)],
        (0, 16, 8), (17, 26, 5), (31, 35, 2), (36, 45, 4), (48, 54, 3), (55, 59, 2), (60, 64, 2), (65, 67, 1))),
    _face('cofw', 29, [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19),
                       (22, 23)]),
    _face('aflw', 19, [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)]),
)}
_FINGERS = ('thumb', 'forefinger', 'middle_finger', 'ring_finger', 'pinky_finger')
_HAND_SKELETON = [(0 if k == 0 else 4 * f + k, 4 * f + k + 1) for f in range(5) for k in range(4)]
# one hand, 21 points (OneHand10K, and mmpose's hand models): the wrist, then each finger from its base (1) to its
# tip (4); a single hand has no left and right, so the flip test swaps nothing
HAND_KEYPOINTS = KeypointInfo(
    'hand', ('wrist', *(f'{finger}{k}' for finger in _FINGERS for k in range(1, 5))), (), _HAND_SKELETON)
# the Rendered Hand Pose dataset's order: each finger from its tip (4) to its base (1)
RHD_KEYPOINTS = KeypointInfo(
    'rhd', ('wrist', *(f'{finger}{k}' for finger in _FINGERS for k in range(4, 0, -1))), (), _HAND_SKELETON)

KEYPOINT_SETS: dict[str, KeypointInfo] = {
    info.name: info for info in (COCO_KEYPOINTS, MPII_KEYPOINTS, COCO_WHOLEBODY_KEYPOINTS, *FACE_KEYPOINT_SETS.values(),
                                 HAND_KEYPOINTS, RHD_KEYPOINTS)}


def keypoints_for(num_joints: int) -> KeypointInfo | None:
    """The keypoint set with this many joints (17: COCO, 16: MPII, 133: COCO-WholeBody, 98 / 68 / 29 / 19: the WFLW /
    300W / COFW / AFLW faces, 21: a hand in OneHand10K's order), or None."""
    return next((info for info in KEYPOINT_SETS.values() if info.num_joints == num_joints), None)


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
_SWAP = {'left': 'right', 'right': 'left', 'Left': 'Right', 'Right': 'Left', 'LEFT': 'RIGHT', 'RIGHT': 'LEFT'}


def _flip_pairs_from_names(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Pairs of names that differ only by left <-> right (e.g. left_eye / right_eye)."""
    pairs = []
    for a, name in enumerate(names):
        if _SIDE.search(name) is None:
            continue
        twin = _SIDE.sub(lambda m: _SWAP.get(m.group(0), m.group(0)), name)
        if twin in names and names.index(twin) > a:
            pairs.append((a, names.index(twin)))
    return tuple(pairs)


def keypoints_from_json(data: Mapping[str, Any], source: str = 'keypoint set') -> KeypointInfo:
    """A keypoint set from its mapping (`read_keypoint_file`'s format, `KeypointInfo.to_json`'s output)."""
    names = data.get('keypoints')
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f'{source}: "keypoints" must be a list of joint names')
    flip = data.get('flip_pairs')
    sigmas = data.get('sigmas')
    if sigmas is not None and (not isinstance(sigmas, list) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas)):
        raise ValueError(f'{source}: "sigmas" must be a list of numbers, one per keypoint')
    upper = data.get('upper_body') or []
    try:
        return KeypointInfo(
            name=str(data.get('name', Path(source).stem)),
            keypoint_names=tuple(names),
            flip_pairs=_flip_pairs_from_names(names) if flip is None else _pairs(flip, names, f'{source}: flip_pairs'),
            skeleton=_pairs(data.get('skeleton') or [], names, f'{source}: skeleton'),
            sigmas=sigmas,
            upper_body=tuple(_index(j, names, f'{source}: upper_body') for j in upper),
        )
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(source) else f'{source}: {message}') from error


def read_keypoint_file(path: str | PathLike) -> KeypointInfo:
    """A keypoint set from JSON or YAML: `keypoints` (names, heatmap order), optional `name`, `flip_pairs` (by
    index or name; default: names that differ by left/right), `skeleton`, `sigmas` (OKS, one per joint) and
    `upper_body` (joints of the half-body augmentation's upper half)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f'cannot read keypoint file {path}: {str(error).splitlines()[0]}') from error
    if not isinstance(data, Mapping):
        raise ValueError(f'keypoint file {path} must hold a mapping with "keypoints" and optional "flip_pairs", '
                         '"skeleton", "sigmas", "upper_body"')
    return keypoints_from_json(data, str(path))


def keypoints_from_category(category: Mapping[str, Any]) -> KeypointInfo:
    """The set of a COCO keypoint category (its `keypoints` names and 1-based `skeleton`): COCO's own set, sigmas
    and upper body when the names are COCO's, else flip pairs from left/right names and no sigmas or upper body."""
    names = tuple(category['keypoints'])
    if names == COCO_KEYPOINTS.keypoint_names:
        return COCO_KEYPOINTS
    skeleton = [[a - 1, b - 1] for a, b in category.get('skeleton') or []]
    return keypoints_from_json(dict(name=category.get('name', 'custom'), keypoints=list(names), skeleton=skeleton),
                               f'category {category.get("name")!r}')


def resolve_keypoints(keypoints: KeypointInfo | str | PathLike | None, category: Mapping[str, Any] | None,
                      ) -> KeypointInfo:
    """The keypoint set to train with: given (a set or a file), else from the annotation's category; a given set
    must have the category's joint count."""
    if isinstance(keypoints, (str, PathLike)):
        keypoints = read_keypoint_file(keypoints)
    if keypoints is None:
        if category is None:
            raise ValueError('no keypoint set: the annotation file has no keypoint category and none was given')
        return keypoints_from_category(category)
    if category is not None and len(category['keypoints']) != keypoints.num_joints:
        raise ValueError(f'the keypoint set {keypoints.name!r} has {keypoints.num_joints} joints, the annotation '
                         f'file {len(category["keypoints"])}')
    return keypoints


def generic_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for any class count: the bit-interleaved PASCAL VOC colour map (class 0 is black)."""
    colours = []
    for label in range(num_classes):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((label >> (3 * bit + channel)) & 1) << (7 - bit)
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)


def _hex_palette(text: str) -> tuple[tuple[int, int, int], ...]:
    return tuple((int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)) for c in text.split())


_CITYSCAPES = SegDatasetInfo(
    name='cityscapes',
    class_names=(
        'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
        'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
    ),
    # the Cityscapes benchmark's own colours of the 19 evaluated (train id) classes
    palette=_hex_palette(
        '804080 f423e8 464646 66669c be9999 999999 faaa1e dcdc00 6b8e23 98fb98 4682b4 dc143c ff0000 00008e 000046 '
        '003c64 005064 0000e6 770b20'
    ),
    align_corners=False,
)

_ADE20K = SegDatasetInfo(
    name='ade20k',
    class_names=(
        'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
        'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
        'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
        'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
        'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
        'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
        'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
        'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
        'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
        'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
        'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
        'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
        'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
        'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
        'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
    ),
    # the colour table of the ADE20K scene-parsing benchmark (SceneParsing 150 classes)
    palette=_hex_palette(
        '787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d 787846 08ff33 '
        'ff0652 8fff8c ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff '
        '08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 ff7a08 00ff14 ff0829 ff0599 0633ff '
        'eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff '
        '0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00 008fff 33ff00 0052ff 00ff29 00ffad '
        '0a00ff adff00 00ff99 ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 '
        '00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 8fff00 5200ff a3ff00 ffeb00 08b8aa '
        '8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3 '
        'ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00 00ccff 1400ff ffff00 0099ff 0029ff '
        '00ffcc 2900ff 29ff00 ad00ff 00f5ff 4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff'
    ),
    align_corners=True,  # the ADE20K configs leave MODEL.ALIGN_CORNERS at the code's default, True
)

_LIP_CLASSES = (
    'background', 'hat', 'hair', 'glove', 'sunglasses', 'upper clothes', 'dress', 'coat', 'socks', 'pants',
    'jumpsuits', 'scarf', 'skirt', 'face', 'left arm', 'right arm', 'left leg', 'right leg', 'left shoe',
    'right shoe',
)
_LIP = SegDatasetInfo(
    name='lip', class_names=_LIP_CLASSES, palette=generic_palette(len(_LIP_CLASSES)), align_corners=False,
    flip_pairs=((14, 15), (16, 17), (18, 19)),
)

_PASCAL_CONTEXT_59 = (
    'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle', 'building', 'bus',
    'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain', 'dog', 'door', 'fence',
    'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike', 'mountain', 'mouse',
    'person', 'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves', 'sidewalk', 'sign', 'sky',
    'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'tvmonitor', 'wall', 'water', 'window', 'wood',
)
_PASCAL_CONTEXT = SegDatasetInfo(
    name='pascal_context', class_names=('background', *_PASCAL_CONTEXT_59), palette=generic_palette(60),
    align_corners=False,
)
_PASCAL_CONTEXT_59_INFO = SegDatasetInfo(
    name='pascal_context_59', class_names=_PASCAL_CONTEXT_59, palette=generic_palette(60)[1:], align_corners=False,
)
# COCO-Stuff-164k as trained by the official code: the 80 thing and 91 stuff classes in COCO category id order
_COCOSTUFF_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant',
    'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
    'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli',
    'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet',
    'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush', 'banner',
    'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet', 'cage', 'cardboard', 'carpet',
    'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds', 'counter', 'cupboard', 'curtain', 'desk-stuff',
    'dirt', 'door-stuff', 'fence', 'floor-marble', 'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower',
    'fog', 'food-other', 'fruit', 'furniture-other', 'grass', 'gravel', 'ground-other', 'hill', 'house', 'leaves',
    'light', 'mat', 'metal', 'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement',
    'pillow', 'plant-other', 'plastic', 'platform', 'playingfield', 'railing', 'railroad', 'river', 'road', 'rock',
    'roof', 'rug', 'salad', 'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs',
    'stone', 'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel', 'tree', 'vegetable',
    'wall-brick', 'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone', 'wall-tile', 'wall-wood', 'water-other',
    'waterdrops', 'window-blind', 'window-other', 'wood',
)
_COCOSTUFF = SegDatasetInfo(
    name='cocostuff', class_names=_COCOSTUFF_CLASSES, palette=generic_palette(len(_COCOSTUFF_CLASSES)),
    align_corners=True,  # the COCO-Stuff configs leave MODEL.ALIGN_CORNERS at the code's default, True
)

SEG_DATASETS: dict[str, SegDatasetInfo] = {
    info.name: info for info in (_CITYSCAPES, _ADE20K, _LIP, _PASCAL_CONTEXT, _PASCAL_CONTEXT_59_INFO, _COCOSTUFF)
}


def seg_dataset_for(num_classes: int) -> SegDatasetInfo | None:
    """The dataset of the released models with this many classes (19, 20, 59, 60, 150, 171), or None."""
    return next((info for info in SEG_DATASETS.values() if info.num_classes == num_classes), None)


def seg_dataset(name: str) -> SegDatasetInfo:
    """A dataset by name, with the known names in the error."""
    if name not in SEG_DATASETS:
        raise ValueError(f'unknown segmentation dataset {name!r}; known: {", ".join(SEG_DATASETS)}')
    return SEG_DATASETS[name]


def dataset_for_classes(class_names: tuple[str, ...], align_corners: bool) -> SegDatasetInfo:
    """The known dataset with exactly these class names (an OpenMMLab checkpoint's meta), else a label set of
    them with generic colours."""
    known = next((info for info in SEG_DATASETS.values() if info.class_names == tuple(class_names)), None)
    if known is not None:
        return known
    return SegDatasetInfo(name='checkpoint', class_names=tuple(class_names),
                          palette=generic_palette(len(class_names)), align_corners=align_corners)
