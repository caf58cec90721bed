"""What the pose and segmentation models need to know about their datasets, as data: keypoint names, flip pairs
and skeletons, class names, colour palettes, and the `align_corners` each released segmentation model was trained
with (the checkpoints cannot tell).

Keypoint sets and segmentation datasets are looked up by the number of joints / classes of a checkpoint, which
identifies every released HRNet model; a fine-tuned model with another count gets generic names and colours.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    'KeypointInfo', 'SegDatasetInfo', 'KEYPOINT_SETS', 'SEG_DATASETS', 'keypoints_for', 'seg_dataset_for',
    'seg_dataset', 'dataset_for_classes', 'generic_palette',
]


@dataclass(frozen=True)
class KeypointInfo:
    """A keypoint set: names in heatmap order, left/right pairs swapped by the flip test, limbs to draw."""

    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_joints(self) -> int:
        return len(self.keypoint_names)


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
)

KEYPOINT_SETS: dict[str, KeypointInfo] = {info.name: info for info in (COCO_KEYPOINTS, MPII_KEYPOINTS)}


def keypoints_for(num_joints: int) -> KeypointInfo | None:
    """The keypoint set with this many joints (17: COCO, 16: MPII), or None."""
    return next((info for info in KEYPOINT_SETS.values() if info.num_joints == num_joints), None)


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
