"""Inference-only HRNet: BatchNorm folded into the convolutions and a leaner exchange unit, with identical outputs.

`optimize_for_inference` copies a model and rewrites it from the outside (module surgery):
* every BatchNorm is folded into the convolution before it (in float32, then cast once to the requested dtype),
* conv -> BN (-> ReLU) containers and nested path chains become flat `ConvAct`/`ConvChain` units,
* on CPU in eager float32 and bfloat16 (where the CPU has bf16 instructions) those units run oneDNN's fused
  kernels: conv + bias + ReLU, and conv + residual add (+ ReLU) in one pass, with the weights packed once into
  oneDNN's blocked layout for a channels-last model; elsewhere (CUDA, TorchScript, tracing/export, torch.compile,
  autocast, input gradients) they run the plain ops,
* residual blocks write their sum into the shortcut (the block input, an intermediate nothing else reads), so a
  branch runs in one buffer, as torch.compile arranges it,
* the exchange unit sums every path into one buffer per target: the upsampled paths of one target are summed
  coarse-to-fine at low resolution (nearest upsampling by integer factors composes), and the strided paths add
  straight into the buffer from their last conv, the last with ReLU; bilinear exchange units (segmentation), and
  any export, resize each path to the target as the original does, so exported graphs hold no sizes,
* the task models work too: the pose model's single-output last module, the segmentation head's conv -> BN -> ReLU
  -> conv (`last_layer`, folded like any such Sequential), the OCR head's convs with their nested BN -> ReLU pairs
  (the attention block's projections, the fusion conv; its dropout goes),
* optionally (`branch_widths`) the branches of stages 2-4 are zero-padded to widths GPU tensor cores prefer,
* dropout goes, parameters stop requiring gradients, gradient checkpointing is switched off.
The result refuses training: `.train()` and a forward pass in training mode raise a RuntimeError.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..hrnet import BasicBlock, Bottleneck, HRModule, HRNetTrunk
from ..timm_compat import FeatureDictNet
from .folding import _conv_bn_unit, _fold, _fold_sequential
from .hooks import _replace
from .inference_only import inference_only_class
from .modules import InferenceBasicBlock, InferenceBottleneck, InferenceHRModule
from .padding import pad_branches
from .units import CallState, ConvAct

__all__ = ['optimize_for_inference']


def _fuse_stem(module: nn.Module) -> None:
    """Fold `bnK` into `convK` and fuse `actK` on a module whose forward runs actK(bnK(convK(x))) (HRNet's stem,
    timm's feature wrappers); the emptied BN and ReLU slots become identities, which feature hooks still see."""
    for k in (1, 2):
        conv, norm, act = (getattr(module, f'{kind}{k}', None) for kind in ('conv', 'bn', 'act'))
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            fuse_relu = isinstance(act, nn.ReLU)
            _replace(module, f'conv{k}', ConvAct(_fold(conv, norm), relu=fuse_relu))
            _replace(module, f'bn{k}', nn.Identity())
            if fuse_relu:
                _replace(module, f'act{k}', nn.Identity())


def _fuse_tree(module: nn.Module) -> nn.Module:
    """Replace the HRNet pieces found anywhere in `module` by their fused counterparts; returns the new module."""
    if isinstance(module, HRModule):
        return InferenceHRModule(module, [_fuse_tree(branch) for branch in module.branches])
    if isinstance(module, BasicBlock):
        return InferenceBasicBlock(module)
    if isinstance(module, Bottleneck):
        return InferenceBottleneck(module)
    unit = _conv_bn_unit(module)
    if unit is not None:
        return unit
    head = _fold_sequential(module)
    if head is not None:
        return head
    if isinstance(module, nn.Dropout):
        return nn.Identity()
    if isinstance(module, (HRNetTrunk, FeatureDictNet)):
        _fuse_stem(module)
    for name, child in list(module.named_children()):
        fused = _fuse_tree(child)
        if fused is not child:
            _replace(module, name, fused)
    return module


def _share_call_state(model: nn.Module) -> None:
    """One `CallState` for the model and all its convs: the model decides per call whether they run fused kernels."""
    state = CallState()
    model.call_state = state
    for module in model.modules():
        if isinstance(module, ConvAct):
            module.call_state = state


def _remaining_batchnorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def optimize_for_inference(
        model: nn.Module,
        channels_last: bool = False,
        inplace: bool = False,
        dtype: torch.dtype | None = None,
        branch_widths: Sequence[int] | None = None,
) -> nn.Module:
    """A fused, inference-only copy of an HRNet (classifier, features_only model, timm feature wrapper, pose or
    segmentation model).

    Outputs match the eval-mode original up to float rounding. The input model is left untouched unless
    `inplace` (which saves a copy of the weights; the original must not be used afterwards). With `channels_last`
    the weights are stored NHWC, which makes oneDNN/cuDNN run the whole network channels-last (recommended). With
    `dtype` (e.g. torch.bfloat16) the fused model is cast to it after folding, so it takes and returns tensors of
    that dtype, and its weights are rounded once, from the float32 folding.

    `branch_widths` (e.g. (24, 48, 96, 192) for a W18 model) zero-pads the channels of the branches inside stages
    2-4 to these widths, for GPUs whose tensor cores idle at narrow widths like 18 and 36 (on CPU it only adds
    work). The outputs stay the same: the padded weights and biases are zero, so the padded channels stay exactly
    zero and contribute nothing, and the last exchange unit computes the original widths again.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f'dtype must be a floating-point dtype, got {dtype}')
    # normal tensors even when called under torch.inference_mode: the packed weights watch their version counters
    with torch.inference_mode(False):
        fused = (model if inplace else copy.deepcopy(model)).eval()
        if hasattr(fused, 'set_grad_checkpointing'):
            fused.set_grad_checkpointing(False)
        fused = _fuse_tree(fused)
        leftover = _remaining_batchnorms(fused)
        if leftover:
            raise ValueError(
                f'optimize_for_inference could not fold these BatchNorm layers of a {type(model).__name__}: '
                f'{", ".join(leftover)} (only HRNet structures are supported)'
            )
        if branch_widths is not None:
            pad_branches(fused, list(branch_widths))
        for param in fused.parameters():
            param.requires_grad_(False)
        if dtype is not None:
            fused = fused.to(dtype)
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
    fused.__class__ = inference_only_class(type(fused))
    _share_call_state(fused)
    return fused.eval()
