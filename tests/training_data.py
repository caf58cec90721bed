"""Tiny synthetic pose and segmentation training sets (coloured discs at known keypoints, coloured shapes as known
class regions) and the fast training settings, shared by the training and the hub_upload tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

POSE_INPUT = (64, 48)
FAST = dict(init='hrnet_w18_small', pretrained=False, workers=0, progress=False, tensorboard=False)

# -- synthetic data ---------------------------------------------------------------------------------------------------
JOINTS = ('head', 'left_hand', 'right_hand', 'left_foot', 'right_foot')
# left / right pairs share a colour and differ by side (a person facing the camera: their left is the image's right),
# so a mirrored image with the pairs swapped is again a correct sample
JOINT_COLOURS = ((255, 230, 0), (255, 40, 40), (255, 40, 40), (40, 140, 255), (40, 140, 255))
JOINT_OFFSETS = ((0, -26), (14, -2), (-14, -2), (9, 24), (-9, 24))
SEG_COLOURS = ((255, 40, 40), (40, 140, 255))


def _disc(image: np.ndarray, x: float, y: float, radius: float, colour: tuple[int, int, int]) -> None:
    """Pixels whose centre (i, j) lies within `radius` of (x, y): the models' pixel convention."""
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    image[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = colour


def make_pose_data(folder: Path, count: int = 8, size: tuple[int, int] = (80, 64),
                   seed: int = 0) -> tuple[Path, Path, Path]:
    """`count` images (height, width) of one 'person' each: five discs at jittered positions, the COCO annotation
    file, the image folder and a keypoint file (flip pairs from the names, OKS sigmas 0.1, upper body)."""
    rng = np.random.default_rng(seed)
    height, width = size
    (folder / 'images').mkdir(parents=True)
    images, annotations = [], []
    for k in range(count):
        image = rng.integers(30, 70, size=(height, width, 3)).astype(np.uint8)
        cx, cy = width / 2 + rng.uniform(-5, 5), height / 2 + rng.uniform(-4, 4)
        points = [(cx + dx + rng.uniform(-3, 3), cy + dy + rng.uniform(-3, 3)) for dx, dy in JOINT_OFFSETS]
        for (x, y), colour in zip(points, JOINT_COLOURS):
            _disc(image, x, y, 2.5, colour)
        name = f'{k:03d}.png'
        Image.fromarray(image).save(folder / 'images' / name)
        low = np.maximum(np.min(points, axis=0) - 6, 0)
        high = np.minimum(np.max(points, axis=0) + 6, (width - 1, height - 1))
        w, h = (high - low).tolist()
        images.append(dict(id=k + 1, file_name=name, width=width, height=height))
        annotations.append(dict(id=k + 1, image_id=k + 1, category_id=1, bbox=[*low.tolist(), w, h], area=w * h,
                                iscrowd=0, num_keypoints=len(JOINTS), keypoints=[v for p in points for v in (*p, 2)]))
    category = dict(id=1, name='blob', keypoints=list(JOINTS), skeleton=[[1, 2], [1, 3], [2, 4], [3, 5]])
    ann_file = folder / 'annotations.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=[category])))
    keypoint_file = folder / 'keypoints.json'
    keypoint_file.write_text(json.dumps(dict(name='blob', keypoints=list(JOINTS), sigmas=[0.1] * len(JOINTS),
                                             upper_body=['head', 'left_hand', 'right_hand'])))
    return ann_file, folder / 'images', keypoint_file


def make_seg_data(folder: Path, count: int = 8, size: tuple[int, int] = (80, 80),
                  seed: int = 0) -> tuple[Path, Path]:
    """`count` noisy images with a red disc (class 1) over a blue rectangle (class 2) on background (class 0), and
    their class-index PNGs."""
    rng = np.random.default_rng(seed)
    height, width = size
    for sub in ('images', 'labels'):
        (folder / sub).mkdir(parents=True)
    yy, xx = np.mgrid[0:height, 0:width]
    for k in range(count):
        image = rng.integers(20, 80, size=(height, width, 3)).astype(np.uint8)
        labels = np.zeros((height, width), np.uint8)
        w, h = rng.uniform(0.25, 0.4, 2) * (width, height)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        rectangle = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        radius = rng.uniform(0.14, 0.2) * width
        x, y = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        image[rectangle], labels[rectangle] = SEG_COLOURS[1], 2
        image[disc], labels[disc] = SEG_COLOURS[0], 1
        Image.fromarray(image).save(folder / 'images' / f'{k:03d}.png')
        Image.fromarray(labels, mode='L').save(folder / 'labels' / f'{k:03d}.png')
    return folder / 'images', folder / 'labels'
