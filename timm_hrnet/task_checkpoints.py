"""Read a pose or segmentation model's architecture from its checkpoint's own tensors, and load the weights.

The official checkpoints carry no config, but every architectural choice is visible in the tensors: the stem
width and input channels (`conv1.weight`), the blocks of each branch (`stageN.M.branches.B.K.*`), whether the last
module fuses into every branch (`stage4.<last>.fuse_layers.1.*`), and the head (`final_layer.weight`: joints and
kernel size; `last_layer.3.weight`: classes and kernel size). So a user passes only the file.

Accepted layouts: the official ones (pose: a plain state dict; segmentation: the training wrapper's `model.`
prefix and its loss buffers `loss.*`, which are dropped by name), `{'state_dict': ...}` / `{'model': ...}`
wrappers, DDP `module.` prefixes, and what this package saves. mmpose / mmseg checkpoints are refused with a
message: no reference outputs could be built for them here.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .convert import CheckpointMismatchError, _unwrap, load_checkpoint_file
from .variants import HRNetSpec, StageSpec

__all__ = [
    'POSE', 'SEGMENTATION', 'TaskArchitecture', 'TaskCheckpoint', 'read_task_checkpoint', 'checkpoint_task',
    'read_architecture', 'load_task_weights',
]

_logger = logging.getLogger(__name__)

POSE = 'pose'
SEGMENTATION = 'segmentation'
CLASSIFICATION = 'classification'

_OFFICIAL_SEG_PREFIX = 'model.'  # HRNet-Semantic-Segmentation saves its FullModel(model, loss) wrapper
_TRAINING_ONLY = ('loss.',)  # ... whose loss module holds the class weights of the criterion
_OPENMMLAB_HEADS = ('keypoint_head.', 'head.', 'decode_head.', 'auxiliary_head.')
_BN_COUNTER = '.num_batches_tracked'


@dataclass(frozen=True)
class TaskArchitecture:
    """What a task checkpoint says about the network: spec, input channels, head outputs and kernel size."""

    task: str
    spec: HRNetSpec
    in_chans: int
    num_outputs: int  # joints (pose) or classes (segmentation)
    final_conv_kernel: int


@dataclass
class TaskCheckpoint:
    """Canonical tensors of a task checkpoint, where they came from, and the training-only keys dropped."""

    state_dict: dict[str, Tensor]
    source: str
    dropped: list[str]


def read_task_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Tensor]) -> TaskCheckpoint:
    """Load a file (weights_only) or take a mapping, and bring it to the canonical key layout."""
    if isinstance(checkpoint, (str, os.PathLike)):
        source = f"'{checkpoint}'"
        state_dict = load_checkpoint_file(checkpoint)
    else:
        source = 'state dict'
        state_dict = _unwrap(checkpoint, source)
    dropped = sorted(k for k in state_dict if k.startswith(_TRAINING_ONLY))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_TRAINING_ONLY)}
    if state_dict and all(k.startswith(_OFFICIAL_SEG_PREFIX) for k in state_dict):
        state_dict = {k[len(_OFFICIAL_SEG_PREFIX):]: v for k, v in state_dict.items()}
    if any(k.startswith('backbone.') for k in state_dict) and any(k.startswith(_OPENMMLAB_HEADS) for k in state_dict):
        raise ValueError(
            f'{source} is an OpenMMLab (mmpose / mmseg) checkpoint (backbone.* with a head.* / keypoint_head.* / '
            'decode_head.*); only the official HRNet pose and segmentation checkpoints are supported: see '
            'docs/tasks.md'
        )
    if dropped:
        _logger.info('%s: dropped training-only keys %s', source, ', '.join(dropped))
    return TaskCheckpoint(state_dict, source, dropped)


def checkpoint_task(state_dict: Mapping[str, Tensor]) -> str | None:
    """'pose', 'segmentation', 'classification' or None, from the head's keys."""
    if any(k.startswith(('incre_modules.', 'classifier.')) for k in state_dict):
        return CLASSIFICATION
    if 'last_layer.3.weight' in state_dict:
        return SEGMENTATION
    if 'final_layer.weight' in state_dict:
        return POSE
    return None


_HEAD_KEYS = {POSE: 'final_layer.weight (a conv to the joint heatmaps)',
              SEGMENTATION: 'last_layer.0/1/3.* (conv, BatchNorm, conv to the classes)'}


def _check_task(state_dict: Mapping[str, Tensor], task: str, source: str) -> None:
    found = checkpoint_task(state_dict)
    if found == task:
        return
    create = {POSE: 'timm_hrnet.create_pose_model', SEGMENTATION: 'timm_hrnet.create_seg_model',
              CLASSIFICATION: "timm.create_model('hrnet_wNN', checkpoint_path=...)"}
    what = f'an HRNet {found} checkpoint' if found else 'not an HRNet pose or segmentation checkpoint'
    hint = f'; load it with {create[found]}' if found else ''
    raise ValueError(f'{source} is {what}: a {task} model needs {_HEAD_KEYS[task]}{hint}')


def _require(state_dict: Mapping[str, Tensor], key: str, ndim: int, source: str) -> Tensor:
    tensor = state_dict.get(key)
    if tensor is None:
        raise ValueError(f'{source} does not fit an HRNet: missing {key}')
    if tensor.ndim != ndim:
        raise ValueError(f'{source}: {key} has shape {list(tensor.shape)}, expected a {ndim}-D tensor')
    return tensor


def _indices(state_dict: Mapping[str, Tensor], prefix: str) -> list[int]:
    """The integers N of keys `prefix.N.*`, in order."""
    pattern = re.compile(re.escape(prefix) + r'\.(\d+)\.')
    return sorted({int(m.group(1)) for k in state_dict if (m := pattern.match(k))})


def _residual_layer(state_dict: Mapping[str, Tensor], prefix: str, source: str) -> tuple[str, int, int]:
    """(block type, number of blocks, block width) of a residual layer stored under `prefix`."""
    blocks = _indices(state_dict, prefix)
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f'{source} does not fit an HRNet: no residual blocks {prefix}.0, {prefix}.1, ... found')
    block = 'bottleneck' if f'{prefix}.0.conv3.weight' in state_dict else 'basic'
    width = _require(state_dict, f'{prefix}.0.conv1.weight', 4, source).shape[0]
    return block, len(blocks), width


def _stage(state_dict: Mapping[str, Tensor], index: int, source: str) -> StageSpec:
    prefix = f'stage{index}'
    modules = _indices(state_dict, prefix)
    if not modules:
        raise ValueError(f'{source} does not fit an HRNet: no {prefix}.* keys')
    layouts = []
    for m in modules:
        branches = _indices(state_dict, f'{prefix}.{m}.branches')
        layouts.append([_residual_layer(state_dict, f'{prefix}.{m}.branches.{b}', source) for b in branches])
    first = layouts[0]
    for m, layout in zip(modules[1:], layouts[1:]):
        if layout != first:
            raise ValueError(
                f'{source}: {prefix}.{m} has branches {layout} (block, blocks, width) but {prefix}.0 has {first}; '
                'the modules of one stage must be alike'
            )
    if len(first) != index:
        raise ValueError(f'{source}: {prefix} has {len(first)} branches, HRNet stage {index} has {index}')
    blocks = {b for b, _, _ in first}
    if len(blocks) != 1:
        raise ValueError(f'{source}: {prefix} mixes block types {sorted(blocks)} across branches')
    return StageSpec(len(modules), blocks.pop(), tuple(n for _, n, _ in first), tuple(w for _, _, w in first))


def read_architecture(
        state_dict: Mapping[str, Tensor],
        task: str,
        source: str = 'state dict',
) -> TaskArchitecture:
    """The architecture a pose or segmentation checkpoint was trained with, read from its tensor shapes.

    Raises ValueError naming what did not fit (a classification checkpoint, a missing stage, unlike modules ...).
    Everything not read here (transitions, exchange units) is checked when the weights are loaded. Segmentation
    specs upsample bilinearly with align_corners=False: the checkpoint cannot tell, callers set it (see
    `create_seg_model`).
    """
    _check_task(state_dict, task, source)
    conv1 = _require(state_dict, 'conv1.weight', 4, source)
    stem_width, in_chans = conv1.shape[0], conv1.shape[1]
    block, num_blocks, width = _residual_layer(state_dict, 'layer1', source)
    stages = (StageSpec(1, block, (num_blocks,), (width,)), *(_stage(state_dict, i, source) for i in (2, 3, 4)))
    last = _indices(state_dict, 'stage4')[-1]
    multi_scale = any(k.startswith(f'stage4.{last}.fuse_layers.1.') for k in state_dict)
    if task == POSE:
        head = _require(state_dict, 'final_layer.weight', 4, source)
        spec = HRNetSpec(stages=stages, stem_width=stem_width, multi_scale_output=multi_scale)
    else:
        if not multi_scale:
            raise ValueError(f'{source}: the last module of stage 4 outputs one branch; segmentation needs all four')
        head = _require(state_dict, 'last_layer.3.weight', 4, source)
        spec = HRNetSpec(stages=stages, stem_width=stem_width, upsample='bilinear')
    kernel = head.shape[-1]
    if head.shape[-2] != kernel or kernel not in (1, 3):
        raise ValueError(f'{source}: head kernel {list(head.shape[-2:])}, the official heads use 1x1 or 3x3')
    return TaskArchitecture(task, spec, in_chans, head.shape[0], kernel)


def load_task_weights(model: nn.Module, checkpoint: TaskCheckpoint, reinit_prefixes: tuple[str, ...] = ()) -> None:
    """Copy the checkpoint into `model`, which must take every tensor: missing, unexpected and mis-shaped keys are
    listed by name. Keys under `reinit_prefixes` (a head being replaced for fine-tuning) keep the model's init.
    BatchNorm step counters absent from old checkpoints are filled with zeros."""
    own = model.state_dict()
    state_dict = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith(reinit_prefixes)}
    for key, value in own.items():
        if key.startswith(reinit_prefixes) or (key.endswith(_BN_COUNTER) and key not in state_dict):
            state_dict[key] = value
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    }
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            type(model).__name__, checkpoint.source, missing, unexpected, mismatched,
            hint='(the architecture is read from the checkpoint: keys that do not fit mean a different network)',
        )
    with torch.no_grad():
        model.load_state_dict(state_dict)
