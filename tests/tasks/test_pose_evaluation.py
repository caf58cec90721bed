"""COCO keypoint evaluation (`timm_hrnet.tasks.pose_evaluation`, `timm-hrnet evaluate-pose`) on small synthetic
COCO-format sets written here: box selection, rescoring and OKS-NMS (against hand-computed cases, pycocotools'
own OKS and mmpose's reference outputs), COCOeval plumbing, the tiny HRNet end to end and under torchrun."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import openmmlab_fixture, torchrun
from PIL import Image
from task_reference import official_shapes, random_checkpoint, tiny_extra
from torch import nn

pytest.importorskip('pycocotools', reason='could not import pycocotools (pip install "timm-hrnet[eval]")')
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval, Params  # noqa: E402

from timm_hrnet.tasks import pose_evaluation  # noqa: E402
from timm_hrnet.tasks.datasets import COCO_KEYPOINTS, KeypointInfo, read_keypoint_file  # noqa: E402
from timm_hrnet.tasks.pose import HRNetPose, create_pose_model  # noqa: E402
from timm_hrnet.tasks.pose_evaluation import (  # noqa: E402
    COCO_KEYPOINT_SIGMAS,
    STAT_NAMES,
    PoseDataError,
    coco_keypoint_stats,
    detection_boxes,
    evaluate_pose,
    evaluation_keypoints,
    ground_truth_boxes,
    keypoint_oks,
    load_keypoint_annotations,
    oks_nms,
    rescore,
)
from timm_hrnet.tasks.training import read_keypoint_file as train_read_keypoint_file  # noqa: E402
from timm_hrnet.tools.cli import main  # noqa: E402
from timm_hrnet.tools.evaluate import GT_BOXES_WARNING  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_torch_thread')

ROOT = Path(__file__).resolve().parents[2]
SIZES = {1: (80, 96), 2: (72, 64), 3: (64, 80)}  # image id: (width, height)
# person boxes [x, y, w, h] and OKS areas (medium: 32^2..96^2, large: above; the image size does not matter)
PEOPLE = {1: [([4, 6, 30, 60], 5000.0), ([44, 20, 30, 70], 20000.0)], 2: [([10, 8, 40, 50], 3000.0)],
          3: [([6, 10, 50, 60], 12000.0)]}


def reference_fixture(name: str) -> dict:
    return json.loads(openmmlab_fixture(name).read_text())


def _person(rng: np.random.Generator, box: list[int], invisible: int) -> list[float]:
    x, y, w, h = box
    points = []
    for k in range(17):
        if k < invisible:
            points += [0.0, 0.0, 0]
        else:
            points += [float(x + rng.uniform(2, w - 2)), float(y + rng.uniform(2, h - 2)), int(rng.integers(1, 3))]
    return points


@pytest.fixture(scope='module')
def coco_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three images, four people (medium and large), a crowd region and a person without keypoints, and a
    detection file with jittered boxes, a duplicate, a low-scoring box and a non-person box."""
    root = tmp_path_factory.mktemp('coco')
    rng = np.random.default_rng(0)
    (root / 'images').mkdir()
    images, annotations = [], []
    for image_id, (width, height) in SIZES.items():
        name = f'{image_id:012d}.jpg'
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / 'images' / name, quality=95)
        images.append(dict(id=image_id, file_name=name, width=width, height=height))
        for box, area in PEOPLE[image_id]:
            keypoints = _person(rng, box, invisible=len(annotations) % 3)
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1, bbox=box, area=area,
                                    iscrowd=0, keypoints=keypoints, num_keypoints=sum(v > 0 for v in keypoints[2::3])))
    annotations.append(dict(id=90, image_id=3, category_id=1, bbox=[40, 50, 20, 20], area=400.0, iscrowd=1,
                            keypoints=[0] * 51, num_keypoints=0))
    annotations.append(dict(id=91, image_id=2, category_id=1, bbox=[50, 40, 10, 10], area=100.0, iscrowd=0,
                            keypoints=[0] * 51, num_keypoints=0))
    categories = [dict(id=1, name='person', supercategory='person', keypoints=list(COCO_KEYPOINTS.keypoint_names),
                       skeleton=[])]
    ann_file = root / 'person_keypoints.json'
    ann_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    detections = []
    for image_id, people in PEOPLE.items():
        for k, (box, _) in enumerate(people):
            detections.append(dict(image_id=image_id, category_id=1, bbox=[box[0] + 1, box[1] - 1, box[2], box[3]],
                                   score=0.9 - 0.1 * k))
    detections.append(dict(image_id=1, category_id=1, bbox=[5, 5, 29, 61], score=0.85))  # duplicate of person 1
    detections.append(dict(image_id=2, category_id=1, bbox=[12, 9, 38, 48], score=0.25))  # below --box-thr 0.3
    detections.append(dict(image_id=3, category_id=3, bbox=[0, 0, 20, 20], score=0.99))  # a car
    det_file = root / 'detections.json'
    det_file.write_text(json.dumps(detections))
    single = [d for d in detections[:4] if d['image_id'] != 1] + [detections[0]]  # one box per image
    single_file = root / 'detections_single.json'
    single_file.write_text(json.dumps(single))
    return dict(root=root, ann=ann_file, images=root / 'images', det=det_file, det_single=single_file)


class StubPose(nn.Module):
    """The interface evaluate_pose uses, with zero heatmaps; an oracle `decode_heatmaps` gives the keypoints."""

    def __init__(self, num_joints: int = 17, keypoint_info: KeypointInfo | None = COCO_KEYPOINTS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.num_joints, self.in_chans, self.input_size = num_joints, 3, (64, 48)
        self.keypoint_info = keypoint_info
        self.batches: list[int] = []

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return x.new_zeros(len(x), self.num_joints, 16, 12)


def oracle(ann_file: Path, offsets: np.ndarray | None = None, scores: np.ndarray | None = None):
    """A decode_heatmaps returning the keypoints of the annotated person nearest to each crop centre (plus
    `offsets`), scores 1 (or `scores`), both per person."""
    data = json.loads(ann_file.read_text())
    people = [a for a in data['annotations'] if a['num_keypoints'] > 0]
    centres = np.array([[a['bbox'][0] + a['bbox'][2] / 2, a['bbox'][1] + a['bbox'][3] / 2] for a in people])

    def decode(heatmaps: torch.Tensor, centers: torch.Tensor, sizes: torch.Tensor, **kwargs):
        nearest = np.linalg.norm(centers.cpu().numpy()[:, None] - centres[None], axis=-1).argmin(1)
        points = np.stack([np.array(people[k]['keypoints'], dtype=np.float64).reshape(17, 3)[:, :2] for k in nearest])
        if offsets is not None:
            points = points + offsets[nearest]
        score = np.ones((len(nearest), 17)) if scores is None else scores[nearest]
        return torch.tensor(points, dtype=torch.float32), torch.tensor(score, dtype=torch.float32)
    return decode


@pytest.fixture(scope='module')
def tiny_model() -> HRNetPose:
    return create_pose_model(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17)),
                             input_size=(64, 48))


# --- the pieces ---------------------------------------------------------------------------------------------------

def test_sigmas_are_the_ones_of_pycocotools() -> None:
    assert np.array_equal(np.array(COCO_KEYPOINT_SIGMAS), Params(iouType='keypoints').kpt_oks_sigmas)


def test_rescoring_hand_computed() -> None:
    keypoint_scores = np.array([[0.1, 0.5, 0.9, 0.2], [0.1, 0.2, 0.15, 0.0], [0.3, 0.3, 0.3, 0.3]])
    scores = rescore(np.array([0.8, 0.9, 0.5]), keypoint_scores, threshold=0.2)
    np.testing.assert_allclose(scores, [0.8 * 0.7, 0.0, 0.5 * 0.3], rtol=1e-15)  # 0.2 itself is not above 0.2


def test_oks_equals_pycocotools(coco_set: dict[str, Path]) -> None:
    """Our OKS with both areas the annotation's is COCOeval's computeOks (all keypoints labelled)."""
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 50, (17, 2))
    dts = gt[None] + rng.normal(0, 3, (4, 17, 2))
    area = 900.0
    coco = COCO()
    coco.dataset = dict(
        images=[dict(id=1, width=60, height=60)], categories=[dict(id=1, name='person', keypoints=['k'] * 17)],
        annotations=[dict(id=1, image_id=1, category_id=1, area=area, bbox=[0, 0, 50, 50], iscrowd=0,
                          num_keypoints=17, keypoints=np.concatenate([gt, np.full((17, 1), 2)], 1).ravel().tolist())])
    coco.createIndex()
    results = [dict(image_id=1, category_id=1, score=0.5 + 0.1 * k,
                    keypoints=np.concatenate([d, np.ones((17, 1))], 1).ravel().tolist()) for k, d in enumerate(dts)]
    evaluator = COCOeval(coco, coco.loadRes(results), 'keypoints')
    evaluator._prepare()
    expected = evaluator.computeOks(1, 1)[:, 0]  # COCOeval orders detections by score, highest first
    ours = keypoint_oks(gt, dts, area, np.full(4, area), COCO_KEYPOINT_SIGMAS)[::-1]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_oks_nms_hand_case() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 100, (17, 3))
    c = a + np.array([200.0, 0, 0])
    poses = np.stack([a, a + [0.5, 0.5, 0], c, c + [0.5, -0.5, 0]])
    areas = np.full(4, 4000.0)
    assert oks_nms(poses, np.array([0.9, 0.8, 0.7, 0.95]), areas, 0.9) == [3, 0]
    assert oks_nms(poses, np.array([0.9, 0.8, 0.7, 0.95]), areas, 1.0) == [3, 0, 1, 2]  # nothing exceeds OKS 1
    assert oks_nms(poses[:2], np.array([0.5, 0.5]), areas[:2], 0.9) == [1]  # ties: numpy argsort, reversed
    assert oks_nms(poses[:0], np.zeros(0), areas[:0], 0.9) == []


def test_oks_nms_and_rescoring_match_mmpose() -> None:
    reference = reference_fixture('oks_nms.json')
    for case in reference['cases']:
        keep = oks_nms(np.array(case['keypoints']), np.array(case['scores']), np.array(case['areas']),
                       case['threshold'], case.get('sigmas', COCO_KEYPOINT_SIGMAS))
        assert keep == list(case['keep']), case.get('name')
    for case in reference.get('rescoring', []):
        ours = rescore(np.array(case['bbox_scores']), np.array(case['keypoint_scores']), case['keypoint_score_thr'])
        np.testing.assert_allclose(ours, case['scores'], rtol=1e-6)


def test_box_selection(coco_set: dict[str, Path]) -> None:
    coco, category = load_keypoint_annotations(coco_set['ann'])
    boxes = detection_boxes(coco_set['det'], coco, category['id'], 0.25)
    assert sum(len(b) for b in boxes.values()) == 6  # the car dropped; 0.25 kept (score >= thr, as both references)
    assert sum(len(b) for b in detection_boxes(coco_set['det'], coco, 1, 0.3).values()) == 5
    gt = ground_truth_boxes(coco, 1)
    # crowd and keypoint-less people dropped; boxes clipped as x2 = min(W - 1, x1 + w - 1)
    assert gt == {1: [[4.0, 6.0, 29.0, 59.0, 1.0], [44.0, 20.0, 29.0, 69.0, 1.0]], 2: [[10.0, 8.0, 39.0, 49.0, 1.0]],
                  3: [[6.0, 10.0, 49.0, 59.0, 1.0]]}
    coco.imgToAnns[1][0]['bbox'] = [-5, 10, 30, 200]
    assert ground_truth_boxes(coco, 1)[1][0] == [0.0, 10.0, 29.0, 85.0, 1.0]


# --- COCOeval plumbing --------------------------------------------------------------------------------------------

def test_ground_truth_as_results_gives_ap_one(coco_set: dict[str, Path]) -> None:
    coco, _ = load_keypoint_annotations(coco_set['ann'])
    results = [dict(image_id=a['image_id'], category_id=1, score=1.0,
                    keypoints=[v if k % 3 != 2 else 1.0 for k, v in enumerate(a['keypoints'])])
               for a in coco.dataset['annotations'] if a['num_keypoints'] > 0]
    stats, summary = coco_keypoint_stats(coco, results)
    assert stats == dict.fromkeys(STAT_NAMES, 1.0)
    assert summary.count('Average') == 10


def test_perfect_predictions_give_ap_one(coco_set: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """The whole pipeline with perfect keypoints: the duplicate box is removed by OKS-NMS, or AP would drop."""
    monkeypatch.setattr(pose_evaluation, 'decode_heatmaps', oracle(coco_set['ann']))
    model = StubPose()
    metrics = evaluate_pose(model, coco_set['ann'], coco_set['images'], coco_set['det'], box_score_thr=0.3,
                            batch_size=3, progress=False, results_file=tmp_path / 'r.json')
    assert {name: metrics[name] for name in STAT_NAMES} == dict.fromkeys(STAT_NAMES, 1.0)
    assert (metrics['num_images'], metrics['num_boxes'], metrics['num_results']) == (3, 5, 4)
    assert model.batches == [3, 3, 2, 2]  # crops of several images in one forward pass (and their mirror images)
    gt = evaluate_pose(model, coco_set['ann'], coco_set['images'], gt_boxes=True, progress=False)
    assert gt['AP'] == 1.0 and gt['gt_boxes'] and gt['num_boxes'] == 4 and gt['box_score_thr'] is None
    # without NMS the duplicate is a false positive
    monkeypatch.setattr(pose_evaluation, 'oks_nms', lambda points, *args: list(range(len(points))))
    assert evaluate_pose(model, coco_set['ann'], coco_set['images'], coco_set['det'], box_score_thr=0.3,
                         progress=False)['AP'] < 1.0


def test_perturbed_predictions_equal_independent_cocoeval(coco_set: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    offsets, scores = rng.normal(0, 2.5, (4, 17, 2)), rng.uniform(0, 1, (4, 17))
    monkeypatch.setattr(pose_evaluation, 'decode_heatmaps', oracle(coco_set['ann'], offsets, scores))
    out = tmp_path / 'sub' / 'results.json'
    metrics = evaluate_pose(StubPose(), coco_set['ann'], coco_set['images'], coco_set['det'], box_score_thr=0.3,
                            results_file=out, progress=False)
    results = json.loads(out.read_text())
    assert len(results) == metrics['num_results'] == 4
    assert all(set(r) == {'image_id', 'category_id', 'keypoints', 'score'} and len(r['keypoints']) == 51
               for r in results)
    first = next(r for r in results if r['image_id'] == 2)
    assert first['score'] == pytest.approx(0.9 * scores[2][scores[2] > 0.2].mean(), rel=1e-6)  # rescored
    assert not list(out.parent.glob('.*tmp'))  # written atomically, nothing left behind
    coco = COCO(str(coco_set['ann']))
    evaluator = COCOeval(coco, coco.loadRes(str(out)), 'keypoints')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert [metrics[name] for name in STAT_NAMES] == evaluator.stats.tolist()
    assert 0.0 < metrics['AP'] < 1.0


def test_custom_keypoint_set_uses_its_sigmas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five keypoints with their own sigmas (COCOeval's defaults would not even fit)."""
    rng = np.random.default_rng(4)
    sigmas = [0.05, 0.1, 0.03, 0.08, 0.06]
    info = KeypointInfo('five', tuple(f'k{k}' for k in range(5)), ((1, 2),), ())
    Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(tmp_path / 'a.png')
    points = np.concatenate([rng.uniform(10, 50, (5, 2)), np.full((5, 1), 2)], 1)
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps(dict(
        images=[dict(id=7, file_name='a.png', width=60, height=60)],
        categories=[dict(id=4, name='animal', keypoints=list(info.keypoint_names))],
        annotations=[dict(id=1, image_id=7, category_id=4, bbox=[5, 5, 50, 50], area=2000.0, iscrowd=0,
                          keypoints=points.ravel().tolist())])))  # no num_keypoints: derived

    def decode(heatmaps, centers, sizes, **kwargs):
        return torch.tensor(points[None, :, :2] + [[[3.0, -2.0]]], dtype=torch.float32), torch.ones(1, 5)
    monkeypatch.setattr(pose_evaluation, 'decode_heatmaps', decode)
    model = StubPose(5, info)
    with pytest.raises(ValueError, match='no OKS sigmas known for the 5 keypoints'):
        evaluate_pose(model, ann, tmp_path, gt_boxes=True, progress=False)
    out = tmp_path / 'r.json'
    metrics = evaluate_pose(model, ann, tmp_path, gt_boxes=True, keypoint_sigmas=sigmas, results_file=out,
                            progress=False)
    data = json.loads(ann.read_text())
    data['annotations'][0]['num_keypoints'] = 5  # pycocotools needs it; evaluate_pose derived it
    coco = COCO(str(_write(tmp_path / 'full.json', data)))
    evaluator = COCOeval(coco, coco.loadRes(str(out)), 'keypoints')
    evaluator.params.kpt_oks_sigmas = np.array(sigmas)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert [metrics[name] for name in STAT_NAMES] == evaluator.stats.tolist()
    assert 0.0 < metrics['AP'] < 1.0


# --- custom keypoint sets ----------------------------------------------------------------------------------------

CRITTER = dict(name='critter', keypoints=['head', 'left_paw', 'right_paw', 'left_foot', 'right_foot'],
               flip_pairs=[['left_paw', 'right_paw'], [3, 4]], skeleton=[[0, 1], [0, 2], [1, 3], [2, 4]],
               sigmas=[0.05, 0.07, 0.07, 0.09, 0.09])
# two medium and two large animals: with one instance in an area range COCOeval's precision is 1 / (1 + eps)
CRITTER_PEOPLE = {1: [([4, 6, 30, 60], 1500.0), ([40, 10, 36, 50], 12000.0)],
                  2: [([8, 8, 44, 52], 3000.0), ([50, 12, 26, 50], 10000.0)]}


@pytest.fixture(scope='module')
def critter_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A COCO-format set of a 5-keypoint animal (names not COCO's), its keypoint-set file and a detection file."""
    root = tmp_path_factory.mktemp('critter')
    rng = np.random.default_rng(10)
    (root / 'images').mkdir()
    images, annotations, detections = [], [], []
    for image_id, people in CRITTER_PEOPLE.items():
        name = f'{image_id}.png'
        Image.fromarray(rng.integers(0, 255, (70, 80, 3), dtype=np.uint8)).save(root / 'images' / name)
        images.append(dict(id=image_id, file_name=name, width=80, height=70))
        for k, (box, area) in enumerate(people):
            x, y, w, h = box
            points = np.stack([x + rng.uniform(2, w - 2, 5), y + rng.uniform(2, h - 2, 5), np.full(5, 2.0)], 1)
            points[k % 5] = 0.0  # one unlabelled keypoint per animal
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=7, bbox=box, area=area,
                                    iscrowd=0, keypoints=points.ravel().tolist(), num_keypoints=4))
            detections.append(dict(image_id=image_id, category_id=7, bbox=[x + 1, y, w, h], score=0.9 - 0.2 * k))
    category = dict(id=7, name='critter', supercategory='animal', keypoints=CRITTER['keypoints'],
                    skeleton=[[1, 2], [1, 3]])
    ann = _write(root / 'critter_keypoints.json', dict(images=images, annotations=annotations, categories=[category]))
    return dict(root=root, ann=ann, images=root / 'images', det=_write(root / 'det.json', detections),
                keypoint_set=_write(root / 'critter.json', CRITTER))


def oracle_k(ann_file: Path, offsets: np.ndarray | None = None, scores: np.ndarray | None = None):
    """`oracle` for any keypoint count: the keypoints of the annotation nearest to each crop centre."""
    data = json.loads(ann_file.read_text())
    people = data['annotations']
    joints = len(data['categories'][0]['keypoints'])
    centres = np.array([[a['bbox'][0] + a['bbox'][2] / 2, a['bbox'][1] + a['bbox'][3] / 2] for a in people])

    def decode(heatmaps: torch.Tensor, centers: torch.Tensor, sizes: torch.Tensor, **kwargs):
        nearest = np.linalg.norm(centers.cpu().numpy()[:, None] - centres[None], axis=-1).argmin(1)
        points = np.stack([np.array(people[k]['keypoints'], dtype=np.float64).reshape(joints, 3)[:, :2]
                           for k in nearest])
        if offsets is not None:
            points = points + offsets[nearest]
        score = np.ones((len(nearest), joints)) if scores is None else scores[nearest]
        return torch.tensor(points, dtype=torch.float32), torch.tensor(score, dtype=torch.float32)
    return decode


def independent_cocoeval(ann_file: Path, results_file: Path, sigmas: list[float]) -> list[float]:
    coco = COCO(str(ann_file))
    evaluator = COCOeval(coco, coco.loadRes(str(results_file)), 'keypoints')
    evaluator.params.kpt_oks_sigmas = np.array(sigmas)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats.tolist()


def test_keypoint_file_carries_sigmas_and_flip_pairs(critter_set: dict[str, Path], tmp_path: Path) -> None:
    info = read_keypoint_file(critter_set['keypoint_set'])
    assert info.sigmas == tuple(CRITTER['sigmas']) and info.flip_pairs == ((1, 2), (3, 4))
    assert read_keypoint_file(_write(tmp_path / 'no_sigmas.json', dict(keypoints=CRITTER['keypoints']))
                              ).flip_pairs == ((1, 2), (3, 4))  # from the left/right names
    bad = _write(tmp_path / 'bad.json', dict(CRITTER, sigmas=[0.05, 0.07, 0.07, 0.09]))
    with pytest.raises(ValueError, match=r"bad.json: keypoint set 'critter': 4 OKS sigmas for 5 keypoints"):
        read_keypoint_file(bad)
    with pytest.raises(ValueError, match='4 OKS sigmas for 5 keypoints'):
        KeypointInfo('x', tuple(CRITTER['keypoints']), sigmas=(0.1,) * 4)
    with pytest.raises(ValueError, match='OKS sigmas must be positive'):
        KeypointInfo('x', ('a', 'b'), sigmas=(0.1, 0.0))
    # training reads keypoint files with the same function
    assert COCO_KEYPOINTS.sigmas == COCO_KEYPOINT_SIGMAS and train_read_keypoint_file is read_keypoint_file


def test_evaluation_keypoints_resolution(critter_set: dict[str, Path]) -> None:
    """Given set > the model's own (a built-in one only for the keypoints it names) > the annotation category's."""
    _, category = load_keypoint_annotations(critter_set['ann'])
    given = read_keypoint_file(critter_set['keypoint_set'])
    assert evaluation_keypoints(None, 5, category, critter_set['keypoint_set']) == (given, given.sigmas)
    assert evaluation_keypoints(given, 5, category)[0] is given
    renamed = dataclasses.replace(given, keypoint_names=('a', 'b', 'c', 'd', 'e'))
    assert evaluation_keypoints(renamed, 5, category)[0] is renamed  # a trained model's own set, other names
    # a model whose own set names other keypoints (here COCO's 17, chosen by count) is evaluated with the category's
    other = dict(category, keypoints=[f'left_{k}' if k % 2 == 0 else f'right_{k - 1}' for k in range(17)])
    info, sigmas = evaluation_keypoints(COCO_KEYPOINTS, 17, other, keypoint_sigmas=[0.1] * 17)
    assert info.name == 'critter' and info.flip_pairs[0] == (0, 1) and sigmas == (0.1,) * 17
    with pytest.raises(ValueError, match="no OKS sigmas known for the 5 keypoints of 'critter'"):
        evaluation_keypoints(None, 5, category)
    with pytest.raises(ValueError, match='4 keypoint sigmas for a model with 5 keypoints'):
        evaluation_keypoints(given, 5, category, keypoint_sigmas=[0.1] * 4)
    with pytest.raises(ValueError, match="the keypoint set 'coco' has 17 keypoints, the model predicts 5"):
        evaluation_keypoints(None, 5, category, COCO_KEYPOINTS)
    with pytest.raises(PoseDataError, match='annotates 5 keypoints, the model predicts 17'):
        evaluation_keypoints(COCO_KEYPOINTS, 17, category)


def test_custom_set_perfect_predictions_give_ap_one(critter_set: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    monkeypatch.setattr(pose_evaluation, 'decode_heatmaps', oracle_k(critter_set['ann']))
    for model, options in ((StubPose(5, None), dict(keypoint_set=critter_set['keypoint_set'])),
                           (StubPose(5, read_keypoint_file(critter_set['keypoint_set'])), {})):
        metrics = evaluate_pose(model, critter_set['ann'], critter_set['images'], critter_set['det'],
                                progress=False, **options)
        assert {name: metrics[name] for name in STAT_NAMES} == dict.fromkeys(STAT_NAMES, 1.0)
        assert metrics['keypoint_set'] == 'critter' and metrics['sigmas'] == CRITTER['sigmas']


def test_custom_set_perturbed_predictions_equal_cocoeval(critter_set: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    offsets, scores = rng.normal(0, 2.0, (4, 5, 2)), rng.uniform(0, 1, (4, 5))
    monkeypatch.setattr(pose_evaluation, 'decode_heatmaps', oracle_k(critter_set['ann'], offsets, scores))
    out = tmp_path / 'results.json'
    metrics = evaluate_pose(StubPose(5, None), critter_set['ann'], critter_set['images'], critter_set['det'],
                            keypoint_set=critter_set['keypoint_set'], results_file=out, progress=False)
    stats = [metrics[name] for name in STAT_NAMES]
    assert stats == independent_cocoeval(critter_set['ann'], out, CRITTER['sigmas'])
    assert 0.0 < metrics['AP'] < 1.0
    assert stats != independent_cocoeval(critter_set['ann'], out, [0.2] * 5)  # the set's sigmas are the ones used
    # the annotation category's set with the sigmas given separately: the same numbers
    again = evaluate_pose(StubPose(5, None), critter_set['ann'], critter_set['images'], critter_set['det'],
                          keypoint_sigmas=CRITTER['sigmas'], progress=False)
    assert [again[name] for name in STAT_NAMES] == stats


@pytest.fixture(scope='module')
def critter_checkpoint(tmp_path_factory: pytest.TempPathFactory, critter_set: dict[str, Path]) -> Path:
    """What train_pose exports for a custom set: model.safetensors and config.json with the keypoint set."""
    folder = tmp_path_factory.mktemp('critter_run')
    info = read_keypoint_file(critter_set['keypoint_set'])
    model = create_pose_model(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 5), seed=3),
                              input_size=(64, 48), keypoint_info=info)
    safetensors.torch.save_file(model.state_dict(), str(folder / 'model.safetensors'))
    _write(folder / 'config.json', dict(model.task_config(), keypoint_set=info.to_json(), input_size_hw=[64, 48],
                                        weights='model.safetensors'))
    return folder / 'model.safetensors'


def test_trained_custom_checkpoint_evaluates_with_its_own_set(critter_set: dict[str, Path], critter_checkpoint: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No flags: the config.json beside the weights gives the keypoint set (sigmas, flip pairs) and input size."""
    model = create_pose_model(critter_checkpoint)
    assert model.keypoint_info == read_keypoint_file(critter_set['keypoint_set']) and model.input_size == (64, 48)
    args = ['evaluate-pose', '--checkpoint', str(critter_checkpoint), '--annotations', str(critter_set['ann']),
            '--images', str(critter_set['images']), '--detections', str(critter_set['det']), '--no-progress', '--json']
    assert main([*args, '--results', str(tmp_path / 'own.json')]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics['keypoint_set'] == 'critter' and metrics['sigmas'] == CRITTER['sigmas']
    assert metrics['input_size'] == [64, 48] and metrics['flip_test']
    own = json.loads((tmp_path / 'own.json').read_text())
    assert [metrics[name] for name in STAT_NAMES] == independent_cocoeval(critter_set['ann'], tmp_path / 'own.json',
                                                                           CRITTER['sigmas'])
    # the flip test used the set's pairs: without them the keypoints differ
    no_pairs = _write(tmp_path / 'no_pairs.json', dict(CRITTER, flip_pairs=[]))
    assert main([*args, '--keypoint-set', str(no_pairs), '--results', str(tmp_path / 'other.json')]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / 'other.json').read_text()) != own
    # a sigma count that does not fit is one line on the command line
    assert main([*args, '--sigmas', '0.1,0.1,0.1']) == 2
    assert capsys.readouterr().err.strip() == ('timm-hrnet evaluate-pose: error: 3 keypoint sigmas for a model with '
                                               '5 keypoints')


def test_cli_evaluates_a_plain_custom_checkpoint_with_a_keypoint_file(critter_set: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / 'critter_64x48.pth'
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 5), seed=3), path)
    args = ['evaluate-pose', '--checkpoint', str(path), '--annotations', str(critter_set['ann']), '--images',
            str(critter_set['images']), '--gt-boxes', '--no-progress']
    assert main(args) == 2  # no sigmas anywhere: said in one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("timm-hrnet evaluate-pose: error: no OKS sigmas known for the 5 keypoints of 'critter'")
    assert '\n' not in err
    assert main([*args, '--keypoint-set', str(critter_set['keypoint_set'])]) == 0
    assert 'keypoint set critter' in capsys.readouterr().out
    assert main([*args, '--sigmas', '0.05,0.07,0.07', '0.09,0.09']) == 0


# --- the real model -----------------------------------------------------------------------------------------------

def test_batched_evaluation_equals_predict(coco_set: dict[str, Path], tiny_model: HRNetPose) -> None:
    """Crops batched across images give the keypoints `predict` gives per image (flip test with the shift)."""
    metrics = evaluate_pose(tiny_model, coco_set['ann'], coco_set['images'], coco_set['det'], box_score_thr=0.3,
                            oks_nms_thr=1.0, batch_size=3, results_file=coco_set['root'] / 'tiny.json',
                            progress=False)
    results = json.loads((coco_set['root'] / 'tiny.json').read_text())
    assert metrics['num_results'] == metrics['num_boxes'] == 5
    detections = [d for d in json.loads(coco_set['det'].read_text()) if d['category_id'] == 1 and d['score'] >= 0.3]
    for image_id in SIZES:
        boxes = [d['bbox'] + [d['score']] for d in detections if d['image_id'] == image_id]
        expected = tiny_model.predict(coco_set['images'] / f'{image_id:012d}.jpg', boxes)
        ours = sorted((r for r in results if r['image_id'] == image_id), key=lambda r: r['keypoints'][0])
        points = torch.cat([expected['keypoints'], expected['scores'][..., None]], -1).reshape(len(boxes), -1)
        points = points[points[:, 0].argsort()]
        np.testing.assert_allclose([r['keypoints'] for r in ours], points.numpy(), rtol=1e-4, atol=1e-3)


def test_flip_test_options(coco_set: dict[str, Path], tiny_model: HRNetPose, tmp_path: Path) -> None:
    keypoints = {}
    for flip, shift in ((True, True), (True, False), (False, True)):
        out = tmp_path / f'{flip}{shift}.json'
        metrics = evaluate_pose(tiny_model, coco_set['ann'], coco_set['images'], gt_boxes=True, flip_test=flip,
                                shift_heatmap=shift, results_file=out, progress=False)
        assert (metrics['flip_test'], metrics['shift_heatmap']) == (flip, shift)
        keypoints[flip, shift] = [r['keypoints'] for r in json.loads(out.read_text())]
    assert keypoints[True, True] != keypoints[True, False] != keypoints[False, True] != keypoints[True, True]
    # a model without a keypoint set is evaluated with the annotation category's: COCO's names, so COCO's set
    metrics = evaluate_pose(StubPose(keypoint_info=None), coco_set['ann'], coco_set['images'], gt_boxes=True,
                            progress=False)
    assert metrics['keypoint_set'] == 'coco' and metrics['sigmas'] == list(COCO_KEYPOINT_SIGMAS)


# --- bad input ----------------------------------------------------------------------------------------------------

def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_bad_input_is_named(coco_set: dict[str, Path], tmp_path: Path) -> None:
    model = StubPose()
    ann, images = coco_set['ann'], coco_set['images']
    data = json.loads(ann.read_text())

    def fails(match: str, ann_file: Path = ann, image_dir: Path = images, det: Path | None = None, **kwargs) -> None:
        with pytest.raises(ValueError, match=match):
            evaluate_pose(model, ann_file, image_dir, det, gt_boxes=det is None, progress=False, **kwargs)

    other = _write(tmp_path / 'other.json', [dict(image_id=99, category_id=1, bbox=[0, 0, 5, 5], score=0.9)])
    fails(f'{other} has detections for 1 image ids that are not in the annotation file', det=other)
    fails('is not a COCO detection results file', det=_write(tmp_path / 'dict.json', {'a': 1}))
    fails('entry 0 is not', det=_write(tmp_path / 'bad.json', [dict(image_id=1, bbox=[0, 0, 1, 1])]))
    fails('bbox of 3 values', det=_write(tmp_path / 'b3.json', [dict(image_id=1, category_id=1, bbox=[0, 0, 1],
                                                                      score=1)]))
    fails('no person boxes to evaluate', det=coco_set['det'], box_score_thr=0.95)
    fails('detection file not found', det=tmp_path / 'missing.json')
    detection_only = copy.deepcopy(data)
    detection_only['categories'] = [dict(id=1, name='person')]
    fails('has no single keypoint category', ann_file=_write(tmp_path / 'instances.json', detection_only))
    no_points = copy.deepcopy(data)
    for a in no_points['annotations']:
        del a['keypoints']
    fails('has no keypoint annotations', ann_file=_write(tmp_path / 'nokp.json', no_points))
    fails('annotation file not found', ann_file=tmp_path / 'nothing.json')
    (tmp_path / 'broken.json').write_text('{"images": [')
    fails('cannot read annotation file', ann_file=tmp_path / 'broken.json')
    fails(r'image not found: .*000000000001.jpg \(3 of 3 images missing\)', image_dir=tmp_path)
    broken = tmp_path / 'imgs'
    broken.mkdir()
    for image_id in SIZES:
        (broken / f'{image_id:012d}.jpg').write_bytes((images / f'{image_id:012d}.jpg').read_bytes())
    (broken / '000000000002.jpg').write_bytes(b'not a jpeg')
    fails('cannot read image .*000000000002.jpg', image_dir=broken)
    Image.new('RGB', (10, 10)).save(broken / '000000000002.jpg')
    fails(r'image .*000000000002.jpg is 10x10 pixels, the annotation file says 72x64', image_dir=broken)
    with pytest.raises(PoseDataError, match='annotates 17 keypoints, the model predicts 5'):
        evaluate_pose(StubPose(5, None), ann, images, gt_boxes=True, flip_test=False, keypoint_sigmas=[0.1] * 5)
    with pytest.raises(ValueError, match='not both or neither'):
        evaluate_pose(model, ann, images, coco_set['det'], gt_boxes=True)


def test_pycocotools_is_optional(monkeypatch: pytest.MonkeyPatch, coco_set: dict[str, Path]) -> None:
    monkeypatch.setitem(sys.modules, 'pycocotools.coco', None)
    with pytest.raises(ImportError, match=r'pip install "timm-hrnet\[eval\]"'):
        load_keypoint_annotations(coco_set['ann'])
    code = ("import sys; sys.modules['pycocotools'] = None\n"
            "import timm_hrnet.tasks.pose_evaluation, timm_hrnet.tools.cli\n"
            "assert 'pycocotools.coco' not in sys.modules")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT, timeout=60)


# --- command line -------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('ckpt') / 'pose_hrnet_tiny_64x48.pth'
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17)), path)
    return path


def _cli(coco_set: dict[str, Path], checkpoint: Path, *extra: str) -> list[str]:
    return ['evaluate-pose', '--checkpoint', str(checkpoint), '--annotations', str(coco_set['ann']), '--images',
            str(coco_set['images']), '--no-progress', '--batch-size', '1', *extra]


def test_cli_end_to_end(coco_set: dict[str, Path], checkpoint: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'results.json'
    assert main(_cli(coco_set, checkpoint, '--detections', str(coco_set['det_single']), '--results', str(out))) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert '3 images, 3 person boxes' in lines[0] and lines[1].split() == ['AP', 'AP50', 'AP75', 'APm', 'APl', 'AR']
    assert len(lines[2].split()) == 6 and f'wrote {out}' in text and 'GROUND-TRUTH' not in text
    results = json.loads(out.read_text())
    assert len(results) == 3 and {r['image_id'] for r in results} == {1, 2, 3}
    assert all(len(r['keypoints']) == 51 and r['category_id'] == 1 for r in results)

    assert main(_cli(coco_set, checkpoint, '--gt-boxes', '--no-flip', '--input-size', '64x48')) == 0
    captured = capsys.readouterr()
    assert GT_BOXES_WARNING in captured.out and GT_BOXES_WARNING in captured.err and '4 person boxes' in captured.out


def test_cli_errors_are_one_line(coco_set: dict[str, Path], checkpoint: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / 'nope.json'
    assert main(_cli(coco_set, checkpoint, '--detections', str(missing))) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'timm-hrnet evaluate-pose: error: detection file not found: {missing}'
    with pytest.raises(SystemExit):
        main(_cli(coco_set, checkpoint))  # neither --detections nor --gt-boxes


def test_torchrun_gives_the_numbers_of_one_process(coco_set: dict[str, Path], checkpoint: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    args = _cli(coco_set, checkpoint, '--detections', str(coco_set['det']), '--box-thr', '0.3', '--json')
    assert main([*args, '--results', str(tmp_path / 'one.json')]) == 0
    single = json.loads(capsys.readouterr().out)
    process = torchrun(*args, '--device', 'cpu', '--results', str(tmp_path / 'two.json'),
                       PYTHONPATH=str(Path(__file__).parents[1]))
    assert process.returncode == 0, process.stderr[-2000:]
    double = json.loads(process.stdout)
    assert double['world_size'] == 2 and single['world_size'] == 1
    varying = {'world_size', 'images_per_second', 'boxes_per_second', 'results_file'}
    assert {k: v for k, v in double.items() if k not in varying} == {k: v for k, v in single.items()
                                                                       if k not in varying}
    assert json.loads((tmp_path / 'two.json').read_text()) == json.loads((tmp_path / 'one.json').read_text())
