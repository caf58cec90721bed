"""`optimize_for_inference`: the fused model computes what the original computes, and refuses to be trained."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import timm
import torch
from helpers import randomize_batchnorm
from torch import nn

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)
from timm_hrnet.fused import ConvAct, is_inference_optimized, optimize_for_inference
from timm_hrnet.variants import VARIANTS

SMALL = 'hrnet_w18_small'


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """max|a - b| <= 1e-4 * max|b|: equal up to float rounding, relative to the output's scale."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    error = (actual - expected).abs().max().item()
    assert error <= 1e-4 * scale, f'max abs diff {error:.3g} exceeds 1e-4 * {scale:.3g}'


def assert_all_close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        assert_close(a, b)


def make(name: str = SMALL, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(timm.create_model(name, **kwargs)).eval()


pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.fixture(scope='module')
def small_pair() -> tuple[nn.Module, nn.Module]:
    model = make()
    return model, optimize_for_inference(model)


@pytest.mark.parametrize('name', list(VARIANTS))
@torch.inference_mode()
def test_every_variant_matches(name: str) -> None:
    model = make(name, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    fused = optimize_for_inference(model, inplace=True)  # no copy of the weights: keeps the big variants quick
    assert fused is model
    assert not [m for m in fused.modules() if isinstance(m, nn.BatchNorm2d)]
    assert_close(fused(x), expected)


@torch.inference_mode()
def test_channels_last_and_inexact_resize_match(small_pair: tuple[nn.Module, nn.Module]) -> None:
    model, fused = small_pair
    fused_nhwc = optimize_for_inference(model, channels_last=True)
    assert fused_nhwc.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    # 72x88: branch sizes 18x22, 9x11, 5x6, 3x3, so the exchange unit resizes by non-integer factors
    for size in ((64, 64), (72, 88)):
        x = torch.randn(2, 3, *size)
        expected = model(x)
        assert_close(fused(x), expected)
        assert_close(fused_nhwc(x), expected)
        assert_close(fused_nhwc(x.contiguous(memory_format=torch.channels_last)), expected)


@pytest.mark.parametrize('output_stride', [8, 16])
@torch.inference_mode()
def test_dilated_output_strides_match(output_stride: int) -> None:
    model = make(output_stride=output_stride, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    assert_close(optimize_for_inference(model)(x), model(x))


@pytest.mark.parametrize('kwargs', [
    dict(features_only=True),
    dict(features_only=True, out_indices=(1, 3)),
    dict(features_only=True, out_indices=(0,)),
    dict(features_only=True, feature_location=''),
    dict(features_only=True, feature_cls='getter'),
    dict(features_only=True, feature_cls='hook'),
    dict(features_only=True, feature_cls='hook', feature_location=''),
], ids=['all', 'subset', 'stem_only', 'branches', 'getter', 'hooks', 'hooks_on_fuse_acts'])
@torch.inference_mode()
def test_features_match(kwargs: dict) -> None:
    model = make(**kwargs)
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    assert len(expected) == len(model.feature_info.out_indices)
    assert_all_close(optimize_for_inference(model)(x), expected)


@torch.inference_mode()
def test_forward_intermediates_match(small_pair: tuple[nn.Module, nn.Module]) -> None:
    model, fused = small_pair
    x = torch.randn(1, 3, 64, 64)
    final, intermediates = fused.forward_intermediates(x)
    expected_final, expected_intermediates = model.forward_intermediates(x)
    assert_close(final, expected_final)
    assert_all_close(intermediates, expected_intermediates)


def test_original_is_untouched_and_fused_is_frozen(small_pair: tuple[nn.Module, nn.Module]) -> None:
    model, fused = small_pair
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not is_inference_optimized(model) and is_inference_optimized(fused)
    assert isinstance(fused, timm_hrnet.HRNet)
    assert not any(p.requires_grad for p in fused.parameters())
    assert all(p.requires_grad for p in model.parameters())
    model.train()  # the original still trains
    model.eval()


def test_training_is_refused(small_pair: tuple[nn.Module, nn.Module]) -> None:
    _, fused = small_pair
    with pytest.raises(RuntimeError, match='inference-only fused model .* train the original, unfused model'):
        fused.train()
    assert not any(m.training for m in fused.modules()), '.train() must fail before changing any mode'
    with pytest.raises(RuntimeError, match='inference-only'):
        nn.Sequential(fused).train()
    fused.eval()
    fused.train(False)
    for module in fused.modules():  # sneaking past .train() still cannot run a training forward
        module.training = True
    try:
        with pytest.raises(RuntimeError, match='inference-only'):
            fused(torch.randn(1, 3, 64, 64))
    finally:
        fused.eval()


def test_unsupported_model_is_rejected() -> None:
    with pytest.raises(ValueError, match='could not fold these BatchNorm layers of a Sequential: 1 '):
        optimize_for_inference(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval())


def test_cpu_uses_fused_onednn_kernels_and_plain_ops_for_input_gradients(
        small_pair: tuple[nn.Module, nn.Module]) -> None:
    model, fused = small_pair
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            assert_close(fused(x), expected)
    op_names = {event.key for event in profiler.key_averages()}
    assert 'mkldnn::_convolution_pointwise' in op_names and 'mkldnn::_convolution_pointwise_' in op_names
    x.requires_grad_(True)  # oneDNN's fused kernels have no autograd: saliency-style input gradients use plain ops
    output = fused(x)
    assert_close(output.detach(), expected)
    output.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@torch.inference_mode()
def test_torch_compile_traces_one_graph_and_matches(small_pair: tuple[nn.Module, nn.Module]) -> None:
    """fullgraph=True fails on any graph break; the 'eager' backend keeps this quick (inductor: see the benchmark)."""
    model, fused = small_pair
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend='eager', fullgraph=True, dynamic=False)
    x = torch.randn(1, 3, 64, 64)
    assert_close(compiled(x), model(x))


@torch.inference_mode()
def test_torchscript_matches(small_pair: tuple[nn.Module, nn.Module]) -> None:
    model, fused = small_pair
    scripted = torch.jit.script(fused)
    for size in ((64, 64), (72, 88)):
        x = torch.randn(1, 3, *size)
        assert_close(scripted(x), model(x))


@pytest.mark.parametrize('dynamo', [True, False], ids=['dynamo', 'torchscript_exporter'])
def test_onnx_export_matches_onnxruntime(small_pair: tuple[nn.Module, nn.Module], tmp_path, dynamo: bool) -> None:
    onnxruntime = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnx')
    if dynamo:
        pytest.importorskip('onnxscript')
    model, fused = small_pair
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / 'hrnet_fused.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # exporter chatter (deprecation, tracer) is not what this test checks
        torch.onnx.export(fused, (x,), str(path), input_names=['image'], output_names=['logits'], dynamo=dynamo)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (logits,) = session.run(None, {'image': x.numpy()})
    with torch.inference_mode():
        assert_close(torch.from_numpy(logits), model(x))


def test_fused_model_saves_and_loads_whole(small_pair: tuple[nn.Module, nn.Module], tmp_path) -> None:
    _, fused = small_pair
    path = tmp_path / 'fused.pt'
    torch.save(fused, path)
    loaded = torch.load(path, weights_only=False)  # a whole pickled module: trusted, written by this test
    assert type(loaded) is type(fused) and is_inference_optimized(loaded)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), fused(x))


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@torch.inference_mode()
def test_packed_weights_follow_the_weights_and_stay_out_of_saved_state(
        small_pair: tuple[nn.Module, nn.Module], tmp_path: Path) -> None:
    """A channels-last model keeps its weights pre-packed for oneDNN; that copy is a cache, never state."""
    model, _ = small_pair
    fused = optimize_for_inference(model, channels_last=True)
    x = torch.randn(1, 3, 64, 64)
    assert_close(fused(x), model(x))
    convs = [m for m in fused.modules() if isinstance(m, ConvAct)]
    if torch.backends.mkldnn.is_available():
        assert all(conv._pack is not None for conv in convs)
    assert not [key for key in fused.state_dict() if 'pack' in key]
    torch.manual_seed(1)
    other_model = randomize_batchnorm(timm.create_model(SMALL), seed=2).eval()
    fused.load_state_dict(optimize_for_inference(other_model).state_dict())  # in place: the packed copies follow
    expected = other_model(x)
    assert_close(fused(x), expected)
    path = tmp_path / 'fused.pt'
    torch.save(fused, path)
    loaded = torch.load(path, weights_only=False)  # a whole pickled module: trusted, written by this test
    assert not [conv for conv in loaded.modules() if isinstance(conv, ConvAct) and conv._pack is not None]
    for copied in (loaded, copy.deepcopy(fused), torch.jit.script(fused)):
        assert_close(copied(x), expected)
    fused.double()  # conversions drop the packed copies (float64 then runs the plain ops)
    assert not [conv for conv in convs if conv._pack is not None]
    assert_close(fused(x.double()).float(), expected)
    assert_close(fused.float()(x), expected)


@torch.inference_mode()
def test_fast_path_is_decided_per_model_call(small_pair: tuple[nn.Module, nn.Module]) -> None:
    """The model decides once per call for all its convs; a unit called on its own decides for itself."""
    model, fused = small_pair
    with pytest.raises(ValueError, match='expects 3 input channels'):
        fused(torch.randn(1, 1, 64, 64))
    assert fused.call_state.fusable is None  # a failed call leaves no decision behind
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # the call after it still sees its own context
        assert fused(x).dtype == torch.bfloat16
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        stem = fused.conv1(x)
    assert 'mkldnn::_convolution_pointwise' in {event.key for event in profiler.key_averages()}
    assert_close(stem, model.act1(model.bn1(model.conv1(x))))
