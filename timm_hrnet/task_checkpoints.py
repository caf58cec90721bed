"""Deprecated: task checkpoints are read by `timm_hrnet.checkpoints.read_checkpoint`, loaded by
`timm_hrnet.tasks.base.load_task_weights`."""
import warnings
from collections.abc import Mapping

from torch import Tensor

from .checkpoints import POSE, SEGMENTATION, Checkpoint, TaskArchitecture, read_architecture, read_checkpoint
from .checkpoints.layouts import detect_layout, strip_training_wrapper
from .tasks.base import load_task_weights

__all__ = ['POSE', 'SEGMENTATION', 'TaskArchitecture', 'TaskCheckpoint', 'read_task_checkpoint', 'checkpoint_task',
           'read_architecture', 'load_task_weights']

warnings.warn('timm_hrnet.task_checkpoints is deprecated: use timm_hrnet.checkpoints', DeprecationWarning, stacklevel=2)

TaskCheckpoint = Checkpoint
read_task_checkpoint = read_checkpoint


def checkpoint_task(state_dict: Mapping[str, Tensor]) -> str | None:
    """'pose', 'segmentation', 'classification' or None: None also for what is no HRNet checkpoint at all, since
    callers of this old function test for None where `detect_layout` raises."""
    try:
        return detect_layout(strip_training_wrapper(state_dict)[0]).task
    except ValueError:
        return None
