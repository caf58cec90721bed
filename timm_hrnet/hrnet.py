"""HRNet: Deep High-Resolution Representation Learning for Visual Recognition (Wang et al., TPAMI 2019).

One network definition serves every task: `HRNetTrunk` (stem, stage-1 layer, multi-resolution stages 2-4) is
built from an `HRNetSpec` (see `variants.py`), and the classifier below, the pose and segmentation models add
their heads to it. The module tree and the state-dict keys follow the canonical HRNet layout of the official
checkpoints and timm's hub weights, so those weights load unchanged and weights saved from here load in plain timm.

Beyond the reference implementations this model
* accepts any input size of at least 32x32 (branches are fused by resizing to the target branch's actual size),
* supports output strides 16 and 8 (the low-resolution branches keep their resolution and dilate instead),
* has stochastic depth (`drop_path_rate`) in its residual blocks,
* recomputes activations under gradient checkpointing without updating BatchNorm statistics twice, either all of
  them or (`selective=True`) only the cheap ones, keeping the convolution outputs,
* gives features through `features_only=True`, `forward_intermediates` and timm's feature wrappers.
"""
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, create_classifier
from timm.models import FeatureInfo, build_model_with_cfg, register_notrace_function
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .convert import canonicalize_on_load, checkpoint_filter_fn
from .pretrained_cfgs import default_cfgs
from .registration import register_hrnet, wrap_timm_checkpoint_loading
from .timm_compat import feature_take_indices, pretrained_cfg_for_features
from .variants import HRNetSpec, StageSpec, resolve_variant

__all__ = ['HRNet', 'HRNetFeatures', 'HRNetTrunk', 'HRModule', 'MIN_INPUT_SIZE', 'HEAD_CHANNELS', 'default_cfgs']

MIN_INPUT_SIZE = 32  # one pixel on the stride-32 branch
HEAD_CHANNELS = (32, 64, 128, 256)  # bottleneck widths of the classification head's incre modules (x4 out)
NUM_FEATURES = 2048
_NOMINAL_STRIDES = (4, 8, 16, 32)


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, dilation: int = 1, bias: bool = False, **dd: Any) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias, **dd)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1, bias: bool = False, **dd: Any) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=bias, **dd)


def conv_bn(conv: nn.Conv2d, relu: bool) -> nn.Sequential:
    """conv -> BN (-> ReLU); indices 0 and 1 are the canonical key names. The BN follows the conv's device/dtype."""
    layers = [conv, nn.BatchNorm2d(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def projection(in_chs: int, out_chs: int, **dd: Any) -> nn.Sequential | None:
    """1x1 projection shortcut, needed when a residual block changes the channel count."""
    return conv_bn(conv1x1(in_chs, out_chs, **dd), relu=False) if in_chs != out_chs else None


def drop_path_or_identity(rate: float) -> nn.Module:
    """Stochastic depth on a residual branch; an identity at rate 0, so default models compute exactly as before."""
    return DropPath(rate) if rate > 0 else nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_chs: int, chs: int, dilation: int = 1, drop_path: float = 0.0, **dd: Any) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chs, chs, dilation=dilation, **dd)
        self.bn1 = nn.BatchNorm2d(chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(chs, chs, dilation=dilation, **dd)
        self.bn2 = nn.BatchNorm2d(chs, **dd)
        self.drop_path = drop_path_or_identity(drop_path)
        self.downsample = projection(in_chs, chs, **dd)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.drop_path(self.bn2(self.conv2(x)))
        x += shortcut  # in place: x is this block's own fresh tensor
        return self.act2(x)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_chs: int, chs: int, dilation: int = 1, drop_path: float = 0.0, **dd: Any) -> None:
        super().__init__()
        out_chs = chs * self.expansion
        self.conv1 = conv1x1(in_chs, chs, **dd)
        self.bn1 = nn.BatchNorm2d(chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(chs, chs, dilation=dilation, **dd)
        self.bn2 = nn.BatchNorm2d(chs, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(chs, out_chs, **dd)
        self.bn3 = nn.BatchNorm2d(out_chs, **dd)
        self.drop_path = drop_path_or_identity(drop_path)
        self.downsample = projection(in_chs, out_chs, **dd)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.drop_path(self.bn3(self.conv3(x)))
        x += shortcut
        return self.act3(x)


BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


def residual_layer(
        block: str,
        in_chs: int,
        chs: int,
        num_blocks: int,
        dilation: int = 1,
        drop_path: list[float] | None = None,
        **dd: Any,
) -> nn.Sequential:
    block_cls = BLOCKS[block]
    out_chs = chs * block_cls.expansion
    rates = drop_path or [0.0] * num_blocks
    return nn.Sequential(*[
        block_cls(in_chs if i == 0 else out_chs, chs, dilation, rates[i], **dd) for i in range(num_blocks)
    ])


class Resolutions:
    """Actual stride and dilation of each branch for a given output stride.

    Branches whose nominal stride (4, 8, 16, 32) exceeds the output stride keep the output stride's resolution;
    the convolution that would have halved the resolution runs with stride 1 and the branch dilates instead.
    """

    def __init__(self, output_stride: int = 32) -> None:
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')
        self.strides = [min(s, output_stride) for s in _NOMINAL_STRIDES]
        self.dilations = [s // a for s, a in zip(_NOMINAL_STRIDES, self.strides)]

    def down_conv(self, in_chs: int, out_chs: int, level: int, bias: bool = False, **dd: Any) -> nn.Conv2d:
        """The 3x3 conv taking branch `level` to the resolution of branch `level + 1`."""
        stride = self.strides[level + 1] // self.strides[level]
        dilation = self.dilations[level] if stride == 1 else 1
        return conv3x3(in_chs, out_chs, stride=stride, dilation=dilation, bias=bias, **dd)


class HRModule(nn.Module):
    """Parallel residual branches followed by an exchange unit that fuses every branch into every other.

    Lower-resolution paths are resized to the target branch's actual size: nearest (the classifiers) or bilinear
    (segmentation, with `align_corners`). With `multi_scale_output=False` only the highest-resolution branch is
    produced (the pose models' last module).
    """

    def __init__(
            self,
            in_chs: list[int],
            stage: StageSpec,
            res: Resolutions,
            upsample: str = 'nearest',
            align_corners: bool = False,
            multi_scale_output: bool = True,
            drop_path: list[float] | None = None,
            upsample_by_stride: bool = False,
            **dd: Any,
    ) -> None:
        super().__init__()
        block_cls = BLOCKS[stage.block]
        out_chs = [c * block_cls.expansion for c in stage.channels]
        n = stage.num_branches
        rates = drop_path or [0.0] * max(stage.num_blocks)
        self.branches = nn.ModuleList([
            residual_layer(stage.block, in_chs[i], stage.channels[i], stage.num_blocks[i], res.dilations[i],
                           rates[:stage.num_blocks[i]], **dd)
            for i in range(n)
        ])
        num_outputs = n if multi_scale_output else 1
        self.fuse_layers = nn.ModuleList(
            [nn.ModuleList([self._fuse_path(out_chs, i, j, res, dd) for j in range(n)]) for i in range(num_outputs)]
            if n > 1 else []
        )
        self.fuse_acts = nn.ModuleList([nn.ReLU(inplace=True) for _ in range(num_outputs)] if n > 1 else [])
        self.upsample = upsample
        self.align_corners: bool | None = align_corners if upsample == 'bilinear' else None
        # upsampled paths are resized to the target branch's size, unless output_stride made them equal
        self.resize_paths: list[list[bool]] = [
            [j > i and res.strides[j] != res.strides[i] for j in range(n)] for i in range(num_outputs)
        ]
        # with `upsample_by_stride` (mmseg), the integer factor a path is upsampled by before its resize; else 0
        self.stride_factors: list[list[int]] = [
            [res.strides[j] // res.strides[i] if upsample_by_stride and resize else 0 for j, resize in enumerate(row)]
            for i, row in enumerate(self.resize_paths)
        ]

    @staticmethod
    def _fuse_path(chs: list[int], i: int, j: int, res: Resolutions, dd: dict[str, Any]) -> nn.Module:
        """Path from branch j to branch i: 1x1 conv (then resize) from lower resolutions, strided 3x3s from higher."""
        if j == i:
            return nn.Identity()
        if j > i:
            return conv_bn(conv1x1(chs[j], chs[i], **dd), relu=False)
        steps = []
        for level in range(j, i):
            last = level == i - 1
            steps.append(conv_bn(res.down_conv(chs[j], chs[i] if last else chs[j], level, **dd), relu=not last))
        return nn.Sequential(*steps)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        ys: list[Tensor] = []
        for i, branch in enumerate(self.branches):
            ys.append(branch(xs[i]))
        if len(self.fuse_layers) == 0:
            return ys
        out: list[Tensor] = []
        for i, (paths, act) in enumerate(zip(self.fuse_layers, self.fuse_acts)):
            resize = self.resize_paths[i]
            fused: Tensor | None = None
            owned = False  # whether `fused` is a tensor of our own, safe to add into (not the branch input ys[i])
            for j, path in enumerate(paths):
                y = path(ys[j])
                if resize[j]:
                    y = resize_to(y, ys[i], self.stride_factors[i][j], self.upsample, self.align_corners)
                if fused is None:
                    fused, owned = y, j != i
                elif owned:
                    fused += y
                else:
                    fused, owned = fused + y, True
            assert fused is not None
            out.append(act(fused))
        return out


def resize_to(y: Tensor, target: Tensor, stride_factor: int, mode: str, align_corners: bool | None) -> Tensor:
    """An exchange unit's upsampled path `y` at `target`'s size; a non-zero `stride_factor` first scales it by that
    factor (mmseg's two-step resize)."""
    if stride_factor:
        y = F.interpolate(y, size=[y.shape[-2] * stride_factor, y.shape[-1] * stride_factor], mode=mode,
                          align_corners=align_corners)
    return F.interpolate(y, size=target.shape[-2:], mode=mode, align_corners=align_corners)


@contextlib.contextmanager
def frozen_batchnorm_stats(modules: tuple[nn.Module, ...]) -> Iterator[None]:
    """Keep the running stats of the BatchNorms in `modules` unchanged while a checkpointed segment is recomputed.

    Momentum 0 makes the running-average update a no-op without changing what is saved for backward (which
    checkpointing verifies); the step counter is put back afterwards.
    """
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, steps) in zip(norms, saved):
            m.momentum = momentum
            if steps is not None:
                m.num_batches_tracked.copy_(steps)


def keep_costly_convolution_outputs(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective checkpointing policy: keep what the convolutions computed, except 1x1 expansions, and redo the rest.

    BatchNorm, ReLU, additions and resizes are cheap to redo. The 1x1 convolutions that widen a bottleneck
    (64 -> 256 channels in the stage-1 layer, the head's incre modules) are cheap too, but their wide outputs would
    be a quarter of what is kept.
    """
    if op is torch.ops.aten.convolution.default:
        weight = args[1]
        expands = weight.shape[-2:] == (1, 1) and weight.shape[0] > weight.shape[1]
        return CheckpointPolicy.PREFER_RECOMPUTE if expands else CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def entered(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def checkpoint_contexts(modules: tuple[nn.Module, ...], selective: bool) -> tuple[Any, Any]:
    """The (forward, recompute) contexts: BatchNorm statistics frozen while recomputing; with `selective` the
    convolution outputs the policy keeps come from the forward pass instead of being recomputed."""
    if not selective:
        return contextlib.nullcontext(), frozen_batchnorm_stats(modules)
    forward, recompute = create_selective_checkpoint_contexts(keep_costly_convolution_outputs)
    return forward, entered(frozen_batchnorm_stats(modules), recompute)  # the stats are saved outside the cache


def checkpointed(
        fn: Callable[..., Any], *args: Any, selective: bool = False, modules: tuple[nn.Module, ...] | None = None,
) -> Any:
    """Run `fn` without keeping its activations: they are recomputed in backward.

    `modules` are those `fn` runs (default: `fn` itself, a module); their BatchNorm statistics stay put while
    recomputing. With `selective` most convolution outputs are kept and only what follows them is recomputed.
    """
    owners = modules if modules is not None else (fn,)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=lambda: checkpoint_contexts(owners, selective))


class Stage(nn.Sequential):
    """A sequence of HRModules passing the list of branch tensors along."""

    def __init__(self, modules: list[HRModule]) -> None:
        super().__init__(*modules)
        self.grad_checkpointing = False
        self.selective_recompute = False

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        for module in self:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                xs = checkpointed(module, xs, selective=self.selective_recompute)
            else:
                xs = module(xs)
        return xs


class Transition(nn.ModuleList):
    """Adapts the branches between stages: channel changes on existing branches, a strided conv for the new one."""

    def __init__(self, in_chs: list[int], out_chs: list[int], res: Resolutions, **dd: Any) -> None:
        paths: list[nn.Module] = []
        for i, chs in enumerate(out_chs):
            if i < len(in_chs):
                if in_chs[i] == chs:
                    paths.append(nn.Identity())
                else:
                    paths.append(conv_bn(conv3x3(in_chs[i], chs, dilation=res.dilations[i], **dd), relu=True))
            else:
                steps = [
                    conv_bn(res.down_conv(in_chs[-1], chs if level == i - 1 else in_chs[-1], level, **dd), relu=True)
                    for level in range(len(in_chs) - 1, i)
                ]
                paths.append(nn.Sequential(*steps))
        super().__init__(paths)
        self.num_inputs = len(in_chs)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        out: list[Tensor] = []
        for i, path in enumerate(self):
            out.append(path(xs[i] if i < self.num_inputs else xs[-1]))
        return out


@register_notrace_function
def check_input(x: Tensor, in_chans: int, min_size: int) -> None:
    """Reject inputs the network would otherwise mangle or fail on deep inside with an obscure message."""
    if x.dim() != 4:
        raise ValueError(f'HRNet expects a 4-D (N, C, H, W) tensor, got {x.dim()}-D with shape {list(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(f'HRNet expects {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)})')
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f'HRNet needs inputs of at least {min_size}x{min_size} pixels to reach stride 32, '
            f'got {x.shape[2]}x{x.shape[3]}'
        )


def drop_path_schedule(spec: HRNetSpec, drop_path_rate: float) -> list[list[float]]:
    """Stochastic depth rates rising linearly with depth, one list per residual layer or module, in build order.

    Depth counts blocks along the network: stage 1's blocks, then for each module of stages 2-4 its longest
    branch; parallel branches of one module share the rates of their depth.
    """
    depths = [spec.stages[0].num_blocks[0]]
    depths += [max(stage.num_blocks) for stage in spec.stages[1:] for _ in range(stage.num_modules)]
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for depth in depths:
        out.append(rates[start:start + depth])
        start += depth
    return out


class HRNetTrunk(nn.Module):
    """Stem, stage-1 residual layer and the multi-resolution stages 2-4: the network every HRNet task shares.

    `forward_branches` returns the branch outputs of the last stage (all four, or only the highest-resolution
    one when `spec.multi_scale_output` is False). Attribute names are the canonical checkpoint keys.
    """

    def __init__(
            self,
            spec: HRNetSpec,
            in_chans: int = 3,
            output_stride: int = 32,
            drop_path_rate: float = 0.0,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(spec.stages) != 4:
            raise ValueError(
                f'HRNet is built from exactly four stages (stage i with i branches), got {len(spec.stages)}'
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        dd: dict[str, Any] = dict(device=device, dtype=dtype)
        self.spec = spec
        self.in_chans = in_chans
        self.min_input_size = MIN_INPUT_SIZE
        self.output_stride = output_stride
        self.drop_path_rate = drop_path_rate
        self.grad_checkpointing = False
        self.selective_recompute = False
        res = Resolutions(output_stride)
        rates = iter(drop_path_schedule(spec, drop_path_rate))

        self.conv1 = nn.Conv2d(in_chans, spec.stem_width, 3, stride=2, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(spec.stem_width, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(spec.stem_width, 64, 3, stride=2, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(64, **dd)
        self.act2 = nn.ReLU(inplace=True)

        stage1 = spec.stages[0]
        self.layer1 = residual_layer(
            stage1.block, 64, stage1.channels[0], stage1.num_blocks[0], drop_path=next(rates), **dd)
        chs = [stage1.channels[0] * BLOCKS[stage1.block].expansion]
        last = len(spec.stages) - 1
        for idx, stage in enumerate(spec.stages[1:], start=1):
            setattr(self, f'transition{idx}', Transition(chs, list(stage.channels), res, **dd))
            chs = list(stage.channels)
            modules = []
            for m in range(stage.num_modules):
                multi_scale = spec.multi_scale_output or idx < last or m < stage.num_modules - 1
                modules.append(HRModule(chs, stage, res, spec.upsample, spec.align_corners, multi_scale, next(rates),
                                        spec.upsample_by_stride, **dd))
                chs = [c * BLOCKS[stage.block].expansion for c in stage.channels]
            setattr(self, f'stage{idx + 1}', Stage(modules))
        self.branch_channels = chs if spec.multi_scale_output else chs[:1]

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, selective: bool = False) -> None:
        """Recompute activations in backward instead of keeping them, trading step time for memory.

        By default each segment (stem conv, residual block, HR module, head bottleneck) keeps only its input and is
        recomputed whole. `selective=True` keeps the convolution outputs (all but the 1x1 expansions) and recomputes
        BatchNorm, ReLU, the additions and resizes, over larger segments (stem conv 2 with the stage-1 layer as
        one): about half the step memory for far less extra time (see benchmarks/README.md).
        """
        self.grad_checkpointing = enable
        self.selective_recompute = enable and selective
        for stage in (self.stage2, self.stage3, self.stage4):
            if isinstance(stage, Stage):
                stage.grad_checkpointing = enable
                stage.selective_recompute = self.selective_recompute

    def _stem1(self, x: Tensor) -> Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def _stem2(self, x: Tensor) -> Tensor:
        return self.act2(self.bn2(self.conv2(x)))

    def forward_stem(self, x: Tensor) -> Tensor:
        """The stride-2 stem output (feature index 0)."""
        check_input(x, self.in_chans, self.min_input_size)
        if self.grad_checkpointing and not self.selective_recompute and not torch.jit.is_scripting():
            return checkpointed(self._stem1, x, modules=(self.bn1,))  # selective: nothing to gain on conv+BN+ReLU
        return self._stem1(x)

    def _stem2_and_layer1(self, x: Tensor) -> Tensor:
        return self.layer1(self._stem2(x))

    def forward_branches(self, x: Tensor) -> list[Tensor]:
        """From the stride-2 stem output to the branch outputs of the last stage."""
        if self.selective_recompute and not torch.jit.is_scripting():
            x = checkpointed(self._stem2_and_layer1, x, selective=True, modules=(self.bn2, self.layer1))
        elif self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpointed(self._stem2, x, modules=(self.bn2,))
            for block in self.layer1:
                x = checkpointed(block, x)
        else:
            x = self._stem2_and_layer1(x)
        xs = self.stage2(self.transition1([x]))
        xs = self.stage3(self.transition2(xs))
        return self.stage4(self.transition3(xs))

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_branches(self.forward_stem(x))


class HRNet(HRNetTrunk):
    """HRNet classifier and backbone, built from an `HRNetSpec`.

    `forward_features` returns the 2048-channel stride-32 map of the classification head; the parallel branch
    outputs are available through `forward_intermediates` and `features_only=True`. Once pruned for features
    (`prune_intermediate_layers`), `forward_features` ends at the last kept feature instead.
    """

    def __init__(
            self,
            spec: HRNetSpec,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            output_stride: int = 32,
            feature_location: str = 'incre',
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        if feature_location not in ('incre', ''):
            raise ValueError(f"feature_location must be 'incre' or '', got {feature_location!r}")
        if not spec.multi_scale_output:
            raise ValueError('the classifier needs all four branches: spec.multi_scale_output must be True')
        super().__init__(spec, in_chans, output_stride, drop_path_rate, device=device, dtype=dtype)
        dd: dict[str, Any] = dict(device=device, dtype=dtype)
        res = Resolutions(output_stride)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.feature_location = feature_location
        chs = self.branch_channels
        self.num_taps = 1 + len(chs)  # feature indices: 0 the stem, 1..4 the branches
        self.final_tap = self.num_taps - 1  # the last feature computed; lower once pruned

        # classification head: widen each branch, walk down the resolutions summing, then project to 2048
        bias = spec.head_conv_bias
        head_out = [c * Bottleneck.expansion for c in HEAD_CHANNELS]
        self.incre_modules = nn.ModuleList([
            residual_layer('bottleneck', c, h, 1, res.dilations[i], **dd)
            for i, (c, h) in enumerate(zip(chs, HEAD_CHANNELS))
        ])
        self.has_head = True  # False once pruned for features: the 2048-channel aggregation is gone
        self.downsamp_modules = nn.ModuleList([
            conv_bn(res.down_conv(head_out[i], head_out[i + 1], i, bias=bias, **dd), relu=True) for i in range(3)
        ])
        self.final_layer: nn.Module = conv_bn(conv1x1(head_out[-1], NUM_FEATURES, bias=bias, **dd), relu=True)
        self.num_features = NUM_FEATURES
        self.global_pool, self.classifier = create_classifier(NUM_FEATURES, num_classes, global_pool, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head_hidden_size = NUM_FEATURES * self.global_pool.feat_mult()

        incre = feature_location == 'incre'
        self.feature_info = [dict(num_chs=spec.stem_width, reduction=2, module='act1')] + [
            dict(
                num_chs=head_out[i] if incre else c,
                reduction=res.strides[i],
                module=f'incre_modules.{i}' if incre else f'stage4.{len(self.stage4) - 1}.fuse_acts.{i}',
            )
            for i, c in enumerate(chs)
        ]
        self.init_weights()
        self.register_load_state_dict_pre_hook(canonicalize_on_load)

    @torch.jit.ignore
    def architecture_keys(self) -> frozenset[str]:
        """Every state-dict key of this network before any pruning (tells pruned modules from foreign keys)."""
        return _unpruned_keys(self.spec)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^conv[12]|^bn[12]',
            blocks=r'^(?:layer|transition|stage)(\d+)' if coarse else [
                (r'^layer(\d+)\.(\d+)', None),
                (r'^stage(\d+)\.(\d+)', None),
                (r'^transition(\d+)', (99999,)),
                (r'^(?:incre_modules|downsamp_modules|final_layer)', (100000,)),
            ],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (and pooling) on the model's device, in its dtype and training mode."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        reference = next(self.parameters())
        self.global_pool, self.classifier = create_classifier(
            self.num_features, num_classes, global_pool, device=reference.device, dtype=reference.dtype)
        self.global_pool.train(self.training)
        self.classifier.train(self.training)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def forward_incre(self, xs: list[Tensor], count: int) -> list[Tensor]:
        """The head's channel-increasing bottlenecks on the first `count` branches."""
        out: list[Tensor] = []
        for i, incre in enumerate(self.incre_modules):
            if i < count:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    out.append(checkpointed(incre, xs[i], selective=self.selective_recompute))
                else:
                    out.append(incre(xs[i]))
        return out

    def forward_aggregate(self, feats: list[Tensor]) -> Tensor:
        """Walk down the resolutions summing the widened branches, then project to the 2048-channel map."""
        y = feats[0]
        for i, down in enumerate(self.downsamp_modules):
            y = feats[i + 1] + down(y)
        return self.final_layer(y)

    def _tap_features(self, xs: list[Tensor], count: int) -> list[Tensor]:
        """Features 1..count from the branch outputs: widened by the incre modules, or raw (`feature_location=''`)."""
        if self.feature_location == 'incre':
            return self.forward_incre(xs, count)
        return xs[:count]

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)
        if self.final_tap == 0:
            return x
        xs = self.forward_branches(x)
        if self.has_head:
            return self.forward_aggregate(self.forward_incre(xs, len(xs)))
        return self._tap_features(xs, self.final_tap)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Features at index 0 (stride-2 stem) and 1-4 (the branches at strides 4-32, see `feature_location`).

        `norm` is accepted for timm's interface; HRNet has no final norm. Without `intermediates_only` the final
        output is what `forward_features` returns: the 2048-channel head map, or once pruned (or with
        `stop_early`) the last feature computed.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got '{output_fmt}'")
        take_indices, max_index = feature_take_indices(self.num_taps, indices)
        if max_index > self.final_tap:
            raise ValueError(f'feature index {max_index} was pruned from this model (features end at {self.final_tap})')
        intermediates: list[Tensor] = []
        x = self.forward_stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        last = max_index if stop_early or intermediates_only else self.final_tap
        if last == 0:
            return _format(intermediates, output_fmt) if intermediates_only else (x, _format(intermediates, output_fmt))

        xs = self.forward_branches(x)
        with_head = self.has_head and last == self.num_taps - 1 and not intermediates_only
        feats = self._tap_features(xs, len(xs) if with_head else last)
        for i, feat in enumerate(feats):
            if i + 1 in take_indices:
                intermediates.append(feat)
        if intermediates_only:
            return _format(intermediates, output_fmt)
        if with_head:
            head_in = feats if self.feature_location == 'incre' else self.forward_incre(xs, len(xs))
            return self.forward_aggregate(head_in), _format(intermediates, output_fmt)
        return feats[-1], _format(intermediates, output_fmt)

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop what the requested features do not need: the classifier head, unused incre modules, the trunk.

        Afterwards `forward_features` ends at the last requested feature and `num_features` is its channel count
        (unless the head is kept, which needs every branch). `prune_norm` is accepted; HRNet has no final norm.
        """
        take_indices, max_index = feature_take_indices(self.num_taps, indices)
        if max_index > self.final_tap:
            raise ValueError(f'feature index {max_index} was pruned from this model (features end at {self.final_tap})')
        if max_index == 0:
            for name in ('conv2', 'bn2', 'act2', 'layer1', 'transition1', 'stage2', 'transition2', 'stage3',
                         'transition3', 'stage4'):
                setattr(self, name, nn.Identity())
        drop_head = prune_head or max_index < self.num_taps - 1
        if not drop_head:
            return take_indices
        if self.feature_location == 'incre':
            self.incre_modules = self.incre_modules[:max_index]
        else:
            self.incre_modules = nn.ModuleList()  # raw branch features: the widening bottlenecks only feed the head
        self.has_head = False
        self.final_tap = max_index
        self.downsamp_modules = nn.ModuleList()
        self.final_layer = nn.Identity()
        self.num_features = self.feature_info[max_index]['num_chs']
        self.reset_classifier(0, '')
        return take_indices


def _format(features: list[Tensor], output_fmt: str) -> list[Tensor]:
    return [f.permute(0, 2, 3, 1) for f in features] if output_fmt == 'NHWC' else features


_UNPRUNED_KEYS: dict[HRNetSpec, frozenset[str]] = {}


def _unpruned_keys(spec: HRNetSpec) -> frozenset[str]:
    if spec not in _UNPRUNED_KEYS:
        _UNPRUNED_KEYS[spec] = frozenset(HRNet(spec, device='meta').state_dict())
    return _UNPRUNED_KEYS[spec]


class HRNetFeatures(HRNet):
    """`features_only=True` model: returns the stem and branch feature maps selected by `out_indices`.

    Keeps the state-dict keys of the classifier it comes from (minus the pruned head), so pretrained weights load.
    """

    def __init__(
            self,
            spec: HRNetSpec,
            out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
            feature_location: str = 'incre',
            **kwargs: Any,
    ) -> None:
        super().__init__(spec, num_classes=0, global_pool='', feature_location=feature_location, **kwargs)
        self.out_indices = self.prune_intermediate_layers(list(out_indices), prune_head=True)
        self.feature_info = FeatureInfo(self.feature_info, self.out_indices)

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        # forward_intermediates with intermediates_only, spelled out: TorchScript cannot compile its Union return
        x = self.forward_stem(x)
        out = [x] if 0 in self.out_indices else []
        if self.final_tap == 0:
            return out
        for i, feat in enumerate(self._tap_features(self.forward_branches(x), self.final_tap)):
            if i + 1 in self.out_indices:
                out.append(feat)
        return out


def _create_hrnet(variant: str, pretrained: bool = False, **kwargs: Any) -> HRNet:
    own_features_class = kwargs.get('features_only', False) and 'feature_cls' not in kwargs
    if own_features_class:
        kwargs.pop('features_only')
    model = build_model_with_cfg(
        HRNetFeatures if own_features_class else HRNet,
        variant,
        pretrained,
        spec=resolve_variant(variant),
        pretrained_filter_fn=checkpoint_filter_fn,
        kwargs_filter=('num_classes', 'global_pool') if own_features_class else None,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )
    if own_features_class:
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return model


wrap_timm_checkpoint_loading()  # checkpoint_path= failures on our models: one line naming the file


@register_hrnet
def hrnet_w18_small(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w18_small', pretrained, **kwargs)


@register_hrnet
def hrnet_w18_small_v2(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w18_small_v2', pretrained, **kwargs)


@register_hrnet
def hrnet_w18(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w18', pretrained, **kwargs)


@register_hrnet
def hrnet_w30(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w30', pretrained, **kwargs)


@register_hrnet
def hrnet_w32(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w32', pretrained, **kwargs)


@register_hrnet
def hrnet_w40(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w40', pretrained, **kwargs)


@register_hrnet
def hrnet_w44(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w44', pretrained, **kwargs)


@register_hrnet
def hrnet_w48(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w48', pretrained, **kwargs)


@register_hrnet
def hrnet_w64(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w64', pretrained, **kwargs)


@register_hrnet
def hrnet_w18_ssld(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w18_ssld', pretrained, **kwargs)


@register_hrnet
def hrnet_w48_ssld(pretrained: bool = False, **kwargs) -> HRNet:
    return _create_hrnet('hrnet_w48_ssld', pretrained, **kwargs)
