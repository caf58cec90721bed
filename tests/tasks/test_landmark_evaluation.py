"""Landmark metrics against mmpose's metric functions and the official facial `compute_nme`, run on the same
synthetic sets (tests/fixtures/landmarks/make_landmark_metric_ref.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from timm_hrnet.tasks.datasets import HAND_KEYPOINTS, keypoints_for
from timm_hrnet.tasks.landmark_evaluation import auc, epe, landmark_metrics, nme, pck

CASES = json.loads((Path(__file__).resolve().parents[1] / 'fixtures' / 'landmarks' / 'landmark_metrics.json')
                   .read_text())


@pytest.mark.parametrize('name', ['wflw', '300w', 'cofw', 'aflw'])
def test_nme_equals_mmpose_and_official(name):
    case = CASES[name]
    pred, gt, mask = np.array(case['pred']), np.array(case['gt']), np.array(case['mask'])
    sizes = case['box_size'] if name == 'aflw' else None
    assert nme(pred, gt, mask, name, sizes) == pytest.approx(case['nme'], rel=1e-6)
    assert nme(pred, gt, None, name, sizes) == pytest.approx(case['nme_all'], rel=1e-6)
    assert nme(pred, gt, None, name, sizes) == pytest.approx(case['official_nme'], rel=1e-6)
    info = keypoints_for(gt.shape[1])
    assert landmark_metrics(pred, gt, info, mask, box_sizes=sizes)['NME'] == pytest.approx(case['nme'], rel=1e-6)


def test_hand_pck_auc_epe_equal_mmpose():
    case = CASES['hand']
    pred, gt, mask, boxes = (np.array(case[k]) for k in ('pred', 'gt', 'mask', 'boxes'))
    assert 0 < case['pck'] < 1 and 0 < case['auc'] < 1
    assert pck(pred, gt, boxes, mask) == pytest.approx(case['pck'], rel=1e-6)
    assert auc(pred, gt, mask) == pytest.approx(case['auc'], rel=1e-6)
    assert epe(pred, gt, mask) == pytest.approx(case['epe'], rel=1e-6)
    assert landmark_metrics(pred, gt, HAND_KEYPOINTS, mask, boxes) == pytest.approx(
        dict(PCK=case['pck'], AUC=case['auc'], EPE=case['epe']), rel=1e-6)


def test_nme_without_normalisation_points_is_one_line_error():
    case = CASES['wflw']
    pred, gt, mask = np.array(case['pred']), np.array(case['gt']), np.array(case['mask'])
    mask[2, 72] = False
    with pytest.raises(ValueError, match=r'face 2 \(1 in all\) lacks landmark 60 or 72') as error:
        nme(pred, gt, mask, 'wflw')
    assert '\n' not in str(error.value)
    with pytest.raises(ValueError, match=r"aflw's NME is normalised by the face box size"):
        nme(pred[:, :19], gt[:, :19], None, 'aflw')
    with pytest.raises(ValueError, match=r"NME is defined for the face sets .* not 'hand'"):
        nme(pred[:, :21], gt[:, :21], None, 'hand')
    gt[1, 60] = gt[1, 72]
    with pytest.raises(ValueError, match=r'face 1 has coincident points 60 and 72 of 0'):
        nme(pred, gt, None, 'wflw')
