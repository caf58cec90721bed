"""Checkpoint reading for every model and layout: files, layouts, task architectures, one typed value."""
from .architecture import FCN, OCR, SEG_HEADS, TaskArchitecture, check_task, read_architecture
from .files import PICKLE_SUFFIXES, load_checkpoint_file, one_line, read_checkpoint_object, unwrap_state_dict
from .layouts import (
    CANONICAL,
    CLASSIFICATION,
    LAYOUT_NAMES,
    MMPOSE,
    MMPRETRAIN,
    MMSEG,
    POSE,
    SEGMENTATION,
    Layout,
    detect_layout,
    to_canonical_keys,
)
from .mismatch import CheckpointMismatchError, key_differences
from .reading import Checkpoint, CheckpointSource, read_checkpoint

__all__ = [
    'Checkpoint', 'CheckpointSource', 'read_checkpoint', 'TaskArchitecture', 'read_architecture', 'check_task',
    'FCN', 'OCR', 'SEG_HEADS',
    'PICKLE_SUFFIXES', 'load_checkpoint_file', 'one_line', 'read_checkpoint_object', 'unwrap_state_dict',
    'CANONICAL', 'MMPRETRAIN', 'MMPOSE', 'MMSEG', 'CLASSIFICATION', 'POSE', 'SEGMENTATION', 'LAYOUT_NAMES', 'Layout',
    'detect_layout', 'to_canonical_keys', 'CheckpointMismatchError', 'key_differences',
]
