"""Training HRNet + OCR (`train_seg(head='ocr')`, `timm-hrnet train-seg --head ocr`): the official loss (OCR logits
plus 0.4 x auxiliary, OHEM on the OCR logits only), an overfit to high mIoU, exact resumption, fine-tuning an OCR
checkpoint, the exported files loading back as an `HRNetOCR`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from training_data import FAST, make_seg_data

from timm_hrnet.tasks.segmentation import HRNetOCR, create_seg_model
from timm_hrnet.tasks.training import SegAugmentation, load_seg_model, train_seg
from timm_hrnet.tasks.training.seg_training import build_seg_model
from timm_hrnet.tools.cli import main

OFFICIAL = Path(__file__).resolve().parents[2] / 'fixtures' / 'ocr' / 'official_ocr_reduced.pth'


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def test_ocr_training_overfits(tmp_path: Path) -> None:
    """8 images, random scale 0.8-1.2, 64x64 crops, flip, SGD with poly decay, 120 steps: train-set mIoU >= 0.9 from
    the OCR logits; the exported files load back as the same HRNetOCR."""
    images, labels = make_seg_data(tmp_path / 'data')
    result = train_seg(images, labels, num_classes=3, head='ocr', ocr_channels=(64, 32), val_image_dir=images,
                       val_label_dir=labels, output_dir=str(tmp_path / 'run'), crop_size=(64, 64),
                       augmentation=SegAugmentation(scale_range=(0.8, 1.2)), epochs=60, batch_size=4, lr=0.1,
                       eval_every=60, log_every=5, **FAST)
    print(f'ocr overfit: mIoU {result.metrics["mIoU"]:.3f} aAcc {result.metrics["aAcc"]:.3f}, '
          f'loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g}')
    assert isinstance(result.model, HRNetOCR) and result.finished and result.step == 120
    assert result.metrics['mIoU'] >= 0.9
    assert np.mean(result.losses[-3:]) < 0.25 * np.mean(result.losses[:3])
    loaded = load_seg_model(result.output_dir)
    assert isinstance(loaded, HRNetOCR) and loaded.align_corners is False and loaded.head_bias
    assert loaded.ocr_channels == (64, 32)
    batch = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(batch), result.model.eval()(batch))


def test_the_loss_is_the_official_weighted_sum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One step's logged loss is CE(OCR logits) + aux_weight x CE(auxiliary logits) of the initial model."""
    images, labels = make_seg_data(tmp_path / 'data', count=2, size=(48, 48))
    settings = dict(num_classes=3, head='ocr', ocr_channels=(32, 16), crop_size=(48, 48), epochs=1, batch_size=2,
                    lr=0.01,
                    augmentation=SegAugmentation.none(), **FAST)
    runs = {w: train_seg(images, labels, output_dir=str(tmp_path / f'w{w}'), aux_weight=w, **settings)
            for w in (0.0, 0.4, 1.0)}
    first = {w: run.losses[0] for w, run in runs.items()}
    aux_loss = first[1.0] - first[0.0]
    assert aux_loss > 0
    assert first[0.4] == pytest.approx(first[0.0] + 0.4 * aux_loss, rel=1e-4)


def test_stopped_ocr_run_resumes_bit_identical(tmp_path: Path) -> None:
    """OCR head, OHEM on its logits, SGD momentum, poly decay: stopped mid-epoch and resumed, the same weights."""
    images, labels = make_seg_data(tmp_path / 'data', count=4, size=(56, 56))
    settings = dict(num_classes=3, head='ocr', ocr_channels=(32, 16), crop_size=(48, 48), epochs=2, batch_size=2,
                    lr=0.01, ohem=True, **FAST)
    full = train_seg(images, labels, output_dir=str(tmp_path / 'full'), **settings)
    stopped = train_seg(images, labels, output_dir=str(tmp_path / 'stopped'), max_steps=1, **settings)
    assert not stopped.finished and stopped.step == 1
    resumed = train_seg(images, labels, output_dir=str(tmp_path / 'stopped'), resume='auto', **settings)
    assert full.step == resumed.step == 4
    ours, theirs = weights(resumed.files['weights']), weights(full.files['weights'])
    assert ours.keys() == theirs.keys() and any(k.startswith('ocr_distri_head.') for k in ours)
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


def test_fine_tuning_an_official_ocr_checkpoint(tmp_path: Path) -> None:
    """The official OCR file with another class count: both class convs new, the rest its own; asking for the
    other head is an error."""
    model = build_seg_model(OFFICIAL, 3)
    assert isinstance(model, HRNetOCR) and model.cls_head.out_channels == 3 and model.align_corners is True
    with pytest.raises(ValueError, match='has an ocr head, not fcn'):
        build_seg_model(OFFICIAL, 3, head='fcn')
    with pytest.raises(ValueError, match='unknown segmentation head'):
        build_seg_model('hrnet_w18_small', 3, pretrained=False, head='psp')


def test_train_seg_cli_trains_an_ocr_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, labels = make_seg_data(tmp_path / 'data', count=2, size=(48, 48))
    out = tmp_path / 'run'
    assert main(['train-seg', '--images', str(images), '--labels', str(labels), '--num-classes', '3', '--head', 'ocr',
                 '--init', 'hrnet_w18_small', '--scratch', '--crop-size', '48x48', '--epochs', '1', '--batch-size',
                 '2', '--workers', '0', '--no-progress', '--no-tensorboard', '--ocr-channels', '32,16', '--output',
                 str(out)]) == 0
    model = create_seg_model(out / 'model.safetensors')
    assert isinstance(model, HRNetOCR) and model.ocr_channels == (32, 16)
