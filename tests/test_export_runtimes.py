"""`timm_hrnet.export` / `timm-hrnet export`: ONNX and OpenVINO files of every model kind, run in their runtimes
against the PyTorch model at the export size and other sizes; int8 from a calibration folder; errors are one line
and leave nothing at the target."""
from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from task_reference import official_shapes, random_checkpoint, tiny_extra

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)
from timm_hrnet import export as export_module
from timm_hrnet.export import ExportError, export, run_exported
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tasks.segmentation import create_seg_model
from timm_hrnet.tools.cli import main

pytestmark = pytest.mark.usefixtures('single_torch_thread')
NAME = 'hrnet_w18_small'


@pytest.fixture(scope='module')
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp('calibration')
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / f'{k}.png')
    return folder


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_onnx_classifier_dynamic_batch_and_size(classifier: torch.nn.Module, tmp_path: Path) -> None:
    report = export(classifier, tmp_path / 'model', 'onnx')
    assert report.path == tmp_path / 'model.onnx' and _leftovers(tmp_path) == ['model.onnx']
    assert [c.size for c in report.checks] == [(224, 224), (250, 330), (97, 161)]
    assert report.max_rel_diff <= 1e-4 and all(c.agreement == 1.0 for c in report.checks)
    run = run_exported(report.path, 'onnx')
    x = torch.randn(3, 3, 130, 170)  # a batch and a size the report did not check
    with torch.no_grad():
        expected = classifier(x)
    (logits,) = run(x)
    assert (logits - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_static_export_is_checked_at_its_size_only(classifier: torch.nn.Module, tmp_path: Path) -> None:
    report = export(classifier, tmp_path / 'static.onnx', 'onnx', dynamic=False, input_size=(160, 128))
    assert [c.size for c in report.checks] == [(160, 128)] and report.max_rel_diff <= 1e-4


def test_static_batch_openvino_int8(classifier: torch.nn.Module, calibration: Path, tmp_path: Path) -> None:
    """A static export fixes the batch a deployment runs: calibration images are regrouped into that batch."""
    pytest.importorskip('openvino')
    pytest.importorskip('nncf')
    report = export(classifier, tmp_path / 'b4.xml', 'openvino', dtype='int8', dynamic=False, batch_size=4,
                    input_size=(96, 128), calibration=calibration)
    assert report.batch_size == 4 and [c.size for c in report.checks] == [(96, 128)]
    assert '4,3,96,128' in report.path.read_text().replace(' ', '') and 0 < report.max_rel_diff < 1
    (logits,) = run_exported(report.path, 'openvino', 'int8')(torch.randn(4, 3, 96, 128))
    assert logits.shape == (4, classifier.num_classes)
    with pytest.raises(ExportError, match='6 calibration images for a static batch of 8'):
        export(classifier, tmp_path / 'b8.xml', 'openvino', dtype='int8', dynamic=False, batch_size=8,
               calibration=calibration)
    with pytest.raises(ExportError, match='batch_size=4: a static export'):
        export(classifier, tmp_path / 'dynamic.onnx', 'onnx', batch_size=4)
    assert _leftovers(tmp_path) == ['b4.bin', 'b4.xml']


def test_features_pose_and_segmentation(tmp_path: Path) -> None:
    features = timm.create_model(NAME, features_only=True).eval()
    report = export(features, tmp_path / 'features.onnx', 'onnx')
    assert report.outputs == tuple(f'feature_{i}' for i in range(5)) and report.max_rel_diff <= 1e-4

    pose = create_pose_model(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17)))
    report = export(pose, tmp_path / 'pose.onnx', 'onnx')
    assert report.input_size == (256, 192) and report.max_rel_diff <= 1e-4
    assert all(c.agreement == 1.0 for c in report.checks)  # heatmap argmax of every joint

    seg = create_seg_model(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19)))
    report = export(seg, tmp_path / 'seg.onnx', 'onnx', input_size=(128, 256))
    assert report.max_rel_diff <= 1e-4 and all(c.agreement > 0.999 for c in report.checks)


def test_openvino_float32_bf16_and_fp16(classifier: torch.nn.Module, tmp_path: Path) -> None:
    pytest.importorskip('openvino')
    report = export(classifier, tmp_path / 'model.xml', 'openvino')
    assert _leftovers(tmp_path) == ['model.bin', 'model.xml'] and report.max_rel_diff <= 1e-4
    for dtype in ('bfloat16', 'float16'):
        report = export(classifier, tmp_path / f'model_{dtype}', 'openvino', dtype=dtype)
        assert report.max_rel_diff <= export_module.TOLERANCE[dtype]


def test_int8_from_a_calibration_folder(classifier: torch.nn.Module, calibration: Path, tmp_path: Path) -> None:
    report = export(classifier, tmp_path / 'int8.onnx', 'onnx', dtype='int8', calibration=calibration)
    model = __import__('onnx').load(str(report.path))
    assert any(node.op_type == 'QuantizeLinear' for node in model.graph.node)
    assert 0 < report.max_rel_diff < 1  # quantized: not exact, reported rather than judged
    assert _leftovers(tmp_path) == ['int8.onnx']


def test_openvino_int8_with_nncf(classifier: torch.nn.Module, calibration: Path, tmp_path: Path) -> None:
    pytest.importorskip('openvino')
    pytest.importorskip('nncf')
    report = export(classifier, tmp_path / 'int8.xml', 'openvino', dtype='int8', calibration=calibration)
    assert 'FakeQuantize' in report.path.read_text() or 'FakeConvert' in report.path.read_text()
    assert 0 < report.max_rel_diff < 1


def test_bad_requests_are_one_line_and_write_nothing(classifier: torch.nn.Module, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportError, match='unknown export format'):
        export(classifier, tmp_path / 'x', 'tflite')
    with pytest.raises(ExportError, match='bfloat16 ONNX'):
        export(classifier, tmp_path / 'x', 'onnx', dtype='bfloat16')
    with pytest.raises(ExportError, match='int8 needs calibration'):
        export(classifier, tmp_path / 'x', 'onnx', dtype='int8')
    corrupt = tmp_path / 'calibration'
    corrupt.mkdir()
    Image.new('RGB', (32, 32)).save(corrupt / 'a.png')
    (corrupt / 'b.png').write_bytes(b'not a png')
    with pytest.raises(ExportError, match=r'b\.png'):
        export(classifier, tmp_path / 'x', 'onnx', dtype='int8', calibration=corrupt)

    real_import = builtins.__import__

    def without_openvino(name: str, *args: object, **kwargs: object) -> object:
        if name.split('.')[0] == 'openvino':
            raise ImportError('No module named openvino')
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, '__import__', without_openvino)
        patch.delitem(__import__('sys').modules, 'openvino', raising=False)
        with pytest.raises(ExportError, match=r'openvino is not installed: pip install "timm-hrnet\[openvino\]"'):
            export(classifier, tmp_path / 'x', 'openvino')

    monkeypatch.setitem(export_module.TOLERANCE, 'float32', 0.0)  # any difference now fails the check
    with pytest.raises(ExportError, match='nothing was written'):
        export(classifier, tmp_path / 'x', 'onnx')
    assert _leftovers(tmp_path) == ['calibration']  # no model file, no temporary folder


def test_cli(classifier: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / 'weights.pth'
    torch.save(classifier.state_dict(), weights)
    out = tmp_path / 'cli.onnx'
    assert main(['export', '--model', NAME, '--checkpoint', str(weights), '--out', str(out), '--img-size', '128']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f'wrote {out} (onnx, float32, export size 128x128, dynamic')
    assert [line.split(':')[0].strip() for line in lines[1:]] == ['128x128', '250x330', '97x161']
    assert main(['export', '--model', 'hrnet_w1', '--out', str(tmp_path / 'x.onnx')]) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and 'hrnet_w18' in error  # unknown variant: one line, close names suggested
