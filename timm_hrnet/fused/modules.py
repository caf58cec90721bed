"""The fused residual blocks and HRModule: every conv one `ConvAct`, sums written into buffers nothing else reads,
and an exchange unit that sums every path into one buffer per target branch, with the original's outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hrnet import BasicBlock, Bottleneck, HRModule, resize_to
from .folding import _conv_bn_steps, _conv_bn_unit, _fold
from .hooks import _with_hooks_of
from .inference_only import InferenceOnlyMixin, refuse_training
from .units import ConvAct, ConvChain, _exporting

__all__ = ['InferenceBasicBlock', 'InferenceBottleneck', 'InferenceHRModule']


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


def _block_width(block: nn.Module) -> int:
    """The output width of a residual block, original or fused (a branch may be fused before its module)."""
    last = block.conv3 if isinstance(block, (Bottleneck, InferenceBottleneck)) else block.conv2
    return (last.conv if isinstance(last, ConvAct) else last).out_channels


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


class InferenceHRModule(InferenceOnlyMixin, nn.Module):
    """HRModule with folded BN and an exchange unit that sums into one buffer per branch.

    The upsampled paths of one target are summed coarse-to-fine at low resolution (nearest upsampling by integer
    factors composes), and the strided paths add straight into the buffer from their last conv, the last with ReLU;
    bilinear exchange units (segmentation), and any export, resize each path to the target as the original does, so
    exported graphs hold no sizes. `branches` are the already fused branches of `module`.

    Keeps the `branches`, `fuse_layers` and `fuse_acts` names; the ReLU is applied while summing, so `fuse_acts`
    are identities that feature hooks on `fuse_acts.i` still fire on.
    """

    def __init__(self, module: HRModule, branches: list[nn.Module]) -> None:
        super().__init__()
        # each branch's width; with `narrow` (this module is the network's last and its branches are zero-padded)
        # the outputs keep only these channels of each branch
        self.out_channels = [_block_width(branch[-1]) for branch in module.branches]
        self.narrow = False
        self.branches = nn.ModuleList(branches)
        self.fuse_layers = nn.ModuleList([
            nn.ModuleList([_fuse_path(path) for path in paths]) for paths in module.fuse_layers
        ])
        self.fuse_acts = nn.ModuleList([_with_hooks_of(act, nn.Identity()) for act in module.fuse_acts])
        self.upsample = module.upsample
        self.align_corners = module.align_corners
        self.resize_paths = module.resize_paths
        self.stride_factors = module.stride_factors

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
                        y = resize_to(y, ys[i], self.stride_factors[i][j], self.upsample, self.align_corners)
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
