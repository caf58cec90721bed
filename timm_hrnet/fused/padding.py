"""Width padding for GPUs: the branches of stages 2-4 of a fused model zero-padded to widths tensor cores prefer,
with the same outputs (the padded weights and biases are zero, so the added channels stay exactly zero)."""
from __future__ import annotations

from torch import nn

from .modules import InferenceBasicBlock, InferenceHRModule
from .units import ConvAct, ConvChain

__all__ = ['pad_branches']


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


def pad_branches(model: nn.Module, widths: list[int]) -> None:
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
