"""`optimize_for_inference(..., branch_widths=...)`: zero-padded branches (for GPU tensor cores) change no output.

The padded weights and biases are zero, so the padded channels stay exactly zero and add nothing; the network's last
exchange unit computes the original widths again. Checked for every model kind on CPU, where it runs the same code.
"""
from __future__ import annotations

import pytest
import timm
import torch
from helpers import randomize_batchnorm
from task_reference import official_shapes, random_checkpoint, tiny_extra
from torch import Tensor, nn

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)
from timm_hrnet import create_pose_model, create_seg_model
from timm_hrnet.fused import ConvAct, optimize_for_inference

WIDTHS = (24, 48, 96, 192)  # hrnet_w18_small's branches are 16, 32, 64, 128 wide

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def make(name: str = 'hrnet_w18_small', **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(timm.create_model(name, **kwargs)).eval()


def as_list(output: Tensor | list[Tensor]) -> list[Tensor]:
    return output if isinstance(output, list) else [output]


def assert_same(actual: Tensor | list[Tensor], expected: Tensor | list[Tensor], rel: float = 1e-5) -> None:
    actual, expected = as_list(actual), as_list(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert (a.float() - e).abs().max().item() <= rel * e.abs().max().item()


MODELS = {
    'classifier': lambda: make(),
    'output_stride_8': lambda: make(output_stride=8, num_classes=10),
    'features': lambda: make(features_only=True, feature_location=''),
    'feature_hooks': lambda: make(features_only=True, feature_cls='hook', feature_location=''),
    'pose': lambda: create_pose_model(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17))),
    'segmentation': lambda: create_seg_model(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 20))),
}


@pytest.mark.parametrize('kind', list(MODELS))
@torch.inference_mode()
def test_padded_branches_compute_the_same(kind: str) -> None:
    model = MODELS[kind]()
    x = torch.randn(2, 3, 72, 88)  # branch sizes 18x22 ... 3x3: non-integer resizes too
    expected = model(x)
    for channels_last in (False, True):
        padded = optimize_for_inference(model, channels_last=channels_last, branch_widths=WIDTHS)
        assert_same(padded(x), expected)
    widths = {m.conv.out_channels for name, m in padded.named_modules()
              if isinstance(m, ConvAct) and '.branches.' in name}
    assert widths <= set(WIDTHS) and len(widths) > 1


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@torch.inference_mode()
def test_padded_bf16_matches_unpadded_bf16_and_scripts() -> None:
    model = make()
    x = torch.randn(2, 3, 64, 64)
    padded = optimize_for_inference(model, channels_last=True, dtype=torch.bfloat16, branch_widths=WIDTHS)
    plain = optimize_for_inference(model, channels_last=True, dtype=torch.bfloat16)
    assert_same(padded(x.bfloat16()), plain(x.bfloat16()).float(), rel=1e-2)
    scripted = torch.jit.script(optimize_for_inference(model, branch_widths=WIDTHS))
    assert_same(scripted(x), model(x))
    compiled = torch.compile(optimize_for_inference(model, branch_widths=WIDTHS), backend='eager', fullgraph=True)
    assert_same(compiled(x), model(x))


def test_bad_widths_are_refused() -> None:
    model = make()
    with pytest.raises(ValueError, match='needs 4 widths, got 3'):
        optimize_for_inference(model, branch_widths=(24, 48, 96))
    with pytest.raises(ValueError, match='must not narrow the branches'):
        optimize_for_inference(model, branch_widths=(8, 48, 96, 192))
    with pytest.raises(ValueError, match='multi-resolution stages'):
        optimize_for_inference(make(features_only=True, out_indices=(0,)), branch_widths=WIDTHS)
