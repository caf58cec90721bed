"""Export paths of the classifier and the features model, plain and fused: TorchScript, torch.export, ONNX, FX."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import timm
import torch
from helpers import features_model
from timm.models import create_feature_extractor

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints with timm)
from timm_hrnet import HRNet, optimize_for_inference

NAME = 'hrnet_w18_small'
# torch 2.14 deprecates torch.jit.script; it still works and TorchScript deployments still rely on it
SCRIPT_DEPRECATION = pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
# torch 2.6's dynamo ONNX exporter cannot decompose a resize to a symbolic size, nor serialise with the onnxscript
# releases that support torch 2.14: dynamo ONNX export is supported (and tested) from torch 2.7 on
TORCH_VERSION = tuple(int(part) for part in torch.__version__.split('+')[0].split('.')[:2])
ONNX_DYNAMO = pytest.mark.skipif(TORCH_VERSION < (2, 7), reason='dynamo ONNX export needs torch >= 2.7')


def assert_features_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rel: float = 1e-5) -> None:
    """Equal up to float rounding, measured against each map's magnitude (un-normalised features grow large)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=rel, atol=rel * max(1.0, e.abs().max().item()))


@SCRIPT_DEPRECATION
def test_torchscript_classifier(classifier: HRNet) -> None:
    scripted = torch.jit.script(classifier)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), classifier(x))
    with pytest.raises(torch.jit.Error, match='expects 3 input channels, got 1'):
        scripted(torch.randn(1, 1, 64, 64))


@SCRIPT_DEPRECATION
@pytest.mark.parametrize('location', ['incre', ''])
def test_torchscript_features(weights_file: Path, location: str) -> None:
    model = features_model(weights_file, feature_location=location)
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 77, 109)
    with torch.no_grad():
        assert_features_close(scripted(x), model(x))
    with pytest.raises(torch.jit.Error, match='at least 32x32 pixels'):
        scripted(torch.randn(1, 3, 16, 64))
    with pytest.raises(torch.jit.Error, match='4-D'):
        scripted(torch.randn(3, 64, 64))


def test_torch_export_dynamic_size(weights_file: Path) -> None:
    model = features_model(weights_file, feature_location='')
    size = torch.export.Dim('height', min=64, max=1024), torch.export.Dim('width', min=64, max=1024)
    exported = torch.export.export(model, (torch.randn(1, 3, 64, 96),), dynamic_shapes=({2: size[0], 3: size[1]},))
    with torch.no_grad():
        for shape in [(1, 3, 64, 96), (1, 3, 77, 109)]:
            x = torch.randn(*shape)
            assert_features_close(exported.module()(x), model(x))


@ONNX_DYNAMO
def test_onnx_export_matches_onnxruntime(weights_file: Path, tmp_path: Path) -> None:
    """dynamo=True exports with a dynamic batch and image size; onnxruntime agrees to 1e-4."""
    ort = pytest.importorskip('onnxruntime')
    model = features_model(weights_file, feature_location='')
    path = tmp_path / 'hrnet_features.onnx'
    batch = torch.export.Dim('batch', min=1, max=8)
    size = torch.export.Dim('height', min=64, max=1024), torch.export.Dim('width', min=64, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # exporter progress chatter and deprecation notices
        torch.onnx.export(
            model, (torch.randn(1, 3, 64, 96),), str(path), dynamo=True, input_names=['image'],
            dynamic_shapes=({0: batch, 2: size[0], 3: size[1]},),
        )
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for shape in [(1, 3, 64, 96), (2, 3, 77, 109)]:
        x = torch.randn(*shape)
        outputs = session.run(None, {'image': x.numpy()})
        with torch.no_grad():
            assert_features_close([torch.from_numpy(o) for o in outputs], model(x), rel=1e-4)


@pytest.mark.parametrize('location', ['incre', ''])
def test_fx_feature_extraction(classifier: HRNet, weights_file: Path, location: str) -> None:
    """feature_cls='fx' and create_feature_extractor trace every module name feature_info reports."""
    expected_model = features_model(weights_file, feature_location=location)
    fx_model = features_model(weights_file, feature_location=location, feature_cls='fx')
    assert type(fx_model).__name__ == 'FeatureGraphNet'
    names = expected_model.feature_info.module_name()
    reference = timm.create_model(NAME, feature_location=location)
    reference.load_state_dict(classifier.state_dict())
    extractor = create_feature_extractor(reference.eval(), return_nodes={name: name for name in names})
    x = torch.randn(1, 3, 77, 109)
    with torch.no_grad():
        expected = expected_model(x)
        assert_features_close(fx_model(x), expected)
        assert_features_close(list(extractor(x).values()), expected)


@ONNX_DYNAMO
def test_classifier_torch_export_and_onnx(classifier: HRNet, tmp_path: Path) -> None:
    ort = pytest.importorskip('onnxruntime')
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = classifier(x)
    exported = torch.export.export(classifier, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), expected, atol=1e-5, rtol=0)
    path = tmp_path / 'hrnet_classifier.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(classifier, (x,), str(path), dynamo=True, input_names=['image'])
    logits = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(None, {'image': x.numpy()})[0]
    assert (torch.from_numpy(logits) - expected).abs().max().item() <= 1e-4


# The fused model (optimize_for_inference) exports like the plain one: with a dynamic image size the graph holds no
# sizes of the export input, so it runs at other sizes, non-multiples of 32 included (branch sizes that do not
# halve exactly, where the exchange unit resizes by non-integer factors).
OTHER_SIZES = [(250, 330), (97, 161)]


@pytest.mark.parametrize('dynamo', [pytest.param(True, marks=ONNX_DYNAMO), False],
                         ids=['dynamo', 'torchscript_exporter'])
def test_fused_onnx_dynamic_size_runs_at_other_sizes(classifier: HRNet, tmp_path: Path, dynamo: bool) -> None:
    ort = pytest.importorskip('onnxruntime')
    if dynamo:
        pytest.importorskip('onnxscript')
    fused = optimize_for_inference(classifier, channels_last=True)
    path = tmp_path / 'hrnet_fused.onnx'
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # exporter chatter (progress, deprecation, tracer) is not what this checks
        if dynamo:
            size = torch.export.Dim('height', min=64, max=1024), torch.export.Dim('width', min=64, max=1024)
            torch.onnx.export(fused, (x,), str(path), dynamo=True, input_names=['image'],
                              dynamic_shapes=({2: size[0], 3: size[1]},))
        else:
            torch.onnx.export(fused, (x,), str(path), dynamo=False, input_names=['image'],
                              dynamic_axes={'image': {2: 'height', 3: 'width'}})
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for height, width in [(224, 224), *OTHER_SIZES]:
        x = torch.randn(1, 3, height, width)
        (logits,) = session.run(None, {'image': x.numpy()})
        with torch.no_grad():
            expected = classifier(x)
        assert (torch.from_numpy(logits) - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


@pytest.mark.parametrize('location', ['incre', ''])
def test_fused_torch_export_dynamic_size(weights_file: Path, location: str) -> None:
    model = features_model(weights_file, feature_location=location)
    fused = optimize_for_inference(model, channels_last=True)
    size = torch.export.Dim('height', min=64, max=1024), torch.export.Dim('width', min=64, max=1024)
    exported = torch.export.export(fused, (torch.randn(1, 3, 224, 224),), dynamic_shapes=({2: size[0], 3: size[1]},))
    ops = {str(node.target) for node in exported.graph.nodes if node.op == 'call_function'}
    assert not [op for op in ops if 'mkldnn' in op], 'the exported graph must hold portable ops only'
    with torch.no_grad():
        for height, width in OTHER_SIZES:
            x = torch.randn(1, 3, height, width)
            assert_features_close(exported.module()(x), model(x), rel=1e-4)
