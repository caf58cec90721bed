"""HRNet variants as data: one table of stage specs that the generic model in `hrnet.py` builds from.

Stage 1 is a plain residual layer on the single stride-4 branch; stages 2-4 are repeated multi-resolution
modules with 2, 3 and 4 parallel branches. The width N of `hrnet_wN` is the channel count of the
highest-resolution branch; the other branches double it at each halving of resolution.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

__all__ = ['StageSpec', 'HRNetSpec', 'VARIANTS', 'resolve_variant']


@dataclass(frozen=True)
class StageSpec:
    """One stage: `num_modules` repeated modules, each with one residual branch per resolution."""

    num_modules: int
    block: str  # 'basic' (two 3x3 convs) or 'bottleneck' (1x1-3x3-1x1, expansion 4)
    num_blocks: tuple[int, ...]  # residual blocks per branch
    channels: tuple[int, ...]  # block width per branch, highest resolution first

    def __post_init__(self) -> None:
        if self.block not in ('basic', 'bottleneck'):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.num_blocks) != len(self.channels):
            raise ValueError(f'num_blocks {self.num_blocks} and channels {self.channels} differ in length')

    @property
    def num_branches(self) -> int:
        return len(self.channels)


@dataclass(frozen=True)
class HRNetSpec:
    """A whole network: stem width, the four stages, how branches are exchanged, and the classifier head's biases.

    The classifiers upsample nearest in the exchange units; the segmentation models (HRNetV2, seg_hrnet) upsample
    bilinearly, and the pose models' last module outputs only the highest-resolution branch.
    """

    stages: tuple[StageSpec, ...]
    stem_width: int = 64
    head_conv_bias: bool = True  # the SSLD (PaddleClas) weights were trained without these biases
    upsample: str = 'nearest'  # how the exchange units resize lower-resolution paths: 'nearest' or 'bilinear'
    align_corners: bool = False  # for bilinear upsampling
    multi_scale_output: bool = True  # False: the last module outputs only the highest-resolution branch
    # mmseg's exchange units upsample by the stride ratio, then resize to the target branch's size: the same as one
    # resize at input sizes that are multiples of 32, other numbers elsewhere
    upsample_by_stride: bool = False

    def __post_init__(self) -> None:
        branches = [s.num_branches for s in self.stages]
        if branches != list(range(1, len(self.stages) + 1)):
            raise ValueError(f'stage i must have i branches, got {branches}')
        if self.upsample not in ('nearest', 'bilinear'):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")


def _wide(width: int, stage1_blocks: int = 4, blocks: int = 4, modules: tuple[int, int, int] = (1, 4, 3)) -> HRNetSpec:
    """The regular HRNet-W{width}-C layout: branch widths width, 2*width, 4*width, 8*width."""
    stage1 = StageSpec(1, 'bottleneck', (stage1_blocks,), (64,))
    later = tuple(
        StageSpec(modules[i], 'basic', (blocks,) * (i + 2), tuple(width * 2**b for b in range(i + 2)))
        for i in range(3)
    )
    return HRNetSpec(stages=(stage1, *later))


VARIANTS: dict[str, HRNetSpec] = {
    'hrnet_w18_small': HRNetSpec(stages=(
        StageSpec(1, 'bottleneck', (1,), (32,)),
        StageSpec(1, 'basic', (2, 2), (16, 32)),
        StageSpec(1, 'basic', (2, 2, 2), (16, 32, 64)),
        StageSpec(1, 'basic', (2, 2, 2, 2), (16, 32, 64, 128)),
    )),
    'hrnet_w18_small_v2': _wide(18, stage1_blocks=2, blocks=2, modules=(1, 3, 2)),
    'hrnet_w18': _wide(18),
    'hrnet_w30': _wide(30),
    'hrnet_w32': _wide(32),
    'hrnet_w40': _wide(40),
    'hrnet_w44': _wide(44),
    'hrnet_w48': _wide(48),
    'hrnet_w64': _wide(64),
    'hrnet_w18_ssld': replace(_wide(18), head_conv_bias=False),
    'hrnet_w48_ssld': replace(_wide(48), head_conv_bias=False),
}


def resolve_variant(name: str) -> HRNetSpec:
    """Look a variant up by name (a pretrained tag after '.' is ignored), suggesting close names when unknown."""
    arch = name.split('.', 1)[0]
    if arch in VARIANTS:
        return VARIANTS[arch]
    close = difflib.get_close_matches(arch, VARIANTS, n=3, cutoff=0.6)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'Unknown HRNet variant {name!r}.{hint} Known variants: {", ".join(VARIANTS)}.')
