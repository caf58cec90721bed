"""A test oracle for the official pose_hrnet and seg_hrnet: their state-dict layout and their forward pass, written
from the official code's behaviour as plain functions of a state dict and the official `MODEL.EXTRA` config.

It is checked against the reference fixtures (written by the official code) and then stands in for the official
code where no fixture exists: the full-size released configurations and input sizes that are not multiples of 32.
It shares nothing with the package's model, so agreement is evidence, not a tautology.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EXPANSION = {'BASIC': 1, 'BOTTLENECK': 4}
_BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def _stage_cfg(num_modules: int, blocks: int, widths: tuple[int, ...], block: str = 'BASIC') -> dict:
    return dict(NUM_MODULES=num_modules, NUM_BRANCHES=len(widths), BLOCK=block, NUM_BLOCKS=[blocks] * len(widths),
                NUM_CHANNELS=list(widths), FUSE_METHOD='SUM')


def official_extra(width: int, seg: bool) -> dict:
    """MODEL.EXTRA of the released W32 / W48 configs (pose: experiments/coco/hrnet/*.yaml, seg: the W48 configs)."""
    extra = dict(
        FINAL_CONV_KERNEL=1,
        STAGE2=_stage_cfg(1, 4, (width, 2 * width)),
        STAGE3=_stage_cfg(4, 4, (width, 2 * width, 4 * width)),
        STAGE4=_stage_cfg(3, 4, (width, 2 * width, 4 * width, 8 * width)),
    )
    if seg:
        extra['STAGE1'] = _stage_cfg(1, 4, (64,), 'BOTTLENECK')
    return extra


def _stage1(extra: dict) -> tuple[str, int, int]:
    """(block, blocks, width) of layer1: configurable in seg_hrnet, fixed 4 bottlenecks of 64 in pose_hrnet."""
    cfg = extra.get('STAGE1')
    return (cfg['BLOCK'], cfg['NUM_BLOCKS'][0], cfg['NUM_CHANNELS'][0]) if cfg else ('BOTTLENECK', 4, 64)


def official_shapes(extra: dict, task: str, num_outputs: int, in_chans: int = 3) -> dict[str, tuple[int, ...]]:
    """Every state-dict key with its shape, as the official model built from `extra` has them."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, k: int, bias: bool = False) -> None:
        shapes[f'{name}.weight'] = (out, inp, k, k)
        if bias:
            shapes[f'{name}.bias'] = (out,)

    def bn(name: str, channels: int) -> None:
        for p in _BN:
            shapes[f'{name}.{p}'] = () if p == 'num_batches_tracked' else (channels,)

    def layer(prefix: str, block: str, inplanes: int, planes: int, blocks: int) -> int:
        out = planes * EXPANSION[block]
        for b in range(blocks):
            inp = inplanes if b == 0 else out
            p = f'{prefix}.{b}'
            if block == 'BASIC':
                conv(f'{p}.conv1', planes, inp, 3), bn(f'{p}.bn1', planes)
                conv(f'{p}.conv2', planes, planes, 3), bn(f'{p}.bn2', planes)
            else:
                conv(f'{p}.conv1', planes, inp, 1), bn(f'{p}.bn1', planes)
                conv(f'{p}.conv2', planes, planes, 3), bn(f'{p}.bn2', planes)
                conv(f'{p}.conv3', out, planes, 1), bn(f'{p}.bn3', out)
            if b == 0 and inp != out:
                conv(f'{p}.downsample.0', out, inp, 1), bn(f'{p}.downsample.1', out)
        return out

    conv('conv1', 64, in_chans, 3), bn('bn1', 64), conv('conv2', 64, 64, 3), bn('bn2', 64)
    block, blocks, width = _stage1(extra)
    pre = [layer('layer1', block, 64, width, blocks)]
    for s in (2, 3, 4):
        cfg = extra[f'STAGE{s}']
        cur = [c * EXPANSION[cfg['BLOCK']] for c in cfg['NUM_CHANNELS']]
        for i, c in enumerate(cur):
            if i < len(pre):
                if c != pre[i]:
                    conv(f'transition{s - 1}.{i}.0', c, pre[i], 3), bn(f'transition{s - 1}.{i}.1', c)
            else:
                for j in range(i + 1 - len(pre)):
                    out = c if j == i - len(pre) else pre[-1]
                    conv(f'transition{s - 1}.{i}.{j}.0', out, pre[-1], 3), bn(f'transition{s - 1}.{i}.{j}.1', out)
        inch = list(cur)  # the transition makes the branch inputs cur[i] wide
        for m in range(cfg['NUM_MODULES']):
            prefix = f'stage{s}.{m}'
            for b in range(cfg['NUM_BRANCHES']):
                layer(f'{prefix}.branches.{b}', cfg['BLOCK'], inch[b], cfg['NUM_CHANNELS'][b], cfg['NUM_BLOCKS'][b])
            inch = list(cur)
            multi_scale = not (task == 'pose' and s == 4 and m == cfg['NUM_MODULES'] - 1)
            rows = cfg['NUM_BRANCHES'] if multi_scale else 1
            for i in range(rows if cfg['NUM_BRANCHES'] > 1 else 0):
                for j in range(cfg['NUM_BRANCHES']):
                    p = f'{prefix}.fuse_layers.{i}.{j}'
                    if j > i:
                        conv(f'{p}.0', inch[i], inch[j], 1), bn(f'{p}.1', inch[i])
                    for k in range(i - j):
                        out = inch[i] if k == i - j - 1 else inch[j]
                        conv(f'{p}.{k}.0', out, inch[j], 3), bn(f'{p}.{k}.1', out)
        pre = cur
    k = extra['FINAL_CONV_KERNEL']
    if task == 'pose':
        conv('final_layer', num_outputs, pre[0], k, bias=True)
    else:
        total = sum(pre)
        conv('last_layer.0', total, total, 1, bias=True), bn('last_layer.1', total)
        conv('last_layer.3', num_outputs, total, k, bias=True)
    return shapes


def official_forward(sd: dict[str, Tensor], extra: dict, task: str, x: Tensor, align_corners: bool = False) -> Tensor:
    """The official model's output for `x` with the weights `sd` (eval mode), in the official order of operations."""
    def conv(name: str, t: Tensor, stride: int = 1) -> Tensor:
        w = sd[f'{name}.weight']
        return F.conv2d(t, w, sd.get(f'{name}.bias'), stride, w.shape[-1] // 2)

    def bn(name: str, t: Tensor) -> Tensor:
        return F.batch_norm(t, sd[f'{name}.running_mean'], sd[f'{name}.running_var'], sd[f'{name}.weight'],
                            sd[f'{name}.bias'], False, 0.0, 1e-5)

    def seq(prefix: str, t: Tensor, stride: int, relu: bool) -> Tensor:
        t = bn(f'{prefix}.1', conv(f'{prefix}.0', t, stride))
        return F.relu(t) if relu else t

    def layer(prefix: str, t: Tensor) -> Tensor:
        b = 0
        while f'{prefix}.{b}.conv1.weight' in sd:
            p = f'{prefix}.{b}'
            residual = seq(f'{p}.downsample', t, 1, False) if f'{p}.downsample.0.weight' in sd else t
            out = F.relu(bn(f'{p}.bn1', conv(f'{p}.conv1', t)))
            if f'{p}.conv3.weight' in sd:
                out = F.relu(bn(f'{p}.bn2', conv(f'{p}.conv2', out)))
                out = bn(f'{p}.bn3', conv(f'{p}.conv3', out))
            else:
                out = bn(f'{p}.bn2', conv(f'{p}.conv2', out))
            t = F.relu(out + residual)
            b += 1
        return t

    t = F.relu(bn('bn1', conv('conv1', x, 2)))
    t = F.relu(bn('bn2', conv('conv2', t, 2)))
    ys = [layer('layer1', t)]
    for s in (2, 3, 4):
        cfg = extra[f'STAGE{s}']
        xs = []
        for i in range(cfg['NUM_BRANCHES']):
            p = f'transition{s - 1}.{i}'
            if i < len(ys):
                xs.append(seq(p, ys[i], 1, True) if f'{p}.0.weight' in sd else ys[i])
            else:
                t = ys[-1]
                for j in range(i + 1 - len(ys)):
                    t = seq(f'{p}.{j}', t, 2, True)
                xs.append(t)
        for m in range(cfg['NUM_MODULES']):
            prefix = f'stage{s}.{m}'
            xs = [layer(f'{prefix}.branches.{b}', xs[b]) for b in range(cfg['NUM_BRANCHES'])]
            if cfg['NUM_BRANCHES'] == 1:
                continue
            rows = len({k.split('.')[3] for k in sd if k.startswith(f'{prefix}.fuse_layers.')})
            fused = []
            for i in range(rows):
                y = None
                for j in range(cfg['NUM_BRANCHES']):
                    p = f'{prefix}.fuse_layers.{i}.{j}'
                    if j == i:
                        z = xs[j]
                    elif j > i:
                        z = seq(p, xs[j], 1, False)
                        if task == 'pose':  # nn.Upsample(scale_factor=2 ** (j - i), mode='nearest')
                            z = F.interpolate(z, scale_factor=2 ** (j - i), mode='nearest')
                        else:  # F.interpolate to the target's size, bilinear
                            z = F.interpolate(z, size=xs[i].shape[-2:], mode='bilinear', align_corners=align_corners)
                    else:
                        z = xs[j]
                        for k in range(i - j):
                            z = seq(f'{p}.{k}', z, 2, k < i - j - 1)
                    y = z if y is None else y + z
                fused.append(F.relu(y))
            xs = fused
        ys = xs
    if task == 'pose':
        return conv('final_layer', ys[0])
    size = ys[0].shape[-2:]
    cat = torch.cat([ys[0]] + [F.interpolate(y, size=size, mode='bilinear', align_corners=align_corners)
                               for y in ys[1:]], 1)
    return conv('last_layer.3', F.relu(bn('last_layer.1', conv('last_layer.0', cat))))


def tiny_extra(seg: bool, final_conv_kernel: int = 1) -> dict:
    """A small official-style config (one block per branch, two modules in stage 4) that runs in milliseconds."""
    extra = dict(
        FINAL_CONV_KERNEL=final_conv_kernel,
        STAGE2=_stage_cfg(1, 1, (8, 16)),
        STAGE3=_stage_cfg(1, 1, (8, 16, 32)),
        STAGE4=_stage_cfg(2, 1, (8, 16, 32, 64)),
    )
    if seg:
        extra['STAGE1'] = _stage_cfg(1, 1, (16,), 'BOTTLENECK')
    return extra


def random_checkpoint(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Tensor]:
    """Random weights for an official layout, drawn like the reference fixtures' (Kaiming-normal convs scaled by
    0.5, BatchNorm statistics and affine parameters spread out), so that any wiring mistake changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(0)
        elif len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            sd[key] = torch.randn(shape, generator=g) * (2 / fan_out) ** 0.5 * 0.5
        elif key.endswith('running_mean') or (key.endswith('.bias') and len(shape) == 1):
            sd[key] = torch.empty(shape).uniform_(-0.2, 0.2, generator=g)
        elif key.endswith('running_var'):
            sd[key] = torch.empty(shape).uniform_(0.5, 2.0, generator=g)
        else:
            sd[key] = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
    return sd
