"""Read a pose or segmentation network's architecture from its checkpoint's own tensors.

The released task checkpoints carry no usable config, but every architectural choice is visible in the tensors:
the stem width and input channels (`conv1.weight`), the blocks of each branch (`stageN.M.branches.B.K.*`), whether
the last module fuses into every branch (`stage4.<last>.fuse_layers.1.*`), and the head (`final_layer.weight`:
joints and kernel size; `last_layer.*`: classes, kernel size, whether the first head conv has a bias). So a user
passes only the file. What the tensors cannot show, the layout tells: mmseg's exchange units and head resize with
align_corners=False whatever the dataset, while the official seg_hrnet's setting depends on its training config.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..variants import HRNetSpec, StageSpec
from .layouts import CANONICAL, CLASSIFICATION, MMSEG, OCR_ROOTS, POSE, SEGMENTATION

__all__ = ['TaskArchitecture', 'read_architecture', 'check_task', 'SEG_HEADS', 'FCN', 'OCR', 'HRNETV2']

# segmentation heads: HRNetV2's conv -> BN -> ReLU -> conv (seg_hrnet's last_layer, mmseg's FCNHead), and
# object-contextual representations (seg_hrnet_ocr, mmseg's OCRNet)
FCN = 'fcn'
OCR = 'ocr'
SEG_HEADS = (FCN, OCR)
# the pose head of HRNetV2's landmark models (HRNet-Facial-Landmark-Detection, mmpose's face and hand models): all
# branches upsampled and concatenated, a 1x1 conv + BN + ReLU, a conv to the heatmaps (canonical keys head.0/1/3)
HRNETV2 = 'hrnetv2'


@dataclass(frozen=True)
class TaskArchitecture:
    """What a task checkpoint says about the network.

    `num_outputs` is the joint (pose) or class (segmentation) count. `head_bias`: whether the segmentation head's
    first conv has a bias (the official head does, mmseg's FCNHead conv, followed by BatchNorm, does not).
    `align_corners` is known for layouts that fix it (mmseg: False) and None where the training config decides.
    `head` (segmentation) is 'fcn' or 'ocr'; for pose, 'hrnetv2' marks the landmark head (else unused). An OCR
    head's `ocr_channels` are its (mid, key) widths (official W48: 512, 256), its `head_bias` says whether its
    aux_head and conv3x3_ocr convs have biases (the official code's do, mmseg's OCRNet's do not).
    """

    task: str
    spec: HRNetSpec
    in_chans: int
    num_outputs: int
    final_conv_kernel: int
    head_bias: bool = True
    align_corners: bool | None = None
    head: str = FCN
    ocr_channels: tuple[int, int] | None = None


_HEAD_KEYS = {POSE: 'final_layer.weight (a conv to the joint heatmaps) or an HRNetV2 landmark head, head.0/1/3.*',
              SEGMENTATION: 'last_layer.0/1/3.* (conv, BatchNorm, conv to the classes) or an OCR head (aux_head.*, '
                            'conv3x3_ocr.*, ocr_distri_head.*, cls_head.*)'}
_CREATE = {POSE: 'timm_hrnet.create_pose_model', SEGMENTATION: 'timm_hrnet.create_seg_model',
           CLASSIFICATION: "timm.create_model('hrnet_wNN', checkpoint_path=...)"}


def check_task(found: str | None, task: str, source: str) -> None:
    """A ValueError saying what the checkpoint is, and what loads it, unless it is a `task` checkpoint."""
    if found == task:
        return
    what = f'an HRNet {found} checkpoint' if found else 'not an HRNet pose or segmentation checkpoint'
    hint = f'; load it with {_CREATE[found]}' if found else ''
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
        layout: str = CANONICAL,
) -> TaskArchitecture:
    """The architecture a pose or segmentation checkpoint was trained with, read from its tensor shapes.

    `state_dict` has canonical keys (see `layouts.to_canonical_keys`) and is a `task` checkpoint (`check_task`).
    Raises ValueError naming what did not fit (a missing stage, unlike modules ...). Everything not read here
    (transitions, exchange units) is checked when the weights are loaded. Segmentation specs upsample bilinearly;
    their align_corners is the layout's (`TaskArchitecture.align_corners`) or the caller's (`create_seg_model`).
    """
    conv1 = _require(state_dict, 'conv1.weight', 4, source)
    stem_width, in_chans = conv1.shape[0], conv1.shape[1]
    block, num_blocks, width = _residual_layer(state_dict, 'layer1', source)
    stages = (StageSpec(1, block, (num_blocks,), (width,)), *(_stage(state_dict, i, source) for i in (2, 3, 4)))
    last = _indices(state_dict, 'stage4')[-1]
    multi_scale = any(k.startswith(f'stage4.{last}.fuse_layers.1.') for k in state_dict)
    if task == POSE and 'head.3.weight' in state_dict:
        return _landmark_architecture(state_dict, stages, stem_width, in_chans, multi_scale, source)
    if task == POSE:
        head = _require(state_dict, 'final_layer.weight', 4, source)
        spec = HRNetSpec(stages=stages, stem_width=stem_width, multi_scale_output=multi_scale)
    else:
        if not multi_scale:
            raise ValueError(f'{source}: the last module of stage 4 outputs one branch; segmentation needs all four')
        if any(k.startswith(OCR_ROOTS) for k in state_dict):
            spec = HRNetSpec(stages=stages, stem_width=stem_width, upsample='bilinear',
                             upsample_by_stride=layout == MMSEG)
            return _ocr_architecture(state_dict, spec, in_chans, source, layout)
        head = _require(state_dict, 'last_layer.3.weight', 4, source)
        spec = HRNetSpec(stages=stages, stem_width=stem_width, upsample='bilinear', upsample_by_stride=layout == MMSEG)
    kernel = head.shape[-1]
    if head.shape[-2] != kernel or kernel not in (1, 3):
        raise ValueError(f'{source}: head kernel {list(head.shape[-2:])}, the official heads use 1x1 or 3x3')
    if task == POSE:
        return TaskArchitecture(task, spec, in_chans, head.shape[0], kernel)
    mixer = _require(state_dict, 'last_layer.0.weight', 4, source)
    if mixer.shape[-2:] != (1, 1):
        raise ValueError(f'{source}: the first head conv is {list(mixer.shape[-2:])}, the supported heads use 1x1')
    align_corners = False if layout == MMSEG else None
    return TaskArchitecture(task, spec, in_chans, head.shape[0], kernel, 'last_layer.0.bias' in state_dict,
                            align_corners)


def _landmark_architecture(state_dict: Mapping[str, Tensor], stages: tuple[StageSpec, ...], stem_width: int,
                           in_chans: int, multi_scale: bool, source: str) -> TaskArchitecture:
    """The HRNetV2 landmark head (`HRNETV2`), checked part by part. Both reference codes upsample bilinearly in the
    exchange units of these models (the official facial code always, mmpose's configs by `upsample`), which the
    tensors cannot show: the head decides it."""
    if not multi_scale:
        raise ValueError(f'{source}: the last module of stage 4 outputs one branch, the HRNetV2 landmark head '
                         '(head.0/1/3.*) concatenates all four')
    concat = sum(stages[-1].channels) * (4 if stages[-1].block == 'bottleneck' else 1)
    mixer = _require(state_dict, 'head.0.weight', 4, source)
    _require(state_dict, 'head.1.running_var', 1, source)
    heatmap = _require(state_dict, 'head.3.weight', 4, source)
    if tuple(mixer.shape) != (concat, concat, 1, 1):
        raise ValueError(f'{source}: head.0.weight has shape {list(mixer.shape)}; the HRNetV2 landmark head starts '
                         f'with a 1x1 conv of the {concat} concatenated branch channels to as many')
    if tuple(heatmap.shape[1:]) != (concat, 1, 1):
        raise ValueError(f'{source}: head.3.weight has shape {list(heatmap.shape)}; the released landmark heads end '
                         f'with a 1x1 conv from {concat} channels to the heatmaps')
    spec = HRNetSpec(stages=stages, stem_width=stem_width, upsample='bilinear', multi_scale_output=True)
    return TaskArchitecture(POSE, spec, in_chans, heatmap.shape[0], 1, head=HRNETV2)


# the OCR head's weights, each (key, what it is): a file lacking any of them is truncated or not an OCR model
_BLOCK = 'ocr_distri_head.object_context_block'
_OCR_WEIGHTS = (
    ('aux_head.0.weight', 'the auxiliary head'), ('aux_head.1.running_var', 'the auxiliary head'),
    ('aux_head.3.weight', 'the auxiliary class conv'),
    ('conv3x3_ocr.0.weight', 'the OCR 3x3 conv'), ('conv3x3_ocr.1.running_var', 'the OCR 3x3 conv'),
    *((f'{_BLOCK}.{name}.{k}', 'the object attention block') for name in ('f_pixel', 'f_object')
      for k in ('0.weight', '1.0.running_var', '2.weight', '3.0.running_var')),
    *((f'{_BLOCK}.{name}.{k}', 'the object attention block') for name in ('f_down', 'f_up')
      for k in ('0.weight', '1.0.running_var')),
    ('ocr_distri_head.conv_bn_dropout.0.weight', 'the OCR fusion conv'),
    ('ocr_distri_head.conv_bn_dropout.1.0.running_var', 'the OCR fusion conv'),
    ('cls_head.weight', 'the OCR class conv'),
)


def _conv(state_dict: Mapping[str, Tensor], key: str, kernel: int, source: str) -> Tensor:
    weight = _require(state_dict, key, 4, source)
    if tuple(weight.shape[-2:]) != (kernel, kernel):
        raise ValueError(f'{source}: {key} has kernel {list(weight.shape[-2:])}, the OCR head has {kernel}x{kernel}')
    return weight


def _ocr_architecture(state_dict: Mapping[str, Tensor], spec: HRNetSpec, in_chans: int, source: str,
                      layout: str) -> TaskArchitecture:
    """The OCR head (official seg_hrnet_ocr, or mmseg's OCRNet renamed to it): class count, (mid, key) widths and
    conv biases, after checking that every part of it is there."""
    missing = [(key, what) for key, what in _OCR_WEIGHTS if key not in state_dict]
    if missing:
        present = [key for key, _ in _OCR_WEIGHTS if key in state_dict]
        if present and all(key.startswith('aux_head.') for key in present):
            problem = ('only the auxiliary head (aux_head.*, mmseg: decode_head.0.*) of an HRNet-OCR model, not its '
                       'OCR head (conv3x3_ocr, ocr_distri_head, cls_head; mmseg: decode_head.1.*)')
        else:
            parts = sorted({what for _, what in missing})
            problem = (f"a truncated OCR head: missing {', '.join(parts)} ({missing[0][0]}"
                       + (f' and {len(missing) - 1} more' if len(missing) > 1 else '')
                       + ("; mmseg's decode_head.0/1.* keys named as the official ones" if layout == MMSEG else '')
                       + ')')
        raise ValueError(f'{source} has {problem}')
    aux = _conv(state_dict, 'aux_head.3.weight', 1, source)
    cls = _conv(state_dict, 'cls_head.weight', 1, source)
    _conv(state_dict, 'aux_head.0.weight', 1, source)
    mid = _conv(state_dict, 'conv3x3_ocr.0.weight', 3, source).shape[0]
    key_channels = _conv(state_dict, f'{_BLOCK}.f_pixel.0.weight', 1, source).shape[0]
    if aux.shape[0] != cls.shape[0]:
        raise ValueError(f'{source}: the auxiliary head has {aux.shape[0]} classes, the OCR head {cls.shape[0]}')
    biases = {key: key in state_dict for key in ('aux_head.0.bias', 'conv3x3_ocr.0.bias')}
    if len(set(biases.values())) > 1:
        raise ValueError(f'{source}: of the convs aux_head.0 and conv3x3_ocr.0 only one has a bias; the official OCR '
                         'head gives both one, mmseg\'s OCRNet neither')
    head_bias = biases['aux_head.0.bias']
    if layout == MMSEG and head_bias:
        raise ValueError(f'{source} is read as mmseg\'s OCRNet, but its aux_head.0 / conv3x3_ocr.0 convs have biases, '
                         'as only the official seg_hrnet_ocr has: load it as an official HRNet-OCR checkpoint')
    return TaskArchitecture(SEGMENTATION, spec, in_chans, cls.shape[0], 1, head_bias,
                            False if layout == MMSEG else None, head=OCR, ocr_channels=(mid, key_channels))
