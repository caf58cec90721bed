"""`timm-hrnet pose` and `timm-hrnet segment`, through a parser built with the subcommands' own functions."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from task_reference import official_shapes, random_checkpoint, tiny_extra

from timm_hrnet.images import to_pil
from timm_hrnet.tasks.drawing import colorize_labels, draw_pose, overlay_labels
from timm_hrnet.tools.cli_common import CliError
from timm_hrnet.tools.task_cli import add_pose_parser, add_segment_parser

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog='timm-hrnet')
    subparsers = parser.add_subparsers(dest='command', required=True)
    add_pose_parser(subparsers)
    add_segment_parser(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope='module')
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('tasks_cli')
    paths = dict(image=folder / 'people.png', pose=folder / 'pose_hrnet_tiny_64x48.pth',
                 seg=folder / 'seg_tiny.pth', seg_custom=folder / 'seg_custom.pth', broken=folder / 'broken.pth')
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 60, 3), dtype=np.uint8)).save(paths['image'])
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17)), paths['pose'])
    seg = random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19))
    torch.save({f'model.{k}': v for k, v in seg.items()} | {'loss.criterion.weight': torch.ones(19)}, paths['seg'])
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 5)), paths['seg_custom'])
    paths['broken'].write_bytes(b'not a checkpoint')
    return paths


def test_pose_text_and_drawing(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'pose.png'
    assert run(['pose', str(files['image']), '--checkpoint', str(files['pose']), '--out', str(out),
                '--box', '5', '5', '40', '50', '--box', '10', '0', '30', '60', '--threshold', '-100']) == 0
    text = capsys.readouterr().out
    assert '2 person box(es), 17 keypoints, input 64x48' in text and 'right_ankle' in text and f'wrote {out}' in text
    drawn = Image.open(out)
    assert drawn.size == (60, 70) and drawn.mode == 'RGB'
    assert np.any(np.asarray(drawn) != np.asarray(Image.open(files['image'])))  # something was drawn


def test_pose_json(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert run(['pose', str(files['image']), '--checkpoint', str(files['pose']), '--json', '--no-flip']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['input_size'] == [64, 48] and result['out'] is None
    (person,) = result['people']
    assert person['box'] == [0.0, 0.0, 60.0, 70.0] and len(person['keypoints']) == 17
    assert set(person['keypoints'][0]) == {'name', 'x', 'y', 'score'}


def test_segment_text_json_and_drawing(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'seg.png'
    assert run(['segment', str(files['image']), '--checkpoint', str(files['seg']), '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert '70x60, 19 classes (cityscapes), align_corners=False' in text and '%' in text
    assert Image.open(out).size == (60, 70)
    assert run(['segment', str(files['image']), '--checkpoint', str(files['seg']), '--json', '--flip',
                '--scales', '0.5', '1', '--window', '48x48', '--align-corners', 'true']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['size'] == [70, 60] and result['align_corners'] is True and result['dataset'] == 'cityscapes'
    assert sum(c['fraction'] for c in result['classes']) == pytest.approx(1.0, abs=1e-4)


def test_user_errors(files: dict[str, Path], tmp_path: Path) -> None:
    image, pose, seg = str(files['image']), str(files['pose']), str(files['seg'])
    with pytest.raises(CliError, match='checkpoint not found'):
        run(['pose', image, '--checkpoint', str(tmp_path / 'missing.pth')])
    with pytest.raises(CliError, match='image not found'):
        run(['segment', str(tmp_path / 'missing.png'), '--checkpoint', seg])
    with pytest.raises(CliError, match='segmentation checkpoint.*create_seg_model'):
        run(['pose', image, '--checkpoint', seg])
    with pytest.raises(CliError, match='not a readable PyTorch checkpoint'):
        run(['segment', image, '--checkpoint', str(files['broken'])])
    with pytest.raises(CliError, match='5 classes.*pass align_corners'):
        run(['segment', image, '--checkpoint', str(files['seg_custom'])])
    assert run(['segment', image, '--checkpoint', str(files['seg_custom']), '--align-corners', 'false']) == 0
    with pytest.raises(CliError, match='positive width and height'):
        run(['pose', image, '--checkpoint', pose, '--box', '0', '0', '-5', '10'])
    with pytest.raises(CliError, match='cannot read image'):
        run(['pose', str(files['broken']), '--checkpoint', pose])
    with pytest.raises(SystemExit):
        run(['pose', image, '--checkpoint', pose, '--input-size', '16x16'])


def test_drawing_helpers() -> None:
    labels = torch.tensor([[0, 1], [2, 1]])
    palette = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
    colours = np.asarray(colorize_labels(labels, palette)).tolist()
    assert colours == [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [255, 0, 0]]]
    image = to_pil(torch.ones(1, 2, 2))  # a greyscale tensor in [0, 1]
    assert image.mode == 'RGB' and np.asarray(image).min() == 255
    assert np.asarray(overlay_labels(image, labels, palette, alpha=1.0)).tolist() == colours
    with pytest.raises(ValueError, match='label 2 has no colour in a palette of 2'):
        colorize_labels(labels, palette[:2])
    with pytest.raises(ValueError, match='does not match the image'):
        overlay_labels(Image.new('RGB', (3, 2)), labels, palette)
    drawn = draw_pose(Image.new('RGB', (20, 20)), torch.tensor([[[5.0, 5.0], [15.0, 15.0]]]),
                      torch.tensor([[0.9, 0.9]]), skeleton=((0, 1),))
    assert np.asarray(drawn)[10, 10].any()  # the limb between the two points


def test_help_names_the_openmmlab_checkpoints() -> None:
    parser = argparse.ArgumentParser(prog='timm-hrnet')
    subparsers = parser.add_subparsers(dest='command', required=True)
    pose_help = add_pose_parser(subparsers).format_help()
    segment_help = add_segment_parser(subparsers).format_help()
    assert 'pose_hrnet' in pose_help and 'mmpose' in pose_help
    assert 'seg_hrnet' in segment_help and 'mmseg' in segment_help
    overview = ' '.join(parser.format_help().split())  # the one-line help of each subcommand
    assert "official pose_hrnet or mmpose's top-down HRNet" in overview
    assert "official seg_hrnet or mmseg's HRNet + FCNHead" in overview
