"""Inference-only HRNet: BatchNorm folded into the convolutions and a leaner exchange unit, with identical outputs.

`optimize_for_inference` copies a model and rewrites it from the outside (module surgery):
* every BatchNorm is folded into the convolution before it (the conv gets a bias) and disappears,
* the conv -> BN (-> ReLU) containers become a bare conv or conv -> ReLU, nested path chains are flattened,
* residual blocks add the shortcut into the conv output in place and apply ReLU in place,
* the exchange unit sums every path into one buffer in place; nearest upsampling by an integer factor is a
  broadcast add into a strided view (no upsampled temporary), and the upsampled paths of one target are summed
  coarse-to-fine at low resolution first, so only one add runs at the target's resolution,
* dropout goes, parameters stop requiring gradients, gradient checkpointing is switched off.
The result refuses training: `.train()` and a forward pass in training mode raise a RuntimeError.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.models._features import FeatureDictNet
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .hrnet import BasicBlock, Bottleneck, HRModule, HRNet

__all__ = ['optimize_for_inference', 'is_inference_optimized', 'refuse_training']



def refuse_training() -> None:
    """The error for any attempt to train a fused model (a function, so TorchScript compiles it with the message)."""
    raise RuntimeError(
        'this is an inference-only fused model (BatchNorm folded into the convolutions by '
        'timm_hrnet.optimize_for_inference); it cannot be trained: train the original, unfused model instead'
    )


class InferenceOnlyMixin:
    """Makes `.train()` fail loudly instead of training a network whose BatchNorm statistics are baked in."""

    def train(self, mode: bool = True):
        if mode:
            refuse_training()
        return super().train(False)  # type: ignore[misc]


_INFERENCE_ONLY_CLASSES: dict[type, type] = {}


def _inference_only_class(cls: type) -> type:
    """A subclass of `cls` whose `.train()` refuses training (one per class, so isinstance checks still hold)."""
    if issubclass(cls, InferenceOnlyMixin):
        return cls
    if cls not in _INFERENCE_ONLY_CLASSES:
        _INFERENCE_ONLY_CLASSES[cls] = type(f'InferenceOnly{cls.__name__}', (InferenceOnlyMixin, cls), {})
    return _INFERENCE_ONLY_CLASSES[cls]


def is_inference_optimized(model: nn.Module) -> bool:
    """Whether `model` came out of `optimize_for_inference`."""
    return isinstance(model, InferenceOnlyMixin)


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """`conv` with the eval-mode `norm` after it folded into its weight and (new) bias; changes `conv` in place."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics (track_running_stats=False)')
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias,
    )
    return conv


def _is_conv_bn(module: nn.Module) -> bool:
    """Whether `module` is a conv -> BN (-> ReLU) container."""
    return (
        isinstance(module, nn.Sequential) and len(module) in (2, 3)
        and isinstance(module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d)
        and (len(module) == 2 or isinstance(module[2], nn.ReLU))
    )


def _conv_bn_chain(module: nn.Module) -> nn.Module | None:
    """A conv -> BN (-> ReLU) container, or a Sequential of them, as one flat BN-free chain (None if neither)."""
    if _is_conv_bn(module):
        parts = [module]
    elif isinstance(module, nn.Sequential) and len(module) > 0 and all(_is_conv_bn(part) for part in module):
        parts = list(module)
    else:
        return None
    steps: list[nn.Module] = []
    for part in parts:
        steps.append(_fold(part[0], part[1]))
        if len(part) == 3:
            steps.append(nn.ReLU(inplace=True))
    return steps[0] if len(steps) == 1 else nn.Sequential(*steps)


class InferenceBasicBlock(InferenceOnlyMixin, nn.Module):
    """BasicBlock with folded BN: relu(conv2(relu(conv1(x))) + shortcut), the add and ReLUs in place."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1 = _fold(block.conv1, block.bn1)
        self.conv2 = _fold(block.conv2, block.bn2)
        self.downsample = None if block.downsample is None else _fuse_tree(block.downsample)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            refuse_training()
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.conv2(torch.relu_(self.conv1(x)))
        return torch.relu_(y.add_(shortcut))


class InferenceBottleneck(InferenceOnlyMixin, nn.Module):
    """Bottleneck with folded BN, the residual add and ReLUs in place."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.conv1 = _fold(block.conv1, block.bn1)
        self.conv2 = _fold(block.conv2, block.bn2)
        self.conv3 = _fold(block.conv3, block.bn3)
        self.downsample = None if block.downsample is None else _fuse_tree(block.downsample)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            refuse_training()
        shortcut = x if self.downsample is None else self.downsample(x)
        y = torch.relu_(self.conv2(torch.relu_(self.conv1(x))))
        return torch.relu_(self.conv3(y).add_(shortcut))


def _spatial(x: Tensor) -> list[int]:
    return [x.shape[-2], x.shape[-1]]


def _integer_scale(size: list[int], target: list[int]) -> list[int] | None:
    """Per-axis integer factors when nearest resizing `size` to `target` repeats each pixel, else None."""
    if target[0] % size[0] == 0 and target[1] % size[1] == 0:
        return [target[0] // size[0], target[1] // size[1]]
    return None


def _add_resized_(dst: Tensor, src: Tensor) -> Tensor:
    """dst + nearest-resize(src, dst's size), written into dst; integer factors broadcast into a view of dst.

    While tracing it returns a new tensor instead: the TorchScript-based ONNX exporter mistranslates in-place
    writes through views. Callers use the returned tensor.
    """
    if src.shape[-2:] == dst.shape[-2:]:
        return dst.add_(src)
    scale = _integer_scale(_spatial(src), _spatial(dst))
    if scale is None:
        return dst.add_(F.interpolate(src, size=_spatial(dst), mode='nearest'))
    if torch.jit.is_tracing():
        return _sum_resized(dst, src)
    n, c, h, w = src.shape
    dst.view(n, c, h, scale[0], w, scale[1]).add_(src.view(n, c, h, 1, w, 1))
    return dst


def _sum_resized(base: Tensor, src: Tensor) -> Tensor:
    """A new tensor base + nearest-resize(src, base's size); integer factors broadcast without a resized temporary."""
    scale = _integer_scale(_spatial(src), _spatial(base))
    if scale is None:
        return base + F.interpolate(src, size=_spatial(base), mode='nearest')
    n, c, h, w = src.shape
    summed = torch.add(base.view(n, c, h, scale[0], w, scale[1]), src.view(n, c, h, 1, w, 1))
    return summed.reshape(base.shape)  # a view: the sum is laid out like base


class InferenceHRModule(InferenceOnlyMixin, nn.Module):
    """HRModule with folded BN and an exchange unit that sums into one buffer per branch.

    Keeps the `branches`, `fuse_layers` and `fuse_acts` names so feature hooks on `fuse_acts.i` still fire.
    """

    def __init__(self, module: HRModule) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_fuse_tree(branch) for branch in module.branches])
        self.fuse_layers = nn.ModuleList([
            nn.ModuleList([path if isinstance(path, nn.Identity) else _fuse_tree(path) for path in paths])
            for paths in module.fuse_layers
        ])
        self.fuse_acts = module.fuse_acts

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if self.training:
            refuse_training()
        ys: list[Tensor] = []
        for i, branch in enumerate(self.branches):
            ys.append(branch(xs[i]))
        if len(self.fuse_layers) == 0:
            return ys
        out: list[Tensor] = []
        for i, (paths, act) in enumerate(zip(self.fuse_layers, self.fuse_acts)):
            fused: Tensor | None = None
            coarse: list[Tensor] = []
            for j, path in enumerate(paths):
                if j < i:
                    down = path(ys[j])
                    fused = down if fused is None else fused.add_(down)
                elif j > i:
                    coarse.append(path(ys[j]))
            low = _coarse_to_fine_sum(coarse, ys, i)
            if fused is None:
                fused = ys[i].clone() if low is None else _sum_resized(ys[i], low)
            else:
                fused.add_(ys[i])
                if low is not None:
                    fused = _add_resized_(fused, low)
            out.append(act(fused))
        return out


def _coarse_to_fine_sum(coarse: list[Tensor], ys: list[Tensor], i: int) -> Tensor | None:
    """Sum of the (fresh) projections of branches i+1, i+2, ... to be nearest-resized into branch i.

    Nearest upsampling by integer factors composes, so then the projections are summed coarse-to-fine at low
    resolution and the caller adds the result into branch i once. Otherwise each is resized to branch i on its own.
    """
    size = _spatial(ys[i])
    exact = True
    for j in range(i + 1, len(ys)):
        exact = exact and _integer_scale(_spatial(ys[j]), _spatial(ys[j - 1])) is not None
    low: Tensor | None = None
    for k in range(len(coarse) - 1, -1, -1):
        finer = coarse[k] if exact else F.interpolate(coarse[k], size=size, mode='nearest')
        low = finer if low is None else _add_resized_(finer, low)
    return low


def _fold_named_pairs(module: nn.Module) -> None:
    """Fold `bnK` into `convK` on a module whose forward runs bnK(convK(x)) (HRNet's stem, timm feature wrappers)."""
    for name, child in list(module.named_children()):
        if not (name.startswith('conv') and isinstance(child, nn.Conv2d)):
            continue
        norm_name = 'bn' + name[len('conv'):]
        norm = getattr(module, norm_name, None)
        if isinstance(norm, nn.BatchNorm2d):
            setattr(module, name, _fold(child, norm))
            setattr(module, norm_name, nn.Identity())


def _fuse_tree(module: nn.Module) -> nn.Module:
    """Replace the HRNet pieces found anywhere in `module` by their fused counterparts; returns the new module."""
    if isinstance(module, HRModule):
        return InferenceHRModule(module)
    if isinstance(module, BasicBlock):
        return InferenceBasicBlock(module)
    if isinstance(module, Bottleneck):
        return InferenceBottleneck(module)
    chain = _conv_bn_chain(module)
    if chain is not None:
        return chain
    if isinstance(module, nn.Dropout):
        return nn.Identity()
    if isinstance(module, (HRNet, FeatureDictNet)):
        _fold_named_pairs(module)
    for name, child in list(module.named_children()):
        fused = _fuse_tree(child)
        if fused is not child:
            setattr(module, name, fused)
    return module


def _remaining_batchnorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def optimize_for_inference(model: nn.Module, channels_last: bool = False, inplace: bool = False) -> nn.Module:
    """A fused, inference-only copy of an HRNet (classifier, features_only model or timm feature wrapper).

    Outputs match the eval-mode original up to float rounding. The input model is left untouched unless
    `inplace` (which saves a copy of the weights; the original must not be used afterwards). With `channels_last`
    the weights are stored NHWC, which makes oneDNN/cuDNN run the whole network channels-last.
    """
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
    for param in fused.parameters():
        param.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    fused.__class__ = _inference_only_class(type(fused))
    return fused.eval()
