"""Segmentation evaluation (`timm_hrnet.tasks.seg_evaluation`, `label_maps`, `timm-hrnet evaluate-seg`): a
hand-computed confusion matrix, mmseg's IoUMetric on its reference fixture, Cityscapes layout and id mapping, label
formats, every bad-input error, the tiny HRNetV2 through the command line and under torchrun."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import openmmlab_fixture, run_ranks, torchrun
from PIL import Image
from task_reference import official_shapes, random_checkpoint, tiny_extra

from timm_hrnet.tasks.datasets import SEG_DATASETS
from timm_hrnet.tasks.label_maps import (
    CITYSCAPES_LABELS,
    CITYSCAPES_TRAIN_ID_LUT,
    LabelMapError,
    cityscapes_train_ids,
    decode_palette_labels,
    read_index_labels,
)
from timm_hrnet.tasks.seg_evaluation import confusion_matrix, evaluate_seg, find_seg_samples, seg_metrics
from timm_hrnet.tools.cli import main

pytestmark = pytest.mark.usefixtures('single_torch_thread')

PALETTE = ((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255))


def reference_fixture(name: str) -> dict:
    return json.loads(openmmlab_fixture(name).read_text())


class StubSeg:
    """The interface evaluate_seg uses; it 'predicts' the image's green channel, so a test writes the prediction
    into the image."""

    def __init__(self, num_classes: int = 4) -> None:
        self.num_classes, self.in_chans = num_classes, 3
        self.class_names = tuple(f'c{k}' for k in range(num_classes))
        self.palette = PALETTE[:num_classes] if num_classes <= 4 else SEG_DATASETS['cityscapes'].palette
        self.calls: list[dict] = []

    def predict(self, image: torch.Tensor, scales=(1.0,), flip=False, window=None) -> dict:
        self.calls.append(dict(scales=tuple(scales), flip=flip, window=window))
        return dict(labels=(image[1] * 255).round().long())


def _pair(folder: Path, name: str, label: np.ndarray, prediction: np.ndarray, label_dir: str = 'labels',
          image_dir: str = 'images', suffix: str = '.png') -> None:
    for sub in (image_dir, label_dir):
        (folder / sub / name).parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((*prediction.shape, 3), dtype=np.uint8)
    pixels[..., 1] = prediction
    Image.fromarray(pixels).save(folder / image_dir / f'{name}{suffix}')
    Image.fromarray(label.astype(np.uint8), mode='L').save(folder / label_dir / f'{name}.png')


# label / prediction pairs and their confusion matrix, counted by hand (rows: label, columns: prediction)
LABEL_A, PRED_A = np.array([[0, 0, 1], [1, 2, 255]]), np.array([[0, 1, 1], [1, 2, 0]])
LABEL_B, PRED_B = np.array([[2, 2], [0, 255]]), np.array([[2, 0], [0, 1]])
CONFUSION = [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


@pytest.fixture
def hand_set(tmp_path: Path) -> Path:
    _pair(tmp_path, 'a', LABEL_A, PRED_A)
    _pair(tmp_path, 'sub/b', LABEL_B, PRED_B)  # subfolders pair by their relative path
    return tmp_path


def test_hand_computed_confusion_matrix(hand_set: Path) -> None:
    model = StubSeg()
    metrics = evaluate_seg(model, hand_set / 'images', hand_set / 'labels', progress=False, scales=(0.5, 1.0),
                           flip=True, window=(64, 64))
    assert metrics['confusion_matrix'].tolist() == CONFUSION
    # IoU = [2/4, 2/3, 2/3, NaN (class 3 neither labelled nor predicted)], Acc = [2/3, 2/2, 2/3, NaN]
    assert metrics['IoU'][:3] == pytest.approx([0.5, 2 / 3, 2 / 3], abs=1e-15) and math.isnan(metrics['IoU'][3])
    assert metrics['mIoU'] == pytest.approx(11 / 18, abs=1e-15)
    assert metrics['mAcc'] == pytest.approx(7 / 9, abs=1e-15)
    assert metrics['aAcc'] == 0.75 and metrics['num_pixels'] == 8 and metrics['num_images'] == 2
    assert list(metrics['per_class_iou']) == ['c0', 'c1', 'c2', 'c3']
    assert model.calls == [dict(scales=(0.5, 1.0), flip=True, window=(64, 64))] * 2


def test_perfect_predictions_give_miou_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for k in range(3):
        label = rng.integers(0, 4, (12, 10))
        _pair(tmp_path, f'img{k}', label, label)
    metrics = evaluate_seg(StubSeg(), tmp_path / 'images', tmp_path / 'labels', progress=False)
    assert metrics['mIoU'] == 1.0 and metrics['aAcc'] == 1.0 and metrics['mAcc'] == 1.0


def test_metrics_of_a_class_only_predicted() -> None:
    """Predicted but never labelled: IoU 0 (counted in mIoU), accuracy NaN (left out of mAcc), as mmseg."""
    confusion = confusion_matrix(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 0], [0, 255]]), 2)
    assert confusion.tolist() == [[1, 2], [0, 0]]
    metrics = seg_metrics(confusion, ('x', 'y'))
    assert metrics['IoU'] == [1 / 3, 0.0] and metrics['mIoU'] == pytest.approx(1 / 6)
    assert math.isnan(metrics['Acc'][1]) and metrics['mAcc'] == pytest.approx(1 / 3)


def test_iou_metric_matches_mmseg() -> None:
    reference = reference_fixture('iou_metric.json')
    for case in reference['cases']:
        confusion = sum(confusion_matrix(torch.tensor(pred), torch.tensor(label), case['num_classes'],
                                         case.get('ignore_index', 255))
                        for pred, label in zip(case['predictions'], case['labels']))
        ours = seg_metrics(confusion)
        expected = case['results']
        for key in ('mIoU', 'aAcc', 'mAcc'):
            assert 100 * ours[key] == pytest.approx(expected[key], abs=0.005 + 1e-9), (case.get('name'), key)
        if 'IoU' in expected:
            np.testing.assert_allclose(100 * np.array(ours['IoU']), expected['IoU'], atol=0.005 + 1e-9)


def test_cityscapes_layout_and_ids(tmp_path: Path) -> None:
    assert len([label for label in CITYSCAPES_LABELS if label[0] >= 0]) == 34
    train_names = {train_id: name for _, name, train_id in CITYSCAPES_LABELS if train_id != 255}
    assert tuple(train_names[k] for k in range(19)) == SEG_DATASETS['cityscapes'].class_names
    ids = np.arange(0, 40).reshape(5, 8)
    ids[4, 7] = 255
    expected = CITYSCAPES_TRAIN_ID_LUT[ids]
    assert expected[0, 7] == 0 and expected[1, 0] == 1 and expected[3, 1] == 12 and expected[0, 0] == 255
    assert expected[4, :2].tolist() == [17, 18] and (expected[4, 2:] == 255).all()  # 34 and above: not labels
    root = tmp_path / 'cityscapes'
    for k, city in enumerate(('aachen', 'bremen')):
        name = f'{city}_000000_00001{k}'
        _pair(root, f'{city}/{name}_leftImg8bit', ids, np.where(expected == 255, 0, expected),
              label_dir='gtFine/val', image_dir='leftImg8bit/val')
        (root / 'gtFine/val' / city / f'{name}_leftImg8bit.png').rename(
            root / 'gtFine/val' / city / f'{name}_gtFine_labelIds.png')
        Image.new('L', (8, 5)).save(root / 'gtFine/val' / city / f'{name}_gtFine_color.png')  # ignored
    samples = find_seg_samples(root / 'leftImg8bit/val', root / 'gtFine/val')
    assert [s.label.name for s in samples] == ['aachen_000000_000010_gtFine_labelIds.png',
                                               'bremen_000000_000011_gtFine_labelIds.png']
    assert {s.label_format for s in samples} == {'cityscapes'}
    assert np.array_equal(cityscapes_train_ids(samples[0].label), expected)
    metrics = evaluate_seg(StubSeg(19), root / 'leftImg8bit', root / 'gtFine', progress=False)  # split folders too
    assert metrics['mIoU'] == 1.0 and metrics['label_format'] == 'cityscapes'
    assert metrics['num_pixels'] == 2 * int((expected != 255).sum())
    # only labelTrainIds (mmseg's preparation): read as train ids
    label = root / 'gtFine/val/aachen/aachen_000000_000010_gtFine_labelIds.png'
    Image.fromarray(expected.astype(np.uint8), mode='L').save(str(label).replace('labelIds', 'labelTrainIds'))
    label.unlink()
    samples = find_seg_samples(root / 'leftImg8bit/val', root / 'gtFine/val', 'cityscapes')
    assert samples[0].label_format == 'index' and samples[0].label.name.endswith('_gtFine_labelTrainIds.png')
    assert evaluate_seg(StubSeg(19), root / 'leftImg8bit', root / 'gtFine', progress=False)['mIoU'] == 1.0


def test_palette_and_index_formats(tmp_path: Path) -> None:
    label = np.array([[0, 1, 2], [3, 2, 1]])
    colours = np.array(PALETTE, dtype=np.uint8)[label]
    Image.fromarray(colours).save(tmp_path / 'rgb.png')
    assert np.array_equal(decode_palette_labels(tmp_path / 'rgb.png', PALETTE), label)
    indexed = Image.fromarray(label.astype(np.uint8), mode='P')
    indexed.putpalette([200, 10, 10] * 256)  # palette PNGs hold the class in the index, whatever the colour
    indexed.save(tmp_path / 'p.png')
    assert np.array_equal(read_index_labels(tmp_path / 'p.png'), label)
    Image.fromarray((label * 1000).astype(np.uint16)).save(tmp_path / 'wide.png')
    assert np.array_equal(read_index_labels(tmp_path / 'wide.png'), label * 1000)
    # a palette-format folder through evaluate_seg: auto-detected from the RGB mode
    _pair(tmp_path / 'set', 'x', np.zeros((2, 3)), label)
    Image.fromarray(colours).save(tmp_path / 'set' / 'labels' / 'x.png')
    for label_format in ('auto', 'palette'):
        metrics = evaluate_seg(StubSeg(), tmp_path / 'set' / 'images', tmp_path / 'set' / 'labels',
                               label_format=label_format, progress=False)
        assert metrics['mIoU'] == 1.0 and metrics['label_format'] == label_format


def test_reduce_zero_label(tmp_path: Path) -> None:
    _pair(tmp_path, 'a', np.array([[0, 1, 2, 3, 4]]), np.array([[3, 0, 1, 2, 3]]))
    metrics = evaluate_seg(StubSeg(), tmp_path / 'images', tmp_path / 'labels', reduce_zero_label=True,
                           progress=False)
    assert metrics['num_pixels'] == 4 and metrics['mIoU'] == 1.0  # 0 ignored, k -> k - 1
    with pytest.raises(LabelMapError, match='has values 4 outside the 4 classes'):
        evaluate_seg(StubSeg(), tmp_path / 'images', tmp_path / 'labels', progress=False)


def test_bad_input_is_named(hand_set: Path, tmp_path: Path) -> None:
    images, labels = hand_set / 'images', hand_set / 'labels'

    def fails(match: str, image_dir: Path = images, label_dir: Path = labels, **kwargs) -> None:
        with pytest.raises(LabelMapError, match=match):
            evaluate_seg(StubSeg(), image_dir, label_dir, progress=False, **kwargs)

    fails('image folder not found', image_dir=tmp_path / 'none')
    fails('label folder not found', label_dir=tmp_path / 'none')
    (tmp_path / 'empty').mkdir()
    fails('no images', image_dir=tmp_path / 'empty')
    fails(r'no label map for .*a.png \(looked for .*empty/a\.\*\)', label_dir=tmp_path / 'empty')
    fails(r'is not a Cityscapes \*_leftImg8bit.png image', label_format='cityscapes')
    fails(r'label map .*a.png is a L image, not RGB colours', label_format='palette')
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8) + 7).save(labels / 'a.png')
    fails(r'label map .*a.png has colour \(7, 7, 7\), no class of the palette')
    fails(r"label map .*a.png is a RGB image, not class indices .*label_format='palette'", label_format='index')
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(labels / 'a.png')
    fails(r'label map .*a.png is 3x3 pixels, its image .*a.png 3x2')
    Image.fromarray(np.array([[0, 9, 4], [1, 255, 2]], dtype=np.uint8)).save(labels / 'a.png')
    fails(r'label map .*a.png has values 4, 9 outside the 4 classes \(ignore_index 255\)')
    (labels / 'a.png').write_bytes(b'broken')
    fails(r'cannot read image .*labels/a.png')
    (labels / 'a.jpg').write_bytes(b'x')
    fails('two label maps for a')
    with pytest.raises(ValueError, match='unknown label format'):
        evaluate_seg(StubSeg(), images, labels, label_format='colour')
    with pytest.raises(LabelMapError, match=r'classes 6 and 48 the same colour \(140, 140, 140\)'):
        decode_palette_labels(hand_set / 'images' / 'a.png', SEG_DATASETS['ade20k'].palette)


# --- the real model through the command line, one process and two ----------------------------------------------

@pytest.fixture(scope='module')
def seg_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('seg')
    rng = np.random.default_rng(5)
    for k in range(3):
        (root / 'images').mkdir(exist_ok=True)
        (root / 'labels').mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / 'images' / f'{k}.png')
        label = rng.integers(0, 19, (40, 48))
        label[:3] = 255
        Image.fromarray(label.astype(np.uint8), mode='L').save(root / 'labels' / f'{k}.png')
    checkpoint = root / 'seg_tiny.pth'
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19)), checkpoint)
    return dict(root=root, checkpoint=checkpoint)


def _cli(files: dict[str, Path], *extra: str) -> list[str]:
    return ['evaluate-seg', '--checkpoint', str(files['checkpoint']), '--images', str(files['root'] / 'images'),
            '--labels', str(files['root'] / 'labels'), '--no-progress', *extra]


def test_cli_table_and_json(seg_files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(_cli(seg_files, '--scales', '0.75,1.0', '--flip', '--window', '32x32')) == 0
    text = capsys.readouterr().out
    assert '3 images (auto labels), scales [0.75, 1.0], flip on' in text
    assert 'road' in text and 'bicycle' in text and 'mIoU' in text and 'aAcc' in text
    assert main(_cli(seg_files, '--json')) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics['per_class_iou']) == set(SEG_DATASETS['cityscapes'].class_names)
    assert 0.0 <= metrics['mIoU'] <= 1.0 and metrics['num_images'] == 3 and metrics['num_pixels'] == 3 * 37 * 48
    assert main(_cli(seg_files, '--label-format', 'cityscapes')) == 2
    assert 'is not a Cityscapes' in capsys.readouterr().err


def test_torchrun_gives_the_numbers_of_one_process(seg_files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(_cli(seg_files, '--json')) == 0
    single = json.loads(capsys.readouterr().out)
    process = torchrun(*_cli(seg_files, '--json'), '--device', 'cpu')
    assert process.returncode == 0, process.stderr[-2000:]
    double = json.loads(process.stdout)
    assert double['world_size'] == 2
    varying = {'world_size', 'images_per_second'}
    assert {k: v for k, v in double.items() if k not in varying} == {k: v for k, v in single.items()
                                                                       if k not in varying}


def test_bad_file_on_one_rank_stops_both(seg_files: dict[str, Path], tmp_path: Path) -> None:
    """Rank 1 meets the bad label; rank 0 must not wait for it in a collective but stop with the same error. The
    ranks run without torchrun's agent, which would stop rank 0 itself and hide whether it was left waiting."""
    for folder in ('images', 'labels'):
        (tmp_path / folder).mkdir()
        for k in range(3):
            (tmp_path / folder / f'{k}.png').write_bytes((seg_files['root'] / folder / f'{k}.png').read_bytes())
    Image.fromarray(np.full((40, 48), 77, dtype=np.uint8)).save(tmp_path / 'labels' / '1.png')
    ranks = run_ranks('evaluate-seg', '--checkpoint', str(seg_files['checkpoint']),
                      '--images', str(tmp_path / 'images'), '--labels', str(tmp_path / 'labels'), '--no-progress',
                      '--device', 'cpu', timeout=120)
    for rank in ranks:
        assert rank.returncode == 2, rank.stderr[-2000:]
        last = rank.stderr.strip().splitlines()[-1]
        assert last.startswith('timm-hrnet evaluate-seg: error: label map') and 'has values 77 outside the 19' in last
