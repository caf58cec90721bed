"""BatchNorm folding: each eval-mode BN becomes part of the conv before it (weight and bias), so a fused model runs
no normalisation at all, and conv -> BN (-> ReLU) containers become `ConvAct`/`ConvChain` units."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .units import ConvAct, ConvChain


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """`conv` with the eval-mode `norm` after it folded into its weight and (new) bias; changes `conv` in place.

    The folding runs in at least float32 and rounds once to the conv's dtype, so a half-precision model gets no
    extra rounding from it (a float32 model cast to bfloat16 afterwards is rounded only by that cast).
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics (track_running_stats=False)')
    dtype = conv.weight.dtype
    compute = torch.promote_types(dtype, torch.float32)

    def wide(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to(compute)

    weight, bias = fuse_conv_bn_weights(
        wide(conv.weight), wide(conv.bias), wide(norm.running_mean), wide(norm.running_var), norm.eps,
        wide(norm.weight), wide(norm.bias),
    )
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return conv


def _is_conv_bn(module: nn.Module) -> bool:
    """Whether `module` is a conv -> BN (-> ReLU) container."""
    return (
        isinstance(module, nn.Sequential) and len(module) in (2, 3)
        and isinstance(module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d)
        and (len(module) == 2 or isinstance(module[2], nn.ReLU))
    )


def _conv_bn_steps(module: nn.Module) -> list[ConvAct] | None:
    """A conv -> BN (-> ReLU) container, or a Sequential of them, as BN-free ConvActs (None if neither)."""
    if _is_conv_bn(module):
        parts = [module]
    elif isinstance(module, nn.Sequential) and len(module) > 0 and all(_is_conv_bn(part) for part in module):
        parts = list(module)
    else:
        return None
    return [ConvAct(_fold(part[0], part[1]), relu=len(part) == 3) for part in parts]


def _conv_bn_unit(module: nn.Module) -> nn.Module | None:
    """A conv -> BN (-> ReLU) container as one ConvAct, a Sequential of them as a ConvChain (None if neither)."""
    steps = _conv_bn_steps(module)
    if steps is None:
        return None
    return steps[0] if len(steps) == 1 else ConvChain(steps)


def _layers(module: nn.Sequential) -> list[nn.Module] | None:
    """The convs, BatchNorms and ReLUs of a Sequential in order, nested Sequentials (the OCR head's BN -> ReLU
    pairs) flattened and dropout (an identity in inference) left out; None if it holds anything else."""
    layers: list[nn.Module] = []
    for m in module:
        if isinstance(m, nn.Sequential):
            inner = _layers(m)
            if inner is None:
                return None
            layers.extend(inner)
        elif isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)):
            layers.append(m)
        elif not isinstance(m, nn.modules.dropout._DropoutNd):
            return None
    return layers


def _fold_sequential(module: nn.Module) -> nn.Sequential | None:
    """A Sequential of convs, BatchNorms and ReLUs (a task head, e.g. the segmentation head's conv -> BN -> ReLU
    -> conv, or the OCR head's conv -> (BN -> ReLU) pairs) with each BN folded into the conv before it."""
    items = _layers(module) if isinstance(module, nn.Sequential) else None
    if items is None:
        return None
    out, k = [], 0
    while k < len(items):
        if isinstance(items[k], nn.Conv2d) and k + 1 < len(items) and isinstance(items[k + 1], nn.BatchNorm2d):
            relu = k + 2 < len(items) and isinstance(items[k + 2], nn.ReLU)
            out.append(ConvAct(_fold(items[k], items[k + 1]), relu))
            k += 3 if relu else 2
        else:
            out.append(items[k])
            k += 1
    return nn.Sequential(*out)
