"""Deprecated: images are read by `timm_hrnet.images`, drawn by `timm_hrnet.tasks.drawing`."""
import warnings

from .images import ImageInput, image_to_tensor, to_pil
from .tasks.base import IMAGENET_MEAN, IMAGENET_STD, normalization
from .tasks.drawing import colorize_labels, draw_pose, overlay_labels

__all__ = ['ImageInput', 'IMAGENET_MEAN', 'IMAGENET_STD', 'normalization', 'image_to_tensor', 'to_pil', 'draw_pose',
           'colorize_labels', 'overlay_labels']

warnings.warn('timm_hrnet.task_images is deprecated: use timm_hrnet.images and timm_hrnet.tasks.drawing',
              DeprecationWarning, stacklevel=2)
