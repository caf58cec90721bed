"""Inference-only HRNet: BatchNorm folded into the convolutions and a leaner exchange unit, with identical outputs.

`optimize_for_inference` copies a model and rewrites it from the outside (module surgery):
* every BatchNorm is folded into the convolution before it (the conv gets a bias) and disappears,
* conv -> BN (-> ReLU) containers and nested path chains become flat `ConvAct`/`ConvChain` units,
* on CPU in eager float32 those units run oneDNN's fused kernels: conv + bias + ReLU, and conv + residual add
  (+ ReLU) in one pass, so the residual blocks and the exchange unit run no separate add or ReLU passes;
  elsewhere (CUDA, TorchScript, tracing/ONNX export, torch.compile, autocast, input gradients) they run the plain
  ops, in place where the tensor is fresh,
* the exchange unit sums every path into one buffer: nearest upsampling by an integer factor is a broadcast add
  into a strided view (no upsampled temporary), the upsampled paths of one target are summed coarse-to-fine at low
  resolution first, and the strided paths add straight into the buffer from their last conv, the last with ReLU;
  bilinear exchange units (segmentation) resize each path to the target as the original does,
* the task models work too: the pose model's single-output last module, the segmentation head's conv -> BN -> ReLU
  -> conv (`last_layer`, folded like any such Sequential),
* dropout goes, parameters stop requiring gradients, gradient checkpointing is switched off.
The result refuses training: `.train()` and a forward pass in training mode raise a RuntimeError.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .hrnet import BasicBlock, Bottleneck, HRModule, HRNet, HRNetFeatures, HRNetTrunk
from .pose import HRNetPose
from .segmentation import HRNetSeg
from .timm_compat import FeatureDictNet, FeatureGetterNet, FeatureHookNet

__all__ = ['optimize_for_inference', 'is_inference_optimized', 'refuse_training', 'ConvAct', 'ConvChain']


def refuse_training() -> None:
    """The error for any attempt to train a fused model (a function, so TorchScript compiles it with the message)."""
    raise RuntimeError(
        'this is an inference-only fused model (BatchNorm folded into the convolutions by '
        'timm_hrnet.optimize_for_inference); it cannot be trained: train the original, unfused model instead'
    )


class InferenceOnlyMixin:
    """Makes `.train()` fail loudly instead of training a network whose BatchNorm statistics are baked in."""

    def train(self, mode: bool = True) -> nn.Module:
        if mode:
            refuse_training()
        return super().train(False)  # type: ignore[misc]


class InferenceOnlyHRNet(InferenceOnlyMixin, HRNet):
    """A fused HRNet classifier (module level, so that fused models pickle and `torch.save` whole)."""


class InferenceOnlyHRNetFeatures(InferenceOnlyMixin, HRNetFeatures):
    """A fused `features_only` HRNet."""


class InferenceOnlyHRNetPose(InferenceOnlyMixin, HRNetPose):
    """A fused pose model."""


class InferenceOnlyHRNetSeg(InferenceOnlyMixin, HRNetSeg):
    """A fused segmentation model."""


class InferenceOnlyFeatureGetterNet(InferenceOnlyMixin, FeatureGetterNet):
    """A fused HRNet in timm's `feature_cls='getter'` wrapper."""


class InferenceOnlyFeatureHookNet(InferenceOnlyMixin, FeatureHookNet):
    """A fused HRNet in timm's `feature_cls='hook'` wrapper."""


_INFERENCE_ONLY_CLASSES: dict[type, type] = {
    HRNet: InferenceOnlyHRNet,
    HRNetFeatures: InferenceOnlyHRNetFeatures,
    HRNetPose: InferenceOnlyHRNetPose,
    HRNetSeg: InferenceOnlyHRNetSeg,
    FeatureGetterNet: InferenceOnlyFeatureGetterNet,
    FeatureHookNet: InferenceOnlyFeatureHookNet,
}


def _inference_only_class(cls: type) -> type:
    """A subclass of `cls` whose `.train()` refuses training (one per class, so isinstance checks still hold).

    Unknown classes (e.g. a user's subclass) get one made on the fly; those models work but do not pickle.
    """
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


# a private torch op (stable since torch 2.1); without it the plain ops run, with the same results
_HAS_ONEDNN_POINTWISE = hasattr(torch.ops.mkldnn, '_convolution_pointwise')


@torch.jit.unused
def _onednn_fusable(x: Tensor, weight: Tensor) -> bool:
    """Whether oneDNN's fused conv kernels may run: eager float32 CPU inference without autocast or autograd.

    The callers check `torch.compiler.is_compiling()` first, so torch.compile traces the plain ops and fuses them.
    """
    return (
        x.device.type == 'cpu' and x.dtype == torch.float32 and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        and _HAS_ONEDNN_POINTWISE
        and not torch.jit.is_tracing()
        and not torch.is_autocast_enabled('cpu') and not (torch.is_grad_enabled() and x.requires_grad)
    )


def _strictly_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class ConvAct(nn.Module):
    """A BN-folded conv with an optional ReLU, which can also add its output to another tensor before the ReLU.

    `run(x, other, inplace, relu)` computes relu?(conv(x) + other); with `inplace` the result is written into
    `other`. In eager float32 on CPU this is one oneDNN kernel (post-ops: sum, ReLU).
    """

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
            raise ValueError(f'ConvAct needs explicit zero padding, got {conv}')
        self.conv = conv
        self.relu = relu
        self.padding: list[int] = list(conv.padding)
        self.stride: list[int] = list(conv.stride)
        self.dilation: list[int] = list(conv.dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, None, False, self.relu)

    def run(self, x: Tensor, other: Tensor | None, inplace: bool, relu: bool) -> Tensor:
        if torch.jit.is_scripting():
            return self._run_plain(x, other, inplace, relu)
        else:
            return self._run_eager(x, other, inplace, relu)

    def _run_plain(self, x: Tensor, other: Tensor | None, inplace: bool, relu: bool) -> Tensor:
        y = self.conv(x)
        if other is not None:
            y = other.add_(y) if inplace else y.add_(other)
        return torch.relu_(y) if relu else y

    @torch.jit.unused
    def _run_eager(self, x: Tensor, other: Tensor | None, inplace: bool, relu: bool) -> Tensor:
        weight = self.conv.weight
        if torch.compiler.is_compiling() or not (relu or other is not None) or not _onednn_fusable(x, weight):
            return self._run_plain(x, other, inplace, relu)
        if _strictly_channels_last(weight) and not _strictly_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)  # a channels-last model runs channels-last
        layout = torch.channels_last if _strictly_channels_last(x) else torch.contiguous_format
        if other is not None and not other.is_contiguous(memory_format=layout):
            return self._run_plain(x, other, inplace, relu)
        args = (weight, self.conv.bias, self.padding, self.stride, self.dilation, self.conv.groups)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, *args, 'relu', [], '')
        unary = 'relu' if relu else None
        if inplace:
            return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, *args, 'add', 1.0, unary, [], None)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, *args, 'add', 1.0, unary, [], None)


class ConvChain(nn.Module):
    """BN-folded conv (-> ReLU) steps in a row; `accumulate` lets the last conv add into another tensor."""

    def __init__(self, steps: list[ConvAct]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x)
        return x

    def accumulate(self, x: Tensor, other: Tensor, inplace: bool, relu: bool) -> Tensor:
        """relu?(chain(x) + other), written into `other` when `inplace`."""
        last = len(self.steps) - 1
        for k, step in enumerate(self.steps):
            if k < last:
                x = step(x)
            else:
                x = step.run(x, other, inplace, relu)
        return x


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
    steps = _conv_bn_steps(module)
    if steps is None:
        return None
    return steps[0] if len(steps) == 1 else ConvChain(steps)


def _fuse_path(path: nn.Module) -> ConvChain:
    """An exchange-unit path as a ConvChain (the identity path as an empty one), so all paths share one interface."""
    if isinstance(path, nn.Identity):
        return ConvChain([])
    steps = _conv_bn_steps(path)
    if steps is None:
        raise ValueError(f'unexpected HRModule fuse path: {path}')
    return ConvChain(steps)


def _fused_projection(downsample: nn.Module | None) -> nn.Module | None:
    if downsample is None:
        return None
    unit = _conv_bn_unit(downsample)
    if unit is None:
        raise ValueError(f'unexpected residual projection: {downsample}')
    return unit


def _block_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d, relu: bool) -> ConvAct:
    return ConvAct(_fold(conv, norm), relu)


class InferenceBasicBlock(InferenceOnlyMixin, nn.Module):
    """BasicBlock with folded BN: relu(conv2(relu(conv1(x))) + shortcut), each conv one fused kernel on CPU."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1 = _block_conv(block.conv1, block.bn1, relu=True)
        self.conv2 = _block_conv(block.conv2, block.bn2, relu=False)
        self.downsample = _fused_projection(block.downsample)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            refuse_training()
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv2.run(self.conv1(x), shortcut, False, True)


class InferenceBottleneck(InferenceOnlyMixin, nn.Module):
    """Bottleneck with folded BN: the last conv adds the shortcut and applies ReLU in the same kernel on CPU."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.conv1 = _block_conv(block.conv1, block.bn1, relu=True)
        self.conv2 = _block_conv(block.conv2, block.bn2, relu=True)
        self.conv3 = _block_conv(block.conv3, block.bn3, relu=False)
        self.downsample = _fused_projection(block.downsample)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            refuse_training()
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3.run(self.conv2(self.conv1(x)), shortcut, False, True)


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

    Keeps the `branches`, `fuse_layers` and `fuse_acts` names; the ReLU is applied while summing, so `fuse_acts`
    are identities that feature hooks on `fuse_acts.i` still fire on.
    """

    def __init__(self, module: HRModule) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_fuse_tree(branch) for branch in module.branches])
        self.fuse_layers = nn.ModuleList([
            nn.ModuleList([_fuse_path(path) for path in paths]) for paths in module.fuse_layers
        ])
        self.fuse_acts = nn.ModuleList([_with_hooks_of(act, nn.Identity()) for act in module.fuse_acts])
        self.upsample = module.upsample
        self.align_corners = module.align_corners
        self.resize_paths = module.resize_paths

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
            bilinear = self.upsample == 'bilinear'
            coarse: list[Tensor] = []
            for j, path in enumerate(paths):
                if j > i:
                    y = path(ys[j])
                    if bilinear and self.resize_paths[i][j]:  # not composable: each path resized on its own
                        y = F.interpolate(y, size=_spatial(ys[i]), mode='bilinear', align_corners=self.align_corners)
                    coarse.append(y)
            low = _sum_fresh(coarse) if bilinear else _coarse_to_fine_sum(coarse, ys, i)
            fused: Tensor | None = None if low is None else _sum_resized(ys[i], low)
            for j, path in enumerate(paths):
                if j < i:  # the strided paths add into the sum from their last conv, the last one with the ReLU
                    if fused is None:
                        fused = path.accumulate(ys[j], ys[i], False, j == i - 1)
                    else:
                        fused = path.accumulate(ys[j], fused, True, j == i - 1)
            if fused is None:
                fused = torch.relu(ys[i])
            elif i == 0:
                fused = torch.relu_(fused)
            out.append(act(fused))
        return out


def _sum_fresh(tensors: list[Tensor]) -> Tensor | None:
    """The sum of same-sized fresh tensors, accumulated into the first."""
    total: Tensor | None = None
    for t in tensors:
        total = t if total is None else total.add_(t)
    return total


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


_HOOK_DICTS = (
    '_forward_hooks', '_forward_hooks_with_kwargs', '_forward_hooks_always_called',
    '_forward_pre_hooks', '_forward_pre_hooks_with_kwargs',
)


def _with_hooks_of(old: nn.Module, new: nn.Module) -> nn.Module:
    """`new` carrying `old`'s forward hooks (e.g. timm's feature hooks), so they fire on the replacement."""
    for hooks in _HOOK_DICTS:
        if getattr(old, hooks, None):
            setattr(new, hooks, getattr(old, hooks))
    return new


def _replace(parent: nn.Module, name: str, new: nn.Module) -> None:
    setattr(parent, name, _with_hooks_of(getattr(parent, name), new))


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


def _fold_sequential(module: nn.Module) -> nn.Sequential | None:
    """A Sequential of convs, BatchNorms and ReLUs (a task head) with each BN folded into the conv before it."""
    if not isinstance(module, nn.Sequential):
        return None
    if not all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)) for m in module):
        return None
    items, out, k = list(module), [], 0
    while k < len(items):
        if isinstance(items[k], nn.Conv2d) and k + 1 < len(items) and isinstance(items[k + 1], nn.BatchNorm2d):
            relu = k + 2 < len(items) and isinstance(items[k + 2], nn.ReLU)
            out.append(ConvAct(_fold(items[k], items[k + 1]), relu))
            k += 3 if relu else 2
        else:
            out.append(items[k])
            k += 1
    return nn.Sequential(*out)


def _fuse_tree(module: nn.Module) -> nn.Module:
    """Replace the HRNet pieces found anywhere in `module` by their fused counterparts; returns the new module."""
    if isinstance(module, HRModule):
        return InferenceHRModule(module)
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


def _remaining_batchnorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def optimize_for_inference(model: nn.Module, channels_last: bool = False, inplace: bool = False) -> nn.Module:
    """A fused, inference-only copy of an HRNet (classifier, features_only model, timm feature wrapper, pose or
    segmentation model).

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
