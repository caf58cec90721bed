"""hub_upload publishes what training writes: a `train_pose` / `train_seg` output folder (or its model.safetensors
with config.json beside it) becomes a verified repo whose config.json and card carry what the weights cannot tell
(input size, align_corners) and the run's own label set (keypoint names, flip pairs, OKS sigmas; class names,
palette, class flip pairs), and the staged repo loads back through create_pose_model / load_pose_model /
load_seg_model with the trained model's outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import openmmlab_fixture
from hub_common import leftovers
from test_hub_openmmlab import as_the_card_says, bare_weights
from training_data import FAST, JOINTS, POSE_INPUT, make_pose_data, make_seg_data

from hub_upload.__main__ import main
from hub_upload.tasks import convert_task_to_dir, verify_task_dir
from timm_hrnet.tasks.datasets import SegDatasetInfo
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tasks.segmentation import create_seg_model
from timm_hrnet.tasks.training import load_pose_model, load_seg_model, read_keypoint_file, train_pose, train_seg

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def test_a_pose_training_output_publishes_and_loads_back(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """train-pose -> hub_upload convert OUTPUT_DIR (no --input-size) -> verify -> the repo's model gives the trained
    model's heatmaps, with its keypoint set (the flip test uses its flip pairs)."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    trained = train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2,
                         output_dir=str(tmp_path / 'run'), **FAST)
    run, repo = trained.output_dir, tmp_path / 'repo'
    assert main(['convert', str(run), '--out', str(repo), '--repo-id', 'someone/blob_pose']) == 0
    output = capsys.readouterr().out
    assert f"config.json: input size 64x48 from '{run / 'config.json'}'" in output
    assert output.startswith('verify OK (self-consistency only)') and 'relative max diff 0 ' in output

    config = json.loads((repo / 'config.json').read_text())
    assert (config['task'], config['num_joints'], config['input_size']) == ('pose', 5, [3, 64, 48])
    assert config['keypoints'] == 'blob' and config['flip_pairs'] == [[1, 2], [3, 4]]
    keypoint_set = config['keypoint_set']
    assert keypoint_set['keypoints'] == list(JOINTS) and keypoint_set['flip_pairs'] == [[1, 2], [3, 4]]
    assert keypoint_set['sigmas'] == [0.1] * 5
    card = (repo / 'README.md').read_text()
    for expected in ('| Keypoint names | `head`, `left_hand`, `right_hand`, `left_foot`, `right_foot` |',
                     '| Flip pairs | `left_hand` / `right_hand`, `left_foot` / `right_foot` |',
                     '| OKS sigmas | 0.1, 0.1, 0.1, 0.1, 0.1 |', 'a timm_hrnet training run (`timm-hrnet train-pose`)',
                     "model = load_pose_model(snapshot_download('someone/blob_pose'",
                     'timm_hrnet.create_pose_model(weights, input_size=(64, 48))'):
        assert expected in card, expected
    assert main(['verify', str(repo), '--against', str(run)]) == 0
    capsys.readouterr()

    loaded = load_pose_model(repo)
    assert loaded.input_size == POSE_INPUT and loaded.keypoint_info == read_keypoint_file(keypoints)
    as_card_says = create_pose_model(repo / 'model.safetensors', input_size=tuple(config['input_size'][1:]))
    crops = torch.rand(2, 3, *POSE_INPUT)
    with torch.no_grad():
        expected = trained.model(crops)
        assert torch.equal(loaded(crops), expected) and torch.equal(as_card_says(crops), expected)
        assert torch.equal(loaded.forward_flip(crops), trained.model.forward_flip(crops))

    # a repo whose keypoint set is not the run's fails verification against the run
    planted = tmp_path / 'planted'
    shutil.copytree(repo, planted)
    (planted / 'config.json').write_text(json.dumps(
        {**config, 'keypoint_set': {**keypoint_set, 'keypoints': ['nose', *JOINTS[1:]]}}))
    assert main(['verify', str(planted), '--against', str(run)]) == 1
    assert "config.json does not describe the source's model: keypoint_set" in capsys.readouterr().out


def test_what_a_training_output_states_is_not_overridden(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    run = tmp_path / 'run'
    train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2, max_steps=1,
               output_dir=str(run), **FAST)  # stopped: a training state, no model yet
    cases = [([str(run)], f'{run} is a folder without model.safetensors')]
    _refused(cases, tmp_path / 'out', capsys)
    train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2,
               output_dir=str(run), resume='auto', **FAST)
    cases = [
        ([str(run), '--input-size', '256x192'], f"--input-size 256x192: '{run / 'config.json'}' says the model was "
                                                'trained at 64x48'),
        ([str(run), '--task', 'segmentation'], 'is an HRNet pose checkpoint, not a segmentation one'),
    ]
    _refused(cases, tmp_path / 'out', capsys)
    assert not (tmp_path / 'out').exists() and not leftovers(tmp_path)


def _refused(cases: list[tuple[list[str], str]], out: Path, capsys: pytest.CaptureFixture) -> None:
    for arguments, message in cases:
        assert main(['convert', *arguments, '--out', str(out)]) == 2, arguments
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], (arguments, error)


def test_a_segmentation_training_output_publishes_its_classes_and_palette(tmp_path: Path) -> None:
    """train_seg with its own classes (names, colours, a flip pair) -> convert its model.safetensors -> verify ->
    load_seg_model on the repo: the same label set and logits."""
    images, labels = make_seg_data(tmp_path / 'data', count=2, size=(40, 40))
    shapes = SegDatasetInfo('shapes', ('ground', 'left', 'right'), ((0, 0, 0), (255, 40, 40), (40, 140, 255)),
                            False, ((1, 2),))
    trained = train_seg(images, labels, dataset=shapes, crop_size=(32, 32), epochs=1, batch_size=2,
                        output_dir=str(tmp_path / 'run'), **FAST)
    repo = tmp_path / 'repo'
    result = convert_task_to_dir(trained.output_dir / 'model.safetensors', repo, verify_image_size=64,
                                 log=lambda message: None)
    assert result.report.ok and result.report.relative_diff == 0
    assert result.preprocessing_origin == f"align_corners False from '{trained.output_dir / 'config.json'}'"
    config = json.loads((repo / 'config.json').read_text())
    assert (config['dataset'], config['class_names'], config['align_corners']) == ('shapes', list(shapes.class_names),
                                                                                   False)
    assert config['palette'] == [list(c) for c in shapes.palette] and config['flip_pairs'] == [[1, 2]]
    card = (repo / 'README.md').read_text()
    for expected in ('| Class names | `ground`, `left`, `right` |', "load_seg_model(snapshot_download('YOUR_ORG/repo'",
                     'a timm_hrnet training run (`timm-hrnet train-seg`)'):
        assert expected in card, expected
    assert verify_task_dir(repo, against=trained.output_dir, image_size=64).ok

    loaded = load_seg_model(repo)
    assert loaded.dataset == shapes and loaded.palette == shapes.palette
    as_card_says = create_seg_model(repo / 'model.safetensors', align_corners=config['align_corners'])
    batch = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = trained.model(batch)
        assert torch.equal(loaded(batch), expected) and torch.equal(as_card_says(batch), expected)


def test_a_model_fine_tuned_from_mmseg_publishes_its_resizes(tmp_path: Path) -> None:
    """A train-seg run from an mmseg checkpoint keeps mmseg's two-step resizes; its repo (the official keys) records
    them in hrnet_spec, verification checks them at 256x200 (no multiple of 32), and load_seg_model on the repo, the
    card's snippet on the weights alone and the command line's download give the trained model's logits."""
    images, labels = make_seg_data(tmp_path / 'data', count=2, size=(40, 40))
    trained = train_seg(images, labels, crop_size=(32, 32), epochs=1, batch_size=2, lr=1e-4,
                        output_dir=str(tmp_path / 'run'),
                        **dict(FAST, init=openmmlab_fixture('mmseg_fcn_hr_reduced.pth')))
    repo = tmp_path / 'repo'
    result = convert_task_to_dir(trained.output_dir, repo, log=lambda message: None)
    assert result.report.ok and result.report.relative_diff == 0
    config = json.loads((repo / 'config.json').read_text())
    assert config['source_layout'] == 'official' and config['hrnet_spec']['upsample_by_stride'] is True
    card = (repo / 'README.md').read_text()
    assert "layout='mmseg'" in card and 'model.safetensors config.json --local-dir' in card
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        expected = trained.model(x)
        assert torch.equal(load_seg_model(repo)(x), expected)
        assert torch.equal(as_the_card_says(repo, bare_weights(repo, tmp_path))(x), expected)
        assert torch.equal(create_seg_model(repo / 'model.safetensors', align_corners=False)(x), expected)


def test_a_model_fine_tuned_from_mmpose_publishes_its_decoding(tmp_path: Path) -> None:
    """A train-pose run from an mmpose checkpoint keeps mmpose's decoding rule; its repo's config.json records it,
    the card passes it, and load_pose_model on the repo decodes by it."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=2)
    trained = train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2,
                         output_dir=str(tmp_path / 'run'),
                         **dict(FAST, init=openmmlab_fixture('mmpose_td-hm_hrnet_reduced.pth')))
    repo = tmp_path / 'repo'
    assert convert_task_to_dir(trained.output_dir, repo, log=lambda message: None).report.ok
    config = json.loads((repo / 'config.json').read_text())
    assert (config['source_layout'], config['codec']) == ('official', 'mmpose')
    assert "input_size=(64, 48), codec='mmpose')" in (repo / 'README.md').read_text()
    image = sorted(images.iterdir())[0]
    loaded, as_card_says = load_pose_model(repo), as_the_card_says(repo, bare_weights(repo, tmp_path))
    assert loaded.codec.spec == as_card_says.codec.spec == 'mmpose'
    assert torch.equal(loaded.predict(image)['keypoints'], trained.model.predict(image)['keypoints'])
    # the card's first snippet does not know the run's keypoint set, so its flip pairs: no flip test
    assert torch.equal(as_card_says.predict(image, flip_test=False)['keypoints'],
                       trained.model.predict(image, flip_test=False)['keypoints'])
