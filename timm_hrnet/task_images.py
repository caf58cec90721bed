"""Images in and out of the pose and segmentation models: reading any image into the channel count the checkpoint
expects, the normalisation of the official models, and drawing skeletons and colour masks with PIL.

Images are converted to what the model takes: greyscale, palette, CMYK or RGBA files become RGB for a 3-channel
model (the alpha channel is dropped, not composited) and greyscale for a 1-channel one. Other channel counts have
no image convention, so such models take (C, H, W) tensors, and a tensor whose channel count differs from the
model's is an error rather than a silent conversion.
"""
from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch import Tensor

from .inference import UnreadableImageError

__all__ = ['ImageInput', 'IMAGENET_MEAN', 'IMAGENET_STD', 'normalization', 'image_to_tensor', 'to_pil', 'draw_pose',
           'colorize_labels', 'overlay_labels']

ImageInput = Image.Image | np.ndarray | Tensor | str | PathLike

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # both official code bases normalise RGB images with ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_MODES = {3: 'RGB', 1: 'L'}


def normalization(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel: ImageNet's for RGB, otherwise their averages repeated (timm's convention)."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,) * in_chans, (sum(IMAGENET_STD) / 3,) * in_chans


def _open(path: str | PathLike) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, str(error) or type(error).__name__) from error


def image_to_tensor(image: ImageInput, in_chans: int) -> Tensor:
    """A float (C, H, W) tensor in [0, 1] with the model's channel count (see the module docstring for the rules).

    Tensors are taken as they are (uint8 is scaled to [0, 1]); paths, PIL images and uint8 HWC / HW arrays are
    converted to RGB or greyscale.
    """
    if isinstance(image, Tensor):
        tensor = image.unsqueeze(0) if image.ndim == 2 else image
        if tensor.ndim != 3:
            raise ValueError(f'image tensors must be (C, H, W) or (H, W), got shape {list(image.shape)}')
        if tensor.shape[0] != in_chans:
            raise ValueError(
                f'the model takes {in_chans}-channel images, got a tensor with {tensor.shape[0]} channels '
                f'(shape {list(image.shape)})'
            )
        return tensor.float() / 255 if tensor.dtype == torch.uint8 else tensor.float()
    if isinstance(image, (str, PathLike)):
        image = _open(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f'numpy images must be HWC or HW uint8 arrays, got {image.dtype} with shape {image.shape}')
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f'unsupported image type {type(image).__name__}; expected a path, PIL image, array or tensor')
    if in_chans not in _PIL_MODES:
        raise ValueError(
            f'the model takes {in_chans}-channel inputs: pass a ({in_chans}, H, W) tensor (images are converted '
            'only to RGB or greyscale)'
        )
    array = np.asarray(image.convert(_PIL_MODES[in_chans]), dtype=np.uint8)
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()).permute(2, 0, 1).float() / 255


def to_pil(image: ImageInput) -> Image.Image:
    """An RGB PIL image to draw on (tensors in [0, 1] or uint8, one or three channels)."""
    if isinstance(image, Tensor):
        tensor = image.unsqueeze(0) if image.ndim == 2 else image
        if tensor.dtype != torch.uint8:
            tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
        array = tensor.permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array[..., :3])
    elif isinstance(image, (str, PathLike)):
        image = _open(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert('RGB')


def draw_pose(
        image: Image.Image,
        keypoints: Tensor,
        scores: Tensor,
        skeleton: Sequence[tuple[int, int]] = (),
        threshold: float = 0.3,
) -> Image.Image:
    """A copy of `image` with each person's limbs and keypoints drawn; points scoring below `threshold` are left out.

    `keypoints` is (P, J, 2) in pixels, `scores` (P, J).
    """
    out = image.convert('RGB')
    draw = ImageDraw.Draw(out)
    radius = max(2, round(min(out.size) / 150))
    colours = _limb_colours(len(skeleton))
    for points, confidences in zip(keypoints.tolist(), scores.tolist()):
        visible = [c >= threshold for c in confidences]
        for (a, b), colour in zip(skeleton, colours):
            if visible[a] and visible[b]:
                draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=radius)
        for (x, y), shown in zip(points, visible):
            if shown:
                box = [x - radius, y - radius, x + radius, y + radius]
                draw.ellipse(box, fill=(255, 0, 0), outline=(255, 255, 255))
    return out


def _limb_colours(count: int) -> list[tuple[int, int, int]]:
    """Evenly spaced saturated hues, so neighbouring limbs are told apart."""
    colours = []
    for k in range(count):
        hue = Image.new('HSV', (1, 1), (round(255 * k / max(count, 1)), 255, 255)).convert('RGB')
        colours.append(hue.getpixel((0, 0)))
    return colours


def colorize_labels(labels: Tensor, palette: Sequence[tuple[int, int, int]]) -> Image.Image:
    """An RGB image of a (H, W) label map, one palette colour per class."""
    table = torch.tensor(palette, dtype=torch.uint8)
    if labels.numel() and int(labels.max()) >= len(table):
        raise ValueError(f'label {int(labels.max())} has no colour in a palette of {len(table)}')
    return Image.fromarray(table[labels.cpu().long()].numpy())


def overlay_labels(
        image: Image.Image, labels: Tensor, palette: Sequence[tuple[int, int, int]], alpha: float = 0.5,
) -> Image.Image:
    """The colour mask of `labels` blended over `image` (alpha 1 shows the mask alone)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    mask = colorize_labels(labels, palette)
    base = image.convert('RGB')
    if base.size != mask.size:
        raise ValueError(
            f'label map {mask.size[1]}x{mask.size[0]} does not match the image {base.size[1]}x{base.size[0]}'
        )
    return Image.blend(base, mask, alpha)
