"""Training with a codec: a training crop without augmentation is the inference crop of the same box (one warp,
the codec's grid), DARK / UDP targets decode back to the joints, and `train_pose(codec=...)` / `train-pose --codec`
train with the codec and record it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from timm_hrnet.tasks.datasets import KeypointInfo
from timm_hrnet.tasks.pose import box_to_center_size, crop_boxes
from timm_hrnet.tasks.pose_codecs import decode_heatmaps, parse_codec
from timm_hrnet.tasks.training import load_pose_model, train_pose
from timm_hrnet.tasks.training.pose_data import PoseAugmentation, PoseTrainDataset, read_pose_annotations
from timm_hrnet.tools.cli import main

pytestmark = pytest.mark.usefixtures('single_torch_thread')
INPUT = (64, 48)
KEYPOINTS = KeypointInfo('dots', ('top', 'left', 'right'), flip_pairs=((1, 2),), sigmas=(0.1, 0.1, 0.1))


def _data(folder: Path, count: int = 2) -> tuple[Path, Path]:
    """Images of three dots with their annotations (a person box around them)."""
    rng = np.random.default_rng(0)
    (folder / 'images').mkdir(parents=True)
    images, annotations = [], []
    for k in range(count):
        pixels = rng.integers(0, 60, (90, 70, 3)).astype(np.uint8)
        points = (rng.uniform((24, 26), (46, 52), (3, 2))).round(2)  # the targets' 3 sigma inside the heatmap
        for x, y in points:
            pixels[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 255
        Image.fromarray(pixels).save(folder / 'images' / f'{k}.png')
        images.append(dict(id=k, file_name=f'{k}.png', width=70, height=90))
        annotations.append(dict(id=k, image_id=k, category_id=1, bbox=[10.5, 8.25, 50.0, 61.0], area=3050.0,
                                iscrowd=0, num_keypoints=3, keypoints=[v for p in points for v in (*p, 2)]))
    category = dict(id=1, name='dots', keypoints=list(KEYPOINTS.keypoint_names))
    ann_file = folder / 'annotations.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=[category])))
    return ann_file, folder / 'images'


@pytest.mark.parametrize('codec', ['official', 'dark', 'udp'])
def test_a_training_crop_is_the_inference_crop_of_its_box(codec: str, tmp_path: Path) -> None:
    ann_file, images = _data(tmp_path)
    samples = read_pose_annotations(ann_file, images).samples
    size = (128, 96)  # heatmaps of 32x24, where the targets' 3 sigma fit
    dataset = PoseTrainDataset(samples, KEYPOINTS, size, (0.0,) * 3, (1.0,) * 3, PoseAugmentation.none(), codec=codec)
    item = dataset[0]
    pixels = torch.from_numpy(np.array(Image.open(samples[0].image))).permute(2, 0, 1).float() / 255
    centers, sizes = box_to_center_size(torch.tensor([samples[0].box]), size[1] / size[0])
    expected = crop_boxes(pixels, centers, sizes, size, codec)[0]
    assert torch.allclose(item['image'], expected, atol=1e-5)
    other = crop_boxes(pixels, centers, sizes, size, 'official' if codec == 'udp' else 'udp')[0]
    assert not torch.allclose(item['image'], other, atol=1e-3)  # UDP's crop is another crop
    # the targets decode back to the joints: exactly (to float precision) for the unbiased codecs
    keypoints, _ = decode_heatmaps(item['target'][None], centers, sizes, codec=codec)
    error = (keypoints[0].double() - torch.from_numpy(samples[0].joints)).abs().max().item()
    assert error < (0.01 if codec != 'official' else 1.5)
    if codec == 'official':
        assert error > 0.05  # the official targets round the joint to the heatmap grid


@pytest.mark.parametrize('codec', ['dark', 'udp'])
def test_training_with_a_codec_records_it(codec: str, tmp_path: Path) -> None:
    ann_file, images = _data(tmp_path / 'data')
    trained = train_pose(ann_file, images, init='hrnet_w18_small', pretrained=False, keypoints=KEYPOINTS,
                         input_size=INPUT, epochs=1, batch_size=2, output_dir=str(tmp_path / 'run'), workers=0,
                         progress=False, tensorboard=False, codec=codec)
    assert trained.model.codec == parse_codec(codec)
    assert json.loads(Path(trained.files['config']).read_text())['codec'] == codec
    assert load_pose_model(trained.output_dir).codec == parse_codec(codec)


def test_train_pose_command_takes_a_codec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann_file, images = _data(tmp_path / 'data')
    keypoints = tmp_path / 'dots.json'
    keypoints.write_text(json.dumps(KEYPOINTS.to_json()))
    args = ['train-pose', '--annotations', str(ann_file), '--images', str(images), '--keypoints', str(keypoints),
            '--input-size', '64x48', '--init', 'hrnet_w18_small', '--scratch', '--epochs', '1', '--batch-size', '2',
            '--workers', '0', '--output', str(tmp_path / 'run'), '--codec', 'udp', '--no-progress']
    assert main(args) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['codec'] == 'udp'
