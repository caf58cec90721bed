"""The one image reader of the package: classification, pose and segmentation, CLI and Python API alike.

Every entry point takes a path, a PIL image, a numpy array or a tensor and goes through here, so one set of rules
holds everywhere:
* files are decoded in full on opening, and a missing, truncated or non-image file raises `UnreadableImageError`
  naming the path (never a PIL traceback halfway through a batch);
* the EXIF orientation tag is applied (a portrait photo taken sideways is seen upright, as a viewer shows it);
* 16-bit greyscale (PNG `I;16`, `I`) is scaled to 8 bits (65535 -> 255), not clipped;
* palette images become RGB through their palette; an alpha channel is dropped, not composited;
* a model with 3 input channels sees RGB, one with 1 channel greyscale; other channel counts have no image
  convention, so such models take (C, H, W) tensors, and a tensor whose channel count differs is an error.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = ['ImageInput', 'IMAGE_SUFFIXES', 'UnreadableImageError', 'open_image', 'list_images', 'to_pil',
           'image_to_tensor']

ImageInput = Image.Image | np.ndarray | Tensor | str | PathLike

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
_MODES = {3: 'RGB', 1: 'L'}
_WIDE_GREY = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


class UnreadableImageError(ValueError):
    """An image file that is missing, truncated or not an image; carries the offending path."""

    def __init__(self, path: str | PathLike, reason: str) -> None:
        super().__init__(f'cannot read image {path}: {reason}')
        self.path = str(path)
        self.reason = reason


def open_image(path: str | PathLike) -> Image.Image:
    """Open and fully decode an image file, upright by its EXIF orientation."""
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return image.copy() if upright is None or upright is image else upright
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, str(error) or type(error).__name__) from error


def list_images(folder: str | PathLike) -> list[Path]:
    """The image files directly in `folder`, sorted by name (an error when there are none)."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {folder}')
    return paths


def _eight_bit(image: Image.Image) -> Image.Image:
    """8-bit greyscale from 16/32-bit integer greyscale, scaled rather than clipped at 255."""
    array = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8), mode='L')


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f'numpy images must be HW or HWC (C = 1, 3 or 4) arrays, got shape {array.shape}')
    if array.dtype == np.uint16:
        array = np.round(array / 257.0).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f'numpy images must be uint8 or uint16 arrays, got {array.dtype} with shape {array.shape}')
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def _from_tensor(tensor: Tensor) -> Image.Image:
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f'image tensors to draw on must be (1 or 3, H, W), got shape {list(tensor.shape)}')
    if tensor.dtype != torch.uint8:
        tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return _from_array(tensor.permute(1, 2, 0).cpu().numpy())


def to_pil(image: ImageInput, mode: str = 'RGB') -> Image.Image:
    """`image` as a PIL image in `mode` ('RGB' or 'L'); tensors may be float in [0, 1] or uint8."""
    if isinstance(image, (str, PathLike)):
        image = open_image(image)
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    elif isinstance(image, Tensor):
        image = _from_tensor(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f'unsupported image type {type(image).__name__}; expected a path, PIL image, array or tensor')
    if image.mode in _WIDE_GREY:
        image = _eight_bit(image)
    elif image.mode == 'P':
        image = image.convert('RGBA')  # through the palette, transparency included, before the alpha is dropped
    return image.convert(mode)


def image_to_tensor(image: ImageInput, in_chans: int) -> Tensor:
    """A float (C, H, W) tensor in [0, 1] with the model's channel count (the module docstring has the rules).

    Tensors are taken as they are (uint8 scaled to [0, 1]) once their channel count is checked.
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
    if in_chans not in _MODES:
        raise ValueError(
            f'the model takes {in_chans}-channel inputs: pass a ({in_chans}, H, W) tensor (images are converted '
            'only to RGB or greyscale)'
        )
    array = np.asarray(to_pil(image, _MODES[in_chans]), dtype=np.uint8)
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()).permute(2, 0, 1).float() / 255
