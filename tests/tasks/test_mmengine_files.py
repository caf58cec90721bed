"""Checkpoints as OpenMMLab saves them open without executing anything: mmengine's Runner keeps numpy arrays in
meta['dataset_meta'] and HistoryBuffer objects in its message hub (tests/fixtures/openmmlab/mmengine_runner_pose.pth,
saved by mmengine 0.10.7's Runner.save_checkpoint; make_mmengine_checkpoint.py), mmpose's publish script keeps the
meta. A pickle that would run code is still refused, naming what it references."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import openmmlab_fixture

from timm_hrnet.checkpoints import read_checkpoint, read_checkpoint_object
from timm_hrnet.checkpoints.files import TrainingStatePlaceholder
from timm_hrnet.tasks.pose import create_pose_model

COCO_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089]


def test_a_runner_checkpoint_opens_with_its_numpy_meta() -> None:
    path = openmmlab_fixture('mmengine_runner_pose.pth')
    with pytest.raises(Exception, match='numpy'):  # what torch.load(weights_only=True) alone says of it
        torch.load(path, weights_only=True)
    raw = read_checkpoint_object(path)
    dataset_meta = raw['meta']['dataset_meta']
    assert isinstance(dataset_meta['sigmas'], np.ndarray) and np.allclose(dataset_meta['sigmas'], COCO_SIGMAS)
    assert dataset_meta['keypoint_colors'].dtype == np.uint8 and dataset_meta['dataset_name'] == 'coco'
    history = raw['message_hub']['log_scalars']['train/loss']
    assert isinstance(history, TrainingStatePlaceholder)  # kept inert: mmengine is neither imported nor run
    loaded = read_checkpoint(path)
    assert (loaded.layout.name, loaded.codec, loaded.architecture.num_outputs) == ('mmpose', 'mmpose', 17)
    model = create_pose_model(path)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 64)).shape == (1, 17, 24, 16)


def test_a_published_checkpoint_opens(tmp_path: Path) -> None:
    """mmpose's publish_model.py keeps meta and state_dict and saves them in the legacy serialisation."""
    raw = read_checkpoint_object(openmmlab_fixture('mmengine_runner_pose.pth'))
    path = tmp_path / 'td-hm_hrnet-w32_8xb64-210e_coco-256x192-81c58e40_20220909.pth'
    torch.save({'meta': raw['meta'], 'state_dict': raw['state_dict']}, path, _use_new_zipfile_serialization=False)
    again = read_checkpoint_object(path)
    assert np.allclose(again['meta']['dataset_meta']['sigmas'], COCO_SIGMAS)
    assert all(torch.equal(again['state_dict'][k], v) for k, v in raw['state_dict'].items())
    assert create_pose_model(path).input_size == (256, 192)


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f'touch {self.marker}',)


class _CallsAMethod:
    def __reduce__(self) -> tuple:
        return 'abc'.upper, ()  # pickled as getattr('abc', 'upper') called with no arguments


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_a_pickle_that_would_run_code_is_refused_naming_it(legacy: bool, tmp_path: Path) -> None:
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': _RunsCommand(marker)}}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth.*references .*system") as info:
        read_checkpoint_object(path)
    assert '\n' not in str(info.value) and not marker.exists()


def test_getattr_reads_as_a_placeholder_that_cannot_be_called(tmp_path: Path) -> None:
    """getattr is allowed only as the inert stand-in of mmengine's pickled bound methods: calling what it gives is
    refused."""
    path = tmp_path / 'method.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _CallsAMethod()}, path)
    with pytest.raises(ValueError, match=r'refusing to load .*references builtins.getattr'):
        read_checkpoint_object(path)
