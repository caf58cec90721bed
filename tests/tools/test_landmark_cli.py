"""`evaluate_landmarks` and `timm-hrnet evaluate-pose --metric nme|pck` on small synthetic annotation files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from timm_hrnet.tasks.landmark_evaluation import evaluate_landmarks, landmark_metrics
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tools.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'landmarks'
FACE = FIXTURES / 'mmpose1_face_wflw_reduced.pth'


def _face_set(folder: Path, points: int = 98, count: int = 2) -> tuple[Path, Path, list]:
    """`count` noise images with one face box each and random landmarks inside it (eye corners apart)."""
    rng = np.random.default_rng(0)
    (folder / 'images').mkdir(parents=True)
    images, annotations = [], []
    for k in range(count):
        Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(folder / 'images' / f'{k}.png')
        box = [8.0 + k, 6.0, 60.0, 58.0]
        xy = rng.uniform(10, 60, size=(points, 2))
        visible = np.where(rng.uniform(size=points) < 0.1, 0, 2)
        visible[[60, 72]] = 2
        images.append(dict(id=k, file_name=f'{k}.png', width=80, height=72))
        annotations.append(dict(id=k, image_id=k, bbox=box, category_id=1,
                                keypoints=np.concatenate([xy, visible[:, None]], 1).reshape(-1).tolist()))
    ann_file = folder / 'faces.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations)))
    return ann_file, folder / 'images', annotations


def test_evaluate_landmarks_scores_the_models_predictions(tmp_path: Path) -> None:
    ann_file, images, annotations = _face_set(tmp_path)
    model = create_pose_model(FACE, input_size=(64, 64))
    metrics = evaluate_landmarks(model, ann_file, images)
    assert metrics['num_instances'] == 2 and metrics['keypoint_set'] == 'wflw'
    preds = np.stack([model.predict(images / f'{a["image_id"]}.png', boxes=[a['bbox']])['keypoints'][0].numpy()
                      for a in annotations])
    points = np.stack([np.reshape(a['keypoints'], (-1, 3)) for a in annotations])
    expected = landmark_metrics(preds, points[..., :2], model.keypoint_info, points[..., 2] > 0)
    assert metrics['NME'] == pytest.approx(expected['NME']) and metrics['NME'] > 0


def test_evaluate_pose_metric_nme_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann_file, images, annotations = _face_set(tmp_path)
    args = ['evaluate-pose', '--checkpoint', str(FACE), '--annotations', str(ann_file), '--images', str(images),
            '--gt-boxes', '--input-size', '64x64']
    assert main([*args, '--metric', 'nme', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['NME'] > 0
    assert main([*args, '--metric', 'pck']) != 0
    assert 'predicts wflw: --metric pck is for hands' in capsys.readouterr().err
    broken = json.loads(ann_file.read_text())
    broken['annotations'][1]['keypoints'][3 * 72 + 2] = 0  # outer eye corner not annotated
    ann_file.write_text(json.dumps(broken))
    assert main([*args, '--metric', 'nme']) != 0
    error = capsys.readouterr().err.strip()
    assert 'face 1 (1 in all) lacks landmark 60 or 72' in error and '\n' not in error


def test_face_fixture_predicts_inside_its_box() -> None:
    model = create_pose_model(FACE, input_size=(64, 64))
    result = model.predict(torch.rand(3, 72, 80), boxes=[[8, 6, 60, 58]], flip_test=False)
    assert result['keypoints'].shape == (1, 98, 2)
