"""COCO-WholeBody: the 133-keypoint set (flip pairs, sigmas) is mmpose's, whole-body models run the flip test, and
`evaluate_pose`'s per-part AP is what mmpose 1.3.2's CocoWholeBodyMetric computes with xtcocotools' COCOeval
(tests/fixtures/openmmlab/make_wholebody_metric_ref.py)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import openmmlab_fixture
from PIL import Image
from torch import nn

from timm_hrnet.tasks import pose_evaluation
from timm_hrnet.tasks.datasets import COCO_WHOLEBODY_KEYPOINTS, WHOLEBODY_PARTS, keypoints_for
from timm_hrnet.tasks.pose import HRNetPose
from timm_hrnet.tasks.pose_codecs import parse_codec
from timm_hrnet.tasks.pose_evaluation import (
    STAT_NAMES,
    evaluate_pose,
    load_keypoint_annotations,
    wholebody_keypoint_stats,
)
from timm_hrnet.variants import resolve_variant

pytest.importorskip('pycocotools')


def _reference() -> dict:
    return json.loads(openmmlab_fixture('wholebody_metric.json').read_text())


def test_the_wholebody_keypoint_set_is_mmposes() -> None:
    expected = _reference()['keypoint_set']
    info = keypoints_for(133)
    assert info is COCO_WHOLEBODY_KEYPOINTS
    assert list(info.keypoint_names) == expected['names']
    assert sorted(info.flip_pairs) == [tuple(pair) for pair in expected['flip_pairs']]
    assert info.sigmas == pytest.approx(expected['sigmas'], abs=1e-7)  # mmpose holds them in float32
    assert list(info.upper_body) == expected['upper_body']


def test_a_wholebody_model_runs_the_flip_test() -> None:
    spec = dataclasses.replace(resolve_variant('hrnet_w18_small'), multi_scale_output=False)
    model = HRNetPose(spec, 133, input_size=(64, 48)).eval()
    assert model.keypoint_info is COCO_WHOLEBODY_KEYPOINTS
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 48)
        assert not torch.equal(model.forward_flip(x), model(x))


def _flat(result: dict) -> dict:
    """An mmpose whole-body result (body keypoints and each part's) as one 133-keypoint result."""
    points = [v for _, _, field in WHOLEBODY_PARTS.values() for v in result[field]]
    return dict(image_id=result['image_id'], category_id=result['category_id'], keypoints=points,
                score=result['score'])


def test_per_part_ap_equals_mmposes_wholebody_metric(tmp_path: Path) -> None:
    reference = _reference()
    ann_file = tmp_path / 'wholebody.json'
    ann_file.write_text(json.dumps(reference['annotations']))
    coco, category = load_keypoint_annotations(ann_file)
    assert tuple(category['keypoints']) == COCO_WHOLEBODY_KEYPOINTS.keypoint_names
    results = [_flat(r) for r in reference['results']]
    stats, summary = wholebody_keypoint_stats(coco, results, COCO_WHOLEBODY_KEYPOINTS.sigmas)
    assert sorted(stats) == sorted(reference['stats'])
    for part, expected in reference['stats'].items():
        assert [stats[part][name] for name in STAT_NAMES] == pytest.approx(expected, abs=1e-12), part
    assert summary.startswith('body:\n') and 'wholebody:\n' in summary
    # the part rules matter here: keeping the results without a positive left-hand score changes that part's AP
    start, end, _ = WHOLEBODY_PARTS['lefthand']
    kept_all = [dict(r, keypoints=[v if k % 3 != 2 else 1.0 for k, v in enumerate(r['keypoints'])]) for r in results]
    other, _ = wholebody_keypoint_stats(coco, kept_all, COCO_WHOLEBODY_KEYPOINTS.sigmas)
    assert other['lefthand']['AP'] != pytest.approx(stats['lefthand']['AP'], abs=1e-6)


class _Stub(nn.Module):
    """What evaluate_pose uses of a 133-joint model, with zero heatmaps (an oracle decode gives the keypoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.num_joints, self.in_chans, self.input_size = 133, 3, (64, 48)
        self.keypoint_info = COCO_WHOLEBODY_KEYPOINTS

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), 133, 16, 12)


@pytest.mark.parametrize('codec', [None, 'udp'])
def test_evaluate_pose_reports_every_part(codec: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On COCO-WholeBody annotations, the results of evaluate_pose are scored per part; annotated keypoints as the
    prediction score 1 on every part that has labelled people. The model's codec decides the flip shift (UDP: none)
    and is reported."""
    annotations = _reference()['annotations']
    ann_file = tmp_path / 'wholebody.json'
    ann_file.write_text(json.dumps(annotations))
    for image in annotations['images']:
        Image.new('RGB', (image['width'], image['height'])).save(tmp_path / image['file_name'])
    people = annotations['annotations']
    truth = np.array([[v for _, _, f in WHOLEBODY_PARTS.values() for v in a[f]] for a in people]).reshape(-1, 133, 3)
    centres = np.array([[a['bbox'][0] + a['bbox'][2] / 2, a['bbox'][1] + a['bbox'][3] / 2] for a in people])

    def oracle(heatmaps: torch.Tensor, centers: torch.Tensor, sizes: torch.Tensor, **kwargs: object):
        nearest = np.linalg.norm(centers.numpy()[:, None] - centres[None], axis=-1).argmin(1)
        return torch.tensor(truth[nearest, :, :2], dtype=torch.float32), torch.ones(len(nearest), 133)
    monkeypatch.setattr(pose_evaluation, 'decode_heatmaps', oracle)
    model = _Stub()
    if codec is not None:
        model.codec = parse_codec(codec)
    metrics = evaluate_pose(model, ann_file, tmp_path, gt_boxes=True, progress=False)
    assert (metrics['codec'], metrics['shift_heatmap']) == ((codec, False) if codec else ('official', True))
    assert metrics['keypoint_set'] == 'coco_wholebody' and sorted(metrics['parts']) == sorted(
        [*WHOLEBODY_PARTS, 'wholebody'])
    assert all(metrics['parts'][part]['AP'] == pytest.approx(1.0) for part in metrics['parts'])
    assert metrics['AP'] == metrics['parts']['wholebody']['AP']
