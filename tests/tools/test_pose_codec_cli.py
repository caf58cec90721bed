"""`--codec` of `timm-hrnet pose` and `timm-hrnet evaluate-pose`: the codec a DARK / UDP file says is used and
reported; an explicit one that contradicts the file, or a malformed one, is one line on stderr."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import openmmlab_fixture
from PIL import Image

from timm_hrnet.tools.cli import main

pytestmark = pytest.mark.usefixtures('single_torch_thread')
DARK_0X = 'hrnet_w32_coco_384x288_dark-741844ba_20200812.pth'


@pytest.fixture(scope='module')
def dark_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reduced mmpose network as mmpose 0.x released its DARK 384x288 file (keypoint_head.*, config in meta)."""
    raw = torch.load(openmmlab_fixture('mmpose_td-hm_hrnet_reduced.pth'), weights_only=True)
    state_dict = {k.replace('head.', 'keypoint_head.', 1) if k.startswith('head.') else k: v
                  for k, v in raw['state_dict'].items()}
    path = tmp_path_factory.mktemp('codec_cli') / DARK_0X
    config = "test_cfg=dict(flip_test=True, post_process='unbiased', shift_heatmap=True, modulate_kernel=17)"
    torch.save({'meta': {'config': config}, 'state_dict': state_dict}, path)
    return path


@pytest.fixture(scope='module')
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('codec_cli_image') / 'person.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(path)
    return path


def test_pose_uses_and_reports_the_files_codec(dark_file: Path, image: Path, capsys: pytest.CaptureFixture) -> None:
    args = ['pose', str(image), '--checkpoint', str(dark_file), '--box', '10', '10', '60', '100']
    assert main([*args, '--json']) == 0
    detected = json.loads(capsys.readouterr().out)
    assert detected['codec'] == 'dark:17' and detected['input_size'] == [384, 288]
    assert main([*args, '--json', '--codec', 'dark']) == 0  # completes what the file says: the same keypoints
    assert json.loads(capsys.readouterr().out)['people'] == detected['people']
    assert main(args) == 0
    assert 'input 384x288, codec dark:17' in capsys.readouterr().out


@pytest.mark.parametrize('command', ['pose', 'evaluate-pose'])
def test_a_codec_that_contradicts_the_file_is_one_line(command: str, dark_file: Path, image: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    args = [command, '--checkpoint', str(dark_file), '--codec', 'udp']
    args += [str(image)] if command == 'pose' else ['--annotations', 'a.json', '--images', '.', '--gt-boxes']
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and DARK_0X in err
    assert err.endswith('is a dark:17 heatmap checkpoint (its meta config has post_process=\'unbiased\'); codec udp '
                        'does not fit it')


def test_a_malformed_codec_is_refused_when_parsed(dark_file: Path, image: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(['pose', str(image), '--checkpoint', str(dark_file), '--codec', 'dark:16'])
    assert 'argument --codec: codec: the blur kernel size must be a positive odd integer, got 16' in (
        capsys.readouterr().err)
