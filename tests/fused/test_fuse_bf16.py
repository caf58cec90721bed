"""`optimize_for_inference(..., dtype=torch.bfloat16)`: a bf16 model that is at least as accurate as the plain one.

Accuracy is measured against the float32 original, per image: the max |difference| over the output relative to the
output's max |value|, and the relative RMS difference; the medians over a batch are compared with those of the
plain (unfused) model cast to bfloat16, for the logits and for every `features_only` map.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers import randomize_batchnorm
from torch import Tensor, nn

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)
from timm_hrnet.fused import ConvAct, optimize_for_inference

SMALL = 'hrnet_w18_small'
BF16 = torch.bfloat16
CL = torch.channels_last
ONEDNN_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def make(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(timm.create_model(SMALL, **kwargs)).eval()


def as_list(output: Tensor | list[Tensor]) -> list[Tensor]:
    return output if isinstance(output, list) else [output]


def errors(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """Medians over the batch of the per-image relative max difference and relative RMS difference."""
    diff = (actual.float() - expected).flatten(1)
    expected = expected.flatten(1)
    rel_max = diff.abs().amax(1) / expected.abs().amax(1)
    rel_rms = diff.norm(dim=1) / expected.norm(dim=1)
    return rel_max.median().item(), rel_rms.median().item()


@pytest.mark.parametrize('kwargs', [dict(), dict(features_only=True)], ids=['logits', 'features'])
@pytest.mark.parametrize('channels_last', [True, False], ids=['channels_last', 'nchw'])
@torch.inference_mode()
def test_bf16_fast_path_is_as_close_to_fp32_as_the_plain_bf16_model(kwargs: dict, channels_last: bool) -> None:
    model = make(**kwargs)
    x = torch.randn(6, 3, 96, 128)
    memory_format = CL if channels_last else torch.contiguous_format
    expected = as_list(model(x))
    plain = as_list(copy.deepcopy(model).to(BF16).to(memory_format=memory_format)(x.to(BF16)))
    fused_model = optimize_for_inference(model, channels_last=channels_last, dtype=BF16)
    fused = as_list(fused_model(x.to(BF16).contiguous(memory_format=memory_format)))
    assert len(fused) == len(expected)
    for index, (f, p, e) in enumerate(zip(fused, plain, expected)):
        assert f.dtype == BF16 and f.shape == e.shape
        fused_max, fused_rms = errors(f, e)
        plain_max, plain_rms = errors(p, e)
        assert fused_max <= plain_max and fused_rms <= plain_rms, (
            f'output {index}: fused bf16 max/rms {fused_max:.2e}/{fused_rms:.2e}, '
            f'plain bf16 {plain_max:.2e}/{plain_rms:.2e}')
        assert fused_max < 0.05


def test_dtype_casts_after_folding_in_float32() -> None:
    model = make()
    fused32 = optimize_for_inference(model)
    fused16 = optimize_for_inference(model, dtype=BF16)
    assert {p.dtype for p in fused16.parameters()} == {BF16}
    assert not any(p.requires_grad for p in fused16.parameters())
    weights32 = dict(fused32.named_parameters())
    for name, param in fused16.named_parameters():  # one rounding, from the float32 folding
        assert torch.equal(param, weights32[name].to(BF16)), name
    half_model = copy.deepcopy(model).to(BF16)  # a bf16 model folds in float32 too, then rounds once
    widened = dict(optimize_for_inference(copy.deepcopy(half_model).float()).named_parameters())
    for name, param in optimize_for_inference(half_model).named_parameters():
        assert torch.equal(param, widened[name].to(BF16)), name
    with pytest.raises(ValueError, match='floating-point dtype'):
        optimize_for_inference(model, dtype=torch.int8)


@pytest.mark.skipif(not ONEDNN_BF16, reason='this CPU has no native bfloat16 (AVX512-BF16 / AMX)')
def test_bf16_runs_fused_onednn_kernels_with_packed_weights() -> None:
    fused = optimize_for_inference(make(), channels_last=True, dtype=BF16)
    x = torch.randn(1, 3, 64, 64, dtype=BF16)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = fused(x)
    names = {event.key for event in prof.key_averages()}
    assert 'mkldnn::_convolution_pointwise' in names and 'mkldnn::_convolution_pointwise_' in names
    assert 'aten::mkldnn_convolution' not in names and 'aten::convolution' not in names  # every conv fused
    assert y.dtype == BF16
    convs = [m for m in fused.modules() if isinstance(m, ConvAct)]
    assert all(conv._pack is not None for conv in convs)  # the channels-last model packed its weights once


@pytest.mark.skipif(not ONEDNN_BF16, reason='this CPU has no native bfloat16 (AVX512-BF16 / AMX)')
def test_autocast_and_input_gradients_fall_back_to_plain_ops() -> None:
    model = make(num_classes=10)
    fused = optimize_for_inference(model, channels_last=True, dtype=BF16)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = fused(x.to(BF16)).float()
    with torch.no_grad(), torch.autocast('cpu', dtype=BF16):
        autocast = optimize_for_inference(model, channels_last=True)(x)
    assert (autocast.float() - expected).abs().max() <= 0.05 * expected.abs().max()
    x16 = x.to(BF16).requires_grad_(True)
    output = fused(x16)
    output.float().sum().backward()
    assert x16.grad is not None and x16.grad.abs().sum() > 0
    assert (output.detach().float() - expected).abs().max() <= 0.05 * expected.abs().max()
