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
  -> conv (`last_layer`, folded like any such Sequential),
* optionally (`branch_widths`) the branches of stages 2-4 are zero-padded to widths GPU tensor cores prefer,
* dropout goes, parameters stop requiring gradients, gradient checkpointing is switched off.
The result refuses training: `.train()` and a forward pass in training mode raise a RuntimeError.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any

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


# per thread, while a fused model runs: whether its convs may run oneDNN's fused kernels (decided once per call:
# every conv sees the same context and an input of the same kind); None otherwise, then each conv decides itself
_CALL = threading.local()


class InferenceOnlyModel(InferenceOnlyMixin):
    """A whole fused model: besides refusing training, it decides once per call whether its convs run oneDNN's
    fused kernels, instead of each of its ~300 convs checking the context between kernels (milliseconds a call)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (
            torch.compiler.is_compiling() or getattr(_CALL, 'fusable', None) is not None
            or not args or not isinstance(args[0], Tensor)
        ):
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        _CALL.fusable = _onednn_fusable(args[0])
        try:
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        finally:
            _CALL.fusable = None


class InferenceOnlyHRNet(InferenceOnlyModel, HRNet):
    """A fused HRNet classifier (module level, so that fused models pickle and `torch.save` whole)."""


class InferenceOnlyHRNetFeatures(InferenceOnlyModel, HRNetFeatures):
    """A fused `features_only` HRNet."""


class InferenceOnlyHRNetPose(InferenceOnlyModel, HRNetPose):
    """A fused pose model."""


class InferenceOnlyHRNetSeg(InferenceOnlyModel, HRNetSeg):
    """A fused segmentation model."""


class InferenceOnlyFeatureGetterNet(InferenceOnlyModel, FeatureGetterNet):
    """A fused HRNet in timm's `feature_cls='getter'` wrapper."""


class InferenceOnlyFeatureHookNet(InferenceOnlyModel, FeatureHookNet):
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
    """A subclass of `cls` that refuses training and runs as `InferenceOnlyModel` (one per class, so isinstance
    checks still hold).

    Unknown classes (e.g. a user's subclass) get one made on the fly; those models work but do not pickle.
    """
    if issubclass(cls, InferenceOnlyMixin):
        return cls
    if cls not in _INFERENCE_ONLY_CLASSES:
        _INFERENCE_ONLY_CLASSES[cls] = type(f'InferenceOnly{cls.__name__}', (InferenceOnlyModel, cls), {})
    return _INFERENCE_ONLY_CLASSES[cls]


def is_inference_optimized(model: nn.Module) -> bool:
    """Whether `model` came out of `optimize_for_inference`."""
    return isinstance(model, InferenceOnlyMixin)


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


# private torch ops (stable since torch 2.1); without them the plain ops run, with the same results
_ONEDNN = hasattr(torch.ops.mkldnn, '_convolution_pointwise') and torch.backends.mkldnn.is_available()
# bfloat16 only where the CPU has bf16 instructions (AVX512-BF16, AMX): oneDNN's emulation is slower than plain ops
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16) if _ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported() else (
    torch.float32,)


@torch.jit.unused
def _onednn_fusable(x: Tensor) -> bool:
    """Whether oneDNN's fused conv kernels may run on `x`: eager float32/bfloat16 CPU inference, no autocast or
    autograd; torch.compile and tracing see the plain ops (inductor fuses them itself)."""
    return (
        _ONEDNN and x.is_cpu and x.dtype in _ONEDNN_DTYPES and not (x.requires_grad and torch.is_grad_enabled())
        and torch.backends.mkldnn.enabled and not torch.jit.is_tracing() and not torch.is_autocast_enabled('cpu')
        and not torch.compiler.is_compiling()
    )


# torch < 2.7 has no is_exporting; torch.export then traces through the compiler, so compiling stands in for it
# (under torch.compile the shape-agnostic path then runs too: same results, inductor fuses it either way)
_is_exporting = getattr(torch.compiler, 'is_exporting', torch.compiler.is_compiling)


@torch.jit.unused
def _exporting() -> bool:
    """Whether a graph is being recorded for export (torch.jit.trace, either ONNX exporter, torch.export), where
    only shape-agnostic ops may run: Python arithmetic on sizes would be baked into the graph as constants."""
    return torch.jit.is_tracing() or _is_exporting()


def _strictly_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class ConvAct(nn.Module):
    """A BN-folded conv with an optional ReLU, which can also add its output to another tensor before the ReLU.

    `run(x, other, inplace, relu)` computes relu?(conv(x) + other); with `inplace` the result is written into
    `other`. In eager float32/bfloat16 on CPU this is one oneDNN kernel (post-ops: sum, ReLU); channels-last, that
    kernel gets the weight already reordered into oneDNN's blocked layout (packed on first use and kept until the
    weight changes), which saves a reorder of every weight on every call.
    """

    __jit_ignored_attributes__ = ['_pack']
    # (weight's data_ptr and version), an alias of that weight (keeps its storage, hence its address, in use while
    # cached) and the packed weight; not state: dropped when pickled or copied, rebuilt on the next call
    _pack: tuple[tuple[int, int], Tensor, Tensor] | None = None

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
            raise ValueError(f'ConvAct needs explicit zero padding, got {conv}')
        self.conv = conv
        self.relu = relu
        self.padding: list[int] = list(conv.padding)
        self.stride: list[int] = list(conv.stride)
        self.dilation: list[int] = list(conv.dilation)

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state.pop('_pack', None)
        return state

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ConvAct:
        self.__dict__.pop('_pack', None)  # .to(), .cuda(), .bfloat16(): the packed copy is stale
        return super()._apply(fn, recurse)

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
        conv = self.conv
        weight = conv.weight
        fusable = getattr(_CALL, 'fusable', None)  # decided by the model's call; None: called on its own
        if not (_onednn_fusable(x) if fusable is None else fusable) or x.dtype != weight.dtype:
            return self._run_plain(x, other, inplace, relu)
        channels_last = _strictly_channels_last(x)
        if not channels_last and _strictly_channels_last(weight):
            x = x.contiguous(memory_format=torch.channels_last)  # a channels-last model runs channels-last
            channels_last = _strictly_channels_last(x)
        if channels_last:
            weight = self._packed_weight(weight, x)
        elif other is not None and x.dtype != torch.float32:
            return self._run_plain(x, other, inplace, relu)  # NCHW, torch adds with _add_relu, which lacks bf16
        layout = torch.channels_last if channels_last else torch.contiguous_format
        if other is not None and not other.is_contiguous(memory_format=layout):
            return self._run_plain(x, other, inplace, relu)
        args = (weight, conv.bias, self.padding, self.stride, self.dilation, conv.groups)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise.default(x, *args, 'relu' if relu else 'none', [], '')
        unary = 'relu' if relu else None
        if inplace:
            return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, *args, 'add', 1.0, unary, [], None)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, *args, 'add', 1.0, unary, [], None)

    @torch.jit.unused
    def _packed_weight(self, weight: Tensor, x: Tensor) -> Tensor:
        """The weight in oneDNN's blocked layout for inputs like `x` (a different input shape still runs with it).

        Inference tensors (weights converted under torch.inference_mode) carry no version counter, so an in-place
        change would go unnoticed: those stay unpacked.
        """
        try:
            key = (weight.data_ptr(), weight._version)
        except RuntimeError:  # an inference tensor
            return weight
        if self._pack is None or self._pack[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, self.padding, self.stride, self.dilation, self.conv.groups, list(x.shape))
            self._pack = (key, weight.detach(), packed)
        return self._pack[2]


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


def _writable_input(x: Tensor) -> bool:
    """Whether a residual block may write its sum into its input tensor (the shortcut), as torch.compile does.

    In the fused network every block input is an intermediate that nothing reads after the block (the previous
    block's or exchange unit's fresh output); accumulating there keeps a branch in one buffer instead of a new one
    per block. Not while autograd records: the input may be saved for the backward pass.
    """
    return not (torch.is_grad_enabled() and x.requires_grad)


class InferenceBasicBlock(InferenceOnlyMixin, nn.Module):
    """BasicBlock with folded BN: relu(conv2(relu(conv1(x))) + shortcut), each conv one fused kernel on CPU; the
    sum is written into the shortcut, the block input itself when there is no projection (see `_writable_input`)."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1 = _block_conv(block.conv1, block.bn1, relu=True)
        self.conv2 = _block_conv(block.conv2, block.bn2, relu=False)
        self.downsample = _fused_projection(block.downsample)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            refuse_training()
        if self.downsample is None:
            return self.conv2.run(self.conv1(x), x, _writable_input(x), True)
        return self.conv2.run(self.conv1(x), self.downsample(x), True, True)


class InferenceBottleneck(InferenceOnlyMixin, nn.Module):
    """Bottleneck with folded BN: the last conv adds the shortcut and applies ReLU in the same kernel on CPU, written
    into the shortcut as in `InferenceBasicBlock`."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.conv1 = _block_conv(block.conv1, block.bn1, relu=True)
        self.conv2 = _block_conv(block.conv2, block.bn2, relu=True)
        self.conv3 = _block_conv(block.conv3, block.bn3, relu=False)
        self.downsample = _fused_projection(block.downsample)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            refuse_training()
        if self.downsample is None:
            return self.conv3.run(self.conv2(self.conv1(x)), x, _writable_input(x), True)
        return self.conv3.run(self.conv2(self.conv1(x)), self.downsample(x), True, True)


def _block_width(block: BasicBlock | Bottleneck) -> int:
    return (block.conv3 if isinstance(block, Bottleneck) else block.conv2).out_channels


def _spatial(x: Tensor) -> list[int]:
    return [x.shape[-2], x.shape[-1]]


def _nearest(x: Tensor, size: list[int]) -> Tensor:
    """`x` nearest-resized to `size` (`x` itself when it has that size already)."""
    if _spatial(x) == size:
        return x
    return F.interpolate(x, size=size, mode='nearest')


def _add_nearest_(dst: Tensor, src: Tensor) -> Tensor:
    """dst + nearest-resize(src, dst's size), written into the fresh `dst`.

    Resizing into a temporary and adding two dense tensors beats a broadcast add into a strided 6-D view of dst
    (measured 1.5-2x in float32, 2-4x in bfloat16, where the strided add barely vectorizes), and needs no
    integer-factor shape arithmetic.
    """
    return dst.add_(_nearest(src, _spatial(dst)))


def _integer_factors(size: list[int], target: list[int]) -> bool:
    """Whether nearest resizing `size` to `target` repeats each pixel a whole number of times (then resizes compose)."""
    return target[0] % size[0] == 0 and target[1] % size[1] == 0


class InferenceHRModule(InferenceOnlyMixin, nn.Module):
    """HRModule with folded BN and an exchange unit that sums into one buffer per branch.

    Keeps the `branches`, `fuse_layers` and `fuse_acts` names; the ReLU is applied while summing, so `fuse_acts`
    are identities that feature hooks on `fuse_acts.i` still fire on.
    """

    def __init__(self, module: HRModule) -> None:
        super().__init__()
        # each branch's width; with `narrow` (this module is the network's last and its branches are zero-padded)
        # the outputs keep only these channels of each branch
        self.out_channels = [_block_width(branch[-1]) for branch in module.branches]
        self.narrow = False
        self.branches = nn.ModuleList([_fuse_tree(branch) for branch in module.branches])
        self.fuse_layers = nn.ModuleList([
            nn.ModuleList([_fuse_path(path) for path in paths]) for paths in module.fuse_layers
        ])
        self.fuse_acts = nn.ModuleList([_with_hooks_of(act, nn.Identity()) for act in module.fuse_acts])
        self.upsample = module.upsample
        self.align_corners = module.align_corners
        self.resize_paths = module.resize_paths

    def _resize_per_path(self) -> bool:
        """Resize every upsampled path to its target on its own, as the original does: always when bilinear (those
        resizes do not compose), and while exporting (the coarse-to-fine sum depends on the sizes' divisibility)."""
        if self.upsample == 'bilinear':
            return True
        if torch.jit.is_scripting():
            return False
        return _exporting()

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if self.training:
            refuse_training()
        ys: list[Tensor] = []
        for i, branch in enumerate(self.branches):
            ys.append(branch(xs[i]))
        if len(self.fuse_layers) == 0:
            return ys
        per_path = self._resize_per_path()
        out: list[Tensor] = []
        for i, (paths, act) in enumerate(zip(self.fuse_layers, self.fuse_acts)):
            coarse: list[Tensor] = []
            for j, path in enumerate(paths):
                if j > i:
                    y = path(ys[j])
                    if per_path and self.resize_paths[i][j]:
                        y = F.interpolate(
                            y, size=ys[i].shape[-2:], mode=self.upsample, align_corners=self.align_corners)
                    coarse.append(y)
            own = ys[i][:, :self.out_channels[i]] if self.narrow else ys[i]
            fused: Tensor | None = None
            if per_path:
                low = _sum_fresh(coarse)
                if low is not None:
                    fused = low.add_(own)
            else:
                low = _coarse_to_fine_sum(coarse, ys, i)
                if low is not None:  # ys[i] + low in a fresh buffer: ys[i] still feeds the other targets' paths
                    fused = _nearest(low, _spatial(ys[i])).add_(own)
            for j, path in enumerate(paths):
                if j < i:  # the strided paths add into the sum from their last conv, the last one with the ReLU
                    if fused is None:
                        fused = path.accumulate(ys[j], own, False, j == i - 1)
                    else:
                        fused = path.accumulate(ys[j], fused, True, j == i - 1)
            if fused is None:
                fused = torch.relu(own)
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
    """Sum of the (fresh) projections of branches i+1, i+2, ..., to be nearest-resized into branch i.

    Nearest upsampling by integer factors composes, so then the projections are summed coarse-to-fine, each into
    the next finer one, and the caller resizes the sum into branch i once. Otherwise each is resized to branch i
    on its own.
    """
    size = _spatial(ys[i])
    exact = True
    for j in range(i + 1, len(ys)):
        exact = exact and _integer_factors(_spatial(ys[j]), _spatial(ys[j - 1]))
    low: Tensor | None = None
    for k in range(len(coarse) - 1, -1, -1):
        finer = coarse[k] if exact else _nearest(coarse[k], size)
        low = finer if low is None else _add_nearest_(finer, low)
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


def _pad_conv(unit: ConvAct, in_channels: int, out_channels: int) -> None:
    """Grow `unit`'s conv to `in_channels` inputs and `out_channels` outputs with zero weights and zero bias: the
    added outputs are exactly 0 (also after ReLU), and the added inputs, themselves 0, contribute nothing."""
    conv = unit.conv
    weight, bias = conv.weight, conv.bias
    out_old, in_old = weight.shape[:2]
    if in_channels < in_old or out_channels < out_old:
        raise ValueError(f'branch_widths must not narrow the branches: a conv with {in_old} -> {out_old} channels '
                         f'cannot become {in_channels} -> {out_channels}')
    if (in_old, out_old) == (in_channels, out_channels):
        return
    if conv.groups != 1:
        raise ValueError(f'cannot pad a grouped convolution: {conv}')
    padded = weight.new_zeros(out_channels, in_channels, *weight.shape[2:])
    padded[:out_old, :in_old] = weight
    padded_bias = bias.new_zeros(out_channels)
    padded_bias[:out_old] = bias
    conv.weight = nn.Parameter(padded, requires_grad=False)
    conv.bias = nn.Parameter(padded_bias, requires_grad=False)
    conv.in_channels, conv.out_channels = in_channels, out_channels


def _path_steps(path: nn.Module) -> list[ConvAct]:
    """The convs of a transition or exchange-unit path, in order."""
    if isinstance(path, ConvAct):
        return [path]
    if isinstance(path, ConvChain):
        return list(path.steps)
    if isinstance(path, nn.Identity):
        return []
    raise ValueError(f'cannot pad this path: {type(path).__name__}')


def _pad_path(path: nn.Module, in_channels: int, out_channels: int) -> None:
    """Pad a path from one branch to another; its inner steps keep the source branch's width."""
    steps = _path_steps(path)
    for k, step in enumerate(steps):
        _pad_conv(step, in_channels, out_channels if k == len(steps) - 1 else in_channels)


def _pad_module(module: InferenceHRModule, widths: list[int], last: bool) -> None:
    """Pad the branches of a fused HRModule to `widths`. The network's last module outputs the original widths, so
    heads, features and feature hooks see what the original computes."""
    for i, branch in enumerate(module.branches):
        for block in branch:
            if not isinstance(block, InferenceBasicBlock) or block.downsample is not None:
                raise ValueError('branch_widths needs stages of basic blocks without projection shortcuts')
            _pad_conv(block.conv1, widths[i], widths[i])
            _pad_conv(block.conv2, widths[i], widths[i])
    for i, paths in enumerate(module.fuse_layers):
        for j, path in enumerate(paths):
            _pad_path(path, widths[j], module.out_channels[i] if last else widths[i])
    module.narrow = last


def _pad_branches(model: nn.Module, widths: list[int]) -> None:
    """Zero-pad the branches of stages 2-4 to `widths` (see `optimize_for_inference`)."""
    names = ('transition1', 'stage2', 'transition2', 'stage3', 'transition3', 'stage4')
    trunk = next((m for m in model.modules() if all(hasattr(m, name) for name in names)), None)
    stages = [] if trunk is None else [list(getattr(trunk, f'stage{s}').children()) for s in (2, 3, 4)]
    if not all(stages) or not all(isinstance(m, InferenceHRModule) for stage in stages for m in stage):
        raise ValueError('branch_widths needs a model with its multi-resolution stages (not pruned away)')
    if len(widths) < len(stages[-1][0].branches):
        raise ValueError(f'branch_widths needs {len(stages[-1][0].branches)} widths, got {len(widths)}')
    padded_inputs = False  # transition1 reads stage 1's output, which keeps its width
    for t, stage in enumerate(stages):
        transition = getattr(trunk, f'transition{t + 1}')
        for i, path in enumerate(transition):
            steps = _path_steps(path)
            if steps:  # from branch i, or for a new branch from the last one
                source = min(i, transition.num_inputs - 1)
                _pad_path(path, widths[source] if padded_inputs else steps[0].conv.in_channels, widths[i])
        for m, module in enumerate(stage):
            _pad_module(module, widths, last=t == len(stages) - 1 and m == len(stage) - 1)
        padded_inputs = True


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
            _pad_branches(fused, list(branch_widths))
        for param in fused.parameters():
            param.requires_grad_(False)
        if dtype is not None:
            fused = fused.to(dtype)
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
    fused.__class__ = _inference_only_class(type(fused))
    return fused.eval()
