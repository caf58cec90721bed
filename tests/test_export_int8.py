"""`timm_hrnet.int8`: the precisions OpenVINO's CPU plugin executes, read from compiled float and int8 IRs of a
tiny HRNet; `run_exported(..., precision_hint=...)` for an int8 IR's float remainder; `dtype='auto'`
(`timm_hrnet.export_choice`) with the timer injected, so the choice does not depend on this machine's speed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)
from timm_hrnet.export import ExportError, compile_openvino, export, run_exported
from timm_hrnet.export_choice import candidate_dtypes, export_auto
from timm_hrnet.int8 import describe_precisions, executed_precisions
from timm_hrnet.tools.cli import main

openvino = pytest.importorskip('openvino')
pytest.importorskip('nncf')
pytestmark = pytest.mark.usefixtures('single_torch_thread')
SIZE = (64, 64)


@pytest.fixture(scope='module')
def irs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float32 and an int8 (NNCF, random calibration) IR of hrnet_w18_small at 64x64, static batch 1."""
    folder = tmp_path_factory.mktemp('irs')
    model = timm.create_model('hrnet_w18_small').eval()
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(1, 3, *SIZE, generator=generator) for _ in range(3)]
    common = dict(input_size=SIZE, dynamic=False, check=False)
    return {'float32': export(model, folder / 'f32', 'openvino', **common).path,
            'int8': export(model, folder / 'int8', 'openvino', dtype='int8', calibration=calibration, **common).path}


def _compiled(path: Path, hint: str) -> object:
    return compile_openvino(path, {'INFERENCE_PRECISION_HINT': hint})


def test_float_ir_under_f32_hint_runs_every_convolution_in_f32(irs: dict[str, Path]) -> None:
    counts = executed_precisions(_compiled(irs['float32'], 'f32'))
    assert set(counts['Convolution']) == {'f32'}
    assert counts['Convolution']['f32'] >= 50  # hrnet_w18_small has about 90 convolutions (some fused away)
    assert not any('int8' in by_precision for by_precision in counts.values())


def test_int8_ir_runs_its_convolutions_in_int8(irs: dict[str, Path]) -> None:
    counts = executed_precisions(_compiled(irs['int8'], 'f32'))
    convolutions = counts['Convolution']
    assert convolutions['int8'] >= 50
    assert convolutions['int8'] == sum(convolutions.values())  # NNCF leaves no convolution of HRNet in float
    line = describe_precisions(_compiled(irs['int8'], 'f32'))
    assert line.startswith('convolutions/matmuls: int8 ') and '; other layers: ' in line


def test_bf16_hint_reaches_the_float_remainder_only_where_the_cpu_has_bf16(irs: dict[str, Path]) -> None:
    compiled = _compiled(irs['int8'], 'bf16')
    has_bf16 = 'BF16' in openvino.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    other = {p for layer_type, by_precision in executed_precisions(compiled).items()
             if not layer_type.startswith(('Convolution', 'FullyConnected')) for p in by_precision}
    assert ('bf16' in other) == has_bf16


def test_run_exported_takes_a_precision_hint(irs: dict[str, Path]) -> None:
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    plain = run_exported(irs['int8'], 'openvino', 'int8')(x)[0]
    hinted = run_exported(irs['int8'], 'openvino', 'int8', precision_hint='bf16')(x)[0]
    assert hinted.shape == plain.shape == (1, 1000)
    # bf16 rounding of the adds / resizes between int8 convolutions: close to, not equal to, the f32 remainder
    assert ((hinted - plain).abs().max() / plain.abs().max()).item() < 0.2


@pytest.fixture(scope='module')
def tiny_classifier() -> torch.nn.Module:
    return timm.create_model('hrnet_w18_small', num_classes=10).eval()


def _calibration(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(1, 3, *SIZE, generator=generator) for _ in range(count)]


def _timer(seconds: dict[str, float]):  # noqa: ANN202  (a timer for export_auto)
    def timer(calls: dict) -> dict[str, float]:
        return {dtype: seconds[dtype] for dtype in calls}
    return timer


@pytest.mark.parametrize(('min_agreement', 'expected'), [(0.0, 'int8'), (1.01, 'float32')])
def test_auto_keeps_the_fastest_candidate_within_the_accuracy_rule(
        tiny_classifier: torch.nn.Module, tmp_path: Path, min_agreement: float, expected: str) -> None:
    """Timing injected: int8 fastest, bfloat16 (where offered) slower than float32. A rule int8 meets keeps int8;
    a rule nothing but float32 can meet (agreement above 1) falls back to float32 and says why."""
    seconds = {'float32': 1.0, 'bfloat16': 1.5, 'int8': 0.4}
    choice = export_auto(tiny_classifier, tmp_path / 'model.xml', 'openvino', calibration=_calibration(4),
                         input_size=SIZE, check=False, min_agreement=min_agreement, timer=_timer(seconds))
    assert choice.report.dtype == expected
    assert choice.report.path == tmp_path / 'model.xml'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.bin', 'model.xml']
    assert {c.dtype for c in choice.candidates} == set(candidate_dtypes('openvino'))
    assert choice.reason.startswith(f'{expected}: ')
    if expected == 'int8':
        assert '2.50x float32' in choice.reason
    else:
        assert 'int8 was faster (2.50x) but agreed on' in choice.reason
    run = run_exported(choice.report.path, 'openvino', choice.report.dtype)
    assert run(_calibration(1)[0])[0].shape == (1, 10)


def test_auto_without_calibration_is_one_line(tiny_classifier: torch.nn.Module, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ExportError, match='dtype auto needs calibration images'):
        export_auto(tiny_classifier, tmp_path / 'model.xml', 'openvino', calibration=None)
    assert main(['export', '--model', 'hrnet_w18_small', '--out', str(tmp_path / 'm.xml'), '--format', 'openvino',
                 '--dtype', 'auto']) == 2
    error = capsys.readouterr().err.strip()
    assert '--dtype auto needs --calibration' in error and '\n' not in error
    assert list(tmp_path.iterdir()) == []


def test_auto_with_fewer_calibration_images_than_the_static_batch_is_one_line(
        tiny_classifier: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match='^2 calibration images for a static batch of 4: give at least 4$'):
        export_auto(tiny_classifier, tmp_path / 'model.xml', 'openvino', calibration=_calibration(2),
                    input_size=SIZE, dynamic=False, batch_size=4, timer=_timer({}))
    assert list(tmp_path.iterdir()) == []


def test_benchmark_says_which_precision_torch_runs_in(capsys: pytest.CaptureFixture) -> None:
    common = ['benchmark', '--model', 'hrnet_w18_small', '--batch-size', '1', '--img-size', '32', '--steps', '1',
              '--device', 'cpu']
    assert main([*common, '--dtype', 'bfloat16', '--fused']) == 0
    line = capsys.readouterr().out.strip()
    assert f'; runs in bfloat16 (torch CPU kernels: {torch.backends.cpu.get_cpu_capability()})' in line
    assert main([*common, '--amp', '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['executed_precision'].startswith('bfloat16 convolutions/matmuls, float32 elsewhere (autocast)')
