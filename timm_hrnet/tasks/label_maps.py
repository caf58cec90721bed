"""Reading segmentation label maps for evaluation: class-index PNGs, colour (palette) images, and Cityscapes'
`*_gtFine_labelIds.png`, whose 34 ids are mapped to the 19 evaluated train ids here.

Every reader returns an (H, W) int64 array of class indices with `ignore_index` where a pixel is not evaluated, and
raises `LabelMapError` naming the file for anything it cannot read unambiguously: a silent wrong label would give a
silently wrong mIoU.
"""
from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import numpy as np
from PIL import Image

from ..images import open_image

__all__ = [
    'LabelMapError', 'CITYSCAPES_LABELS', 'CITYSCAPES_TRAIN_ID_LUT', 'cityscapes_train_ids', 'read_index_labels',
    'decode_palette_labels', 'read_labels', 'check_label_values', 'LABEL_FORMATS',
]

LABEL_FORMATS = ('auto', 'cityscapes', 'index', 'palette')
_INDEX_MODES = ('L', 'P', 'I;16', 'I;16L', 'I;16B', 'I')
_COLOUR_MODES = ('RGB', 'RGBA')


class LabelMapError(ValueError):
    """A label map (or image / label pairing) that cannot be evaluated; the message names the file."""


# (id, name, train id) of every Cityscapes label, from the dataset's own definitions (cityscapesscripts'
# helpers/labels.py). Train id 255: not evaluated. License plate has id -1, which never occurs in labelIds images.
CITYSCAPES_LABELS: tuple[tuple[int, str, int], ...] = (
    (0, 'unlabeled', 255), (1, 'ego vehicle', 255), (2, 'rectification border', 255), (3, 'out of roi', 255),
    (4, 'static', 255), (5, 'dynamic', 255), (6, 'ground', 255), (7, 'road', 0), (8, 'sidewalk', 1),
    (9, 'parking', 255), (10, 'rail track', 255), (11, 'building', 2), (12, 'wall', 3), (13, 'fence', 4),
    (14, 'guard rail', 255), (15, 'bridge', 255), (16, 'tunnel', 255), (17, 'pole', 5), (18, 'polegroup', 255),
    (19, 'traffic light', 6), (20, 'traffic sign', 7), (21, 'vegetation', 8), (22, 'terrain', 9), (23, 'sky', 10),
    (24, 'person', 11), (25, 'rider', 12), (26, 'car', 13), (27, 'truck', 14), (28, 'bus', 15),
    (29, 'caravan', 255), (30, 'trailer', 255), (31, 'train', 16), (32, 'motorcycle', 17), (33, 'bicycle', 18),
    (-1, 'license plate', 255),
)


def _train_id_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.int64)
    for label_id, _, train_id in CITYSCAPES_LABELS:
        if label_id >= 0:
            lut[label_id] = train_id
    return lut


CITYSCAPES_TRAIN_ID_LUT = _train_id_lut()  # labelIds value -> train id; every value that is not a label id -> 255


def _open(path: str | PathLike) -> Image.Image:
    try:
        return open_image(path)
    except ValueError as error:  # UnreadableImageError names the path
        raise LabelMapError(str(error)) from error


def _indices(image: Image.Image, path: str | PathLike) -> np.ndarray:
    if image.mode not in _INDEX_MODES:
        hint = "; colour labels need label_format='palette'" if image.mode in _COLOUR_MODES else ''
        raise LabelMapError(f'label map {path} is a {image.mode} image, not class indices (L, P or 16-bit){hint}')
    return np.asarray(image).astype(np.int64)


def read_index_labels(path: str | PathLike) -> np.ndarray:
    """Class indices stored as pixel values (8/16-bit greyscale or a palette PNG's indices, not its colours)."""
    return _indices(_open(path), path)


def _train_ids(ids: np.ndarray) -> np.ndarray:
    return np.where(ids < 256, CITYSCAPES_TRAIN_ID_LUT[np.clip(ids, 0, 255)], 255)


def cityscapes_train_ids(path: str | PathLike) -> np.ndarray:
    """The 19 train ids (255 elsewhere) of a Cityscapes `*_gtFine_labelIds.png`."""
    return _train_ids(read_index_labels(path))


def _codes(colours: np.ndarray) -> np.ndarray:
    colours = colours.astype(np.int64)
    return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]


def _decode(image: Image.Image, path: str | PathLike, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    codes = _codes(np.asarray(palette, dtype=np.int64).reshape(-1, 3))
    for first, code in enumerate(codes):
        twins = np.flatnonzero(codes == code)
        if len(twins) > 1:
            raise LabelMapError(f'cannot decode {path}: the palette gives classes {first} and {twins[1]} the same '
                                f'colour {tuple(palette[first])}; use class-index label maps')
    if image.mode == 'P':
        image = image.convert('RGB')
    if image.mode not in _COLOUR_MODES:
        raise LabelMapError(f'label map {path} is a {image.mode} image, not RGB colours; '
                            "class-index labels need label_format='index'")
    order = np.argsort(codes)
    sorted_codes = codes[order]
    pixels = _codes(np.asarray(image)[..., :3])
    colours, inverse = np.unique(pixels, return_inverse=True)
    position = np.searchsorted(sorted_codes, colours).clip(0, len(codes) - 1)
    known = sorted_codes[position] == colours
    if not known.all():
        code = int(colours[~known][0])
        raise LabelMapError(f'label map {path} has colour {(code >> 16, (code >> 8) & 255, code & 255)}, '
                            f'no class of the palette ({int((~known).sum())} unknown colours)')
    return order[position][inverse].reshape(pixels.shape).astype(np.int64)


def decode_palette_labels(path: str | PathLike, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Class indices of an RGB label image drawn with `palette` (class k has colour palette[k]).

    A colour used by two classes makes the decoding ambiguous and a colour in no class is unknown: both are errors.
    """
    return _decode(_open(path), path, palette)


def read_labels(path: str | PathLike, label_format: str,
                palette: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """One label map in `label_format`: 'index', 'palette', 'cityscapes' (labelIds) or 'auto' (by the image mode:
    greyscale and palette PNGs hold indices, RGB images colours)."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f'unknown label format {label_format!r}; known: {", ".join(LABEL_FORMATS)}')
    image = _open(path)
    if label_format == 'auto':
        label_format = 'palette' if image.mode in _COLOUR_MODES else 'index'
    if label_format == 'index':
        return _indices(image, path)
    if label_format == 'cityscapes':
        return _train_ids(_indices(image, path))
    if palette is None:
        raise ValueError('palette labels need the palette of the dataset')
    return _decode(image, path, palette)


def check_label_values(labels: np.ndarray, num_classes: int, ignore_index: int, path: str | PathLike) -> None:
    """Every value is a class index or `ignore_index`: a label the model cannot predict is a data error."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = np.unique(labels[bad])
        shown = ', '.join(str(v) for v in values[:8]) + (', ...' if len(values) > 8 else '')
        raise LabelMapError(f'label map {path} has values {shown} outside the {num_classes} classes '
                            f'(ignore_index {ignore_index})')
