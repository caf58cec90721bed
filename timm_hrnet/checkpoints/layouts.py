"""The key layouts HRNet checkpoints come in, how to tell them apart, and how each maps to the canonical keys.

* ``canonical``: the official releases (HRNet-Image-Classification, deep-high-resolution-net's pose_hrnet,
  HRNet-Semantic-Segmentation's seg_hrnet, the latter inside its `model.` training wrapper with `loss.*` buffers)
  and timm's hub weights: ``conv1.*`` ... ``stage4.*`` plus the head (``incre_modules.*`` ... ``classifier.*``,
  ``final_layer.weight``, ``last_layer.*``), and the HRNet-OCR branch's ``seg_hrnet_ocr``: the trunk plus
  ``aux_head.*``, ``conv3x3_ocr.*``, ``ocr_distri_head.*`` and ``cls_head.*``.
* ``mmpretrain``: ``backbone.*``, the HRFuseScales neck under ``neck.0.*`` and ``head.fc.*``.
* ``mmpose``: ``backbone.*`` and the heatmap head's ``head.final_layer.*`` (1.x) or ``keypoint_head.final_layer.*``
  (0.x). Its HRNetV2 landmark models (face and hand: the branches concatenated, a 1x1 conv + BN + ReLU, then the
  heatmap conv) keep that 1x1 conv and BN in ``head.conv_layers.0/1.*`` (1.x) or ``keypoint_head.final_layer.0/1.*``
  with the heatmap conv as ``keypoint_head.final_layer.3.*`` (0.x); both are renamed to the official
  HRNet-Facial-Landmark-Detection names, ``head.0/1/3.*`` (canonical).
* ``mmseg``: ``backbone.*`` and an FCNHead, ``decode_head.convs.0.{conv,bn}.*`` and ``decode_head.conv_seg.*``;
  or OCRNet's cascade, the FCNHead as ``decode_head.0.*`` and the OCRHead as ``decode_head.1.*``, renamed to the
  official OCR model's keys (its FCNHead is the official ``aux_head``, its query / key / value / out projections
  the official ``f_pixel`` / ``f_object`` / ``f_down`` / ``f_up``).

OpenMMLab's backbones name BatchNorms ``normN`` where the canonical layout says ``bnN``; that is renamed. Layouts
differ in what they compute too (see `TaskArchitecture` and the task models); the key names alone never decide it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = [
    'CANONICAL', 'MMPRETRAIN', 'MMPOSE', 'MMSEG', 'CLASSIFICATION', 'POSE', 'SEGMENTATION', 'LAYOUT_NAMES',
    'Layout', 'strip_training_wrapper', 'detect_layout', 'to_canonical_keys',
]

CANONICAL = 'canonical'
MMPRETRAIN = 'mmpretrain'
MMPOSE = 'mmpose'
MMSEG = 'mmseg'
MMPOSE_HRNETV2 = 'mmpose-hrnetv2'  # not a layout of its own: the renames of mmpose's landmark heads
# user facing source names -> layout; the official release and timm's hub weights share the canonical layout
LAYOUT_NAMES = {'canonical': CANONICAL, 'official': CANONICAL, 'timm': CANONICAL, 'mmpretrain': MMPRETRAIN,
                'mmpose': MMPOSE, 'mmseg': MMSEG}

CLASSIFICATION = 'classification'
POSE = 'pose'
SEGMENTATION = 'segmentation'

_CANONICAL_ROOTS = frozenset({
    'conv1', 'bn1', 'conv2', 'bn2', 'layer1', 'transition1', 'transition2', 'transition3', 'stage2', 'stage3',
    'stage4', 'incre_modules', 'downsamp_modules', 'final_layer', 'classifier', 'last_layer',
    *('aux_head', 'conv3x3_ocr', 'ocr_distri_head', 'cls_head'),
})
OCR_ROOTS = ('aux_head.', 'conv3x3_ocr.', 'ocr_distri_head.', 'cls_head.')  # the official OCR head's modules
_OFFICIAL_SEG_PREFIX = 'model.'  # HRNet-Semantic-Segmentation saves its FullModel(model, loss) wrapper
_TRAINING_ONLY = ('loss.', 'auxiliary_head.')  # the criterion's class weights; mmseg's training-time auxiliary head
_OCR_DISTRI = 'ocr_distri_head'


def _ocr_projections() -> list[tuple[re.Pattern[str], str]]:
    """mmseg's ObjectAttentionBlock projections (ConvModules: `.conv`, `.bn`; two in a Sequential for query and
    key) -> the official _ObjectAttentionBlock's Sequentials of conv and BNReLU (`Sequential(BN, ReLU)`)."""
    renames = []
    block = r'^decode_head\.1\.object_context_block'
    for mmseg_name, official in (('query', 'f_pixel'), ('key', 'f_object'), ('value', 'f_down'), ('out', 'f_up')):
        target = f'{_OCR_DISTRI}.object_context_block.{official}'
        for k in ((0, 1) if mmseg_name in ('query', 'key') else (None,)):
            source = f'{block}\\.{mmseg_name}_project' + ('' if k is None else f'\\.{k}')
            step = 2 * (k or 0)
            renames.append((re.compile(source + r'\.conv\.'), f'{target}.{step}.'))
            renames.append((re.compile(source + r'\.bn\.'), f'{target}.{step + 1}.0.'))
    return renames


_NORM = (re.compile(r'(^|\.)norm(\d)\.'), r'\1bn\2.')  # OpenMMLab's norm1/norm2 are the canonical bn1/bn2
_BACKBONE = (re.compile(r'^backbone\.'), '')
_RENAMES: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {
    MMPRETRAIN: (
        _BACKBONE,
        (re.compile(r'^neck\.0\.increase_layers\.'), 'incre_modules.'),
        (re.compile(r'^neck\.0\.downsample_layers\.(\d+)\.conv\.'), r'downsamp_modules.\1.0.'),
        (re.compile(r'^neck\.0\.downsample_layers\.(\d+)\.bn\.'), r'downsamp_modules.\1.1.'),
        (re.compile(r'^neck\.0\.final_layer\.conv\.'), 'final_layer.0.'),
        (re.compile(r'^neck\.0\.final_layer\.bn\.'), 'final_layer.1.'),
        (re.compile(r'^head\.fc\.'), 'classifier.'),
    ),
    MMPOSE: (
        _BACKBONE,
        (re.compile(r'^(?:keypoint_)?head\.final_layer\.'), 'final_layer.'),
    ),
    # mmpose's HRNetV2 landmark heads -> the official facial landmark head (nn.Sequential: conv, BN, ReLU, conv)
    MMPOSE_HRNETV2: (
        _BACKBONE,
        (re.compile(r'^keypoint_head\.final_layer\.([013])\.'), r'head.\1.'),
        (re.compile(r'^head\.conv_layers\.([01])\.'), r'head.\1.'),
        (re.compile(r'^head\.final_layer\.(?=weight|bias)'), 'head.3.'),
    ),
    MMSEG: (
        _BACKBONE,
        (re.compile(r'^decode_head\.convs\.0\.conv\.'), 'last_layer.0.'),
        (re.compile(r'^decode_head\.convs\.0\.bn\.'), 'last_layer.1.'),
        (re.compile(r'^decode_head\.conv_seg\.'), 'last_layer.3.'),
        # OCRNet: FCNHead (the official aux_head) then OCRHead
        (re.compile(r'^decode_head\.0\.convs\.0\.conv\.'), 'aux_head.0.'),
        (re.compile(r'^decode_head\.0\.convs\.0\.bn\.'), 'aux_head.1.'),
        (re.compile(r'^decode_head\.0\.conv_seg\.'), 'aux_head.3.'),
        (re.compile(r'^decode_head\.1\.bottleneck\.conv\.'), 'conv3x3_ocr.0.'),
        (re.compile(r'^decode_head\.1\.bottleneck\.bn\.'), 'conv3x3_ocr.1.'),
        (re.compile(r'^decode_head\.1\.conv_seg\.'), 'cls_head.'),
        *_ocr_projections(),
        (re.compile(r'^decode_head\.1\.object_context_block\.bottleneck\.conv\.'), f'{_OCR_DISTRI}.conv_bn_dropout.0.'),
        (re.compile(r'^decode_head\.1\.object_context_block\.bottleneck\.bn\.'), f'{_OCR_DISTRI}.conv_bn_dropout.1.0.'),
    ),
}


@dataclass(frozen=True)
class Layout:
    """A checkpoint's key layout and the task its head is for (None: a trunk without a recognisable head)."""

    name: str
    task: str | None


def strip_training_wrapper(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop training-only tensors and the official segmentation code's `model.` prefix; returns what was dropped."""
    dropped = sorted(k for k in state_dict if k.startswith(_TRAINING_ONLY))
    kept = {k: v for k, v in state_dict.items() if not k.startswith(_TRAINING_ONLY)}
    if kept and all(k.startswith(_OFFICIAL_SEG_PREFIX) for k in kept):
        kept = {k[len(_OFFICIAL_SEG_PREFIX):]: v for k, v in kept.items()}
    return kept, dropped


def _canonical_task(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    if any(k.startswith(('incre_modules.', 'classifier.')) for k in state_dict):
        return CLASSIFICATION
    if 'last_layer.3.weight' in state_dict or any(k.startswith(OCR_ROOTS) for k in state_dict):
        return SEGMENTATION
    if 'final_layer.weight' in state_dict or 'head.3.weight' in state_dict:  # pose_hrnet; the facial landmark net
        return POSE
    return None


def _check_mmseg_heads(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """mmseg's decode heads supported: one FCNHead (fcn_hr*), or OCRNet's cascade of an FCNHead and an OCRHead
    (ocrnet_hr*); any other cascade, or a part of one, is refused by what it lacks."""
    stages = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r'decode_head\.(\d+)\.', k))})
    if not stages:
        return
    if stages == [0]:
        raise ValueError(
            f'{source} is an mmseg cascade with only its first decode head (decode_head.0.*, the FCNHead whose '
            'class maps OCRNet gathers objects by): missing the OCRHead, decode_head.1.*')
    ocr_head = any(k.startswith('decode_head.1.object_context_block.') for k in state_dict)
    if stages != [0, 1] or not ocr_head:
        raise ValueError(
            f'{source} is an mmseg checkpoint with a cascade of decode heads (decode_head.{", ".join(map(str, stages))}'
            '.*) that is not OCRNet (an FCNHead, then an OCRHead with object_context_block.*); only HRNet + FCNHead '
            '(fcn_hr*) and HRNet + OCR (ocrnet_hr*) models are supported')


def _landmark_head(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether an mmpose heatmap head has convs before its heatmap conv (the HRNetV2 landmark heads)."""
    return any(k.startswith(('head.conv_layers.', 'keypoint_head.final_layer.0.')) for k in state_dict)


def _check_mmpose_head(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """mmpose heatmap heads supported: one conv (the pose models), or one 1x1 conv + BN + ReLU before it (the
    HRNetV2 landmark models); deconvolutions and longer conv stacks are refused by what they hold."""
    extra = sorted({m.group(0) for k in state_dict
                    if (m := re.match(r'(?:head\.(?:deconv_layers|conv_layers\.(?![01]\.)\d+)|'
                                      r'keypoint_head\.(?:deconv_layers|final_layer\.(?![013]\.)\d+))', k))})
    if extra:
        raise ValueError(
            f'{source} is an mmpose heatmap model whose head has {", ".join(extra)}.*: only a single heatmap conv '
            '(HRNet pose) or one 1x1 conv + BN + ReLU before it (HRNetV2 face / hand landmarks) is supported')


def detect_layout(state_dict: Mapping[str, torch.Tensor], source: str = 'state dict') -> Layout:
    """The layout and task of a (wrapper-stripped) state dict; a ValueError for unknown or unsupported ones."""
    roots = {key.split('.', 1)[0] for key in state_dict}
    if 'backbone' in roots:
        if 'decode_head' in roots:
            _check_mmseg_heads(state_dict, source)
            return Layout(MMSEG, SEGMENTATION)
        if any(k.startswith(('head.final_layer.', 'keypoint_head.')) for k in state_dict):
            _check_mmpose_head(state_dict, source)
            return Layout(MMPOSE, POSE)
        head = CLASSIFICATION if roots & {'neck', 'head'} else None
        return Layout(MMPRETRAIN, head)
    if roots & _CANONICAL_ROOTS:
        return Layout(CANONICAL, _canonical_task(state_dict))
    sample = ', '.join(list(state_dict)[:5]) or 'none, the state dict is empty'
    raise ValueError(
        f'{source} is not an HRNet checkpoint: unknown checkpoint layout, no key starts with a canonical HRNet module '
        f'({", ".join(sorted(_CANONICAL_ROOTS))}) or an OpenMMLab one (backbone., neck., head., decode_head.); '
        f'first keys: {sample}'
    )


def _rename(key: str, layout: str) -> str | None:
    for pattern, replacement in _RENAMES[layout]:
        renamed, count = pattern.subn(replacement, key)
        if count:
            return _NORM[0].sub(_NORM[1], renamed) if layout in (MMPOSE, MMPOSE_HRNETV2, MMSEG) else renamed
    return None


def to_canonical_keys(
        state_dict: Mapping[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keys renamed to the canonical layout, and the source keys that map nowhere (kept out of the dict)."""
    if layout == CANONICAL:
        return dict(state_dict), []
    table = MMPOSE_HRNETV2 if layout == MMPOSE and _landmark_head(state_dict) else layout
    renamed, unmapped = {}, []
    for key, value in state_dict.items():
        new_key = _rename(key, table)
        if new_key is None:
            unmapped.append(key)
        else:
            renamed[new_key] = value
    return renamed, unmapped
