"""`export(pose_model, ..., decode=True)` / `timm-hrnet export --pose ... --decode`: a graph whose outputs are the
keypoints in crop pixels and their scores, by the model's codec, equal in onnxruntime to PyTorch's decoding."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import openmmlab_fixture
from torch import nn

from timm_hrnet.export import ExportError, export, run_exported
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tasks.pose_codecs import decode_heatmaps
from timm_hrnet.tools.cli import main

pytest.importorskip('onnxruntime')
pytestmark = pytest.mark.usefixtures('single_torch_thread')
SIZE = (64, 48)


@pytest.mark.parametrize('codec', ['official', 'dark:17', 'udp-mmpose0'])
def test_decoded_export_gives_the_models_keypoints(codec: str, tmp_path: Path) -> None:
    model = create_pose_model(openmmlab_fixture('mmpose_td-hm_hrnet_reduced.pth'), input_size=SIZE, codec=codec)
    report = export(model, tmp_path / 'pose.onnx', decode=True)
    assert report.outputs == ('keypoints', 'scores') and report.checks[0].size == SIZE
    crops = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(1))  # a batch the export did not see
    keypoints, scores = run_exported(report.path, 'onnx')(crops)
    with torch.no_grad():
        expected, expected_scores = model.forward_keypoints(crops)
        heatmaps = model(crops)
    # the graph runs the fused network (BatchNorm folded): float rounding, which DARK / UDP's Newton step amplifies
    assert keypoints.shape == (3, 17, 2) and (keypoints - expected).abs().max().item() < 1e-2
    assert (scores - expected_scores).abs().max().item() < 1e-4
    # crop pixels: laid over a box by the codec's frame, they are the keypoints predict gives for that box
    centers, sizes = torch.tensor([[50.0, 60.0]] * 3), torch.tensor([[90.0, 120.0]] * 3)
    in_image, _ = decode_heatmaps(heatmaps, centers, sizes, codec=model.codec)
    origin, step = model.codec.frame(sizes, SIZE)
    assert torch.allclose(centers[:, None] + (expected - origin) * step[:, None], in_image, atol=1e-3)


def test_decode_needs_a_pose_model(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match='decode=True exports the keypoints of a pose model'):
        export(nn.Conv2d(3, 3, 1), tmp_path / 'conv.onnx', decode=True)


def test_export_command_decodes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'pose.onnx'
    args = ['export', '--pose', str(openmmlab_fixture('mmpose_td-hm_hrnet_reduced.pth')), '--out', str(out),
            '--img-size', '64', '48']
    assert main([*args, '--decode', '--codec', 'dark']) == 0
    assert 'batch (fixed size), outputs keypoints, scores' in capsys.readouterr().out and out.is_file()
    assert main(['export', '--model', 'hrnet_w18_small', '--out', str(out), '--decode']) == 2
    assert capsys.readouterr().err.strip().endswith('--decode and --codec export a pose model: give --pose CHECKPOINT')
