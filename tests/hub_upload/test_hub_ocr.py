"""`hub_upload convert` publishes HRNet + OCR checkpoints (official seg_hrnet_ocr and mmseg OCRNet, the fixtures of
tests/fixtures/ocr): official keys, a config.json recording the head and the numerics, a card saying whose numbers
the model computes, and weights that load back to the source's outputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import relative_diff
from hub_common import as_the_card_says
from huggingface_hub import ModelCard

from hub_upload.__main__ import main
from timm_hrnet.tasks.segmentation import HRNetOCR, create_seg_model

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'ocr'
SOURCES = {'official': FIXTURES / 'official_ocr_reduced.pth', 'mmseg': FIXTURES / 'mmseg_ocrnet_hr_reduced.pth'}
IMAGE = ['--image-size', '64']
pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.mark.parametrize('layout', ['official', 'mmseg'])
def test_ocr_checkpoints_become_repos_that_load_back(layout: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'repo'
    assert main(['convert', str(SOURCES[layout]), '--out', str(out), *IMAGE]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert (config['head'], config['ocr_channels'], config['source_layout']) == ('ocr', [16, 8], layout)
    assert config['align_corners'] is (layout == 'official')  # official OCR: True, whatever the dataset
    assert config['head_bias'] is (layout == 'official')
    card = ModelCard.load(out / 'README.md').text
    assert 'HRNetV2 + OCR' in card and 'arxiv.org/abs/1909.11065' in card
    if layout == 'official':
        assert "| Numerics | the official seg_hrnet_ocr's: exchange units, the branch concatenation and the final " \
               'resize bilinear with align_corners True' in card
        assert 'no independent implementation of the official seg_hrnet_ocr code' in card
    else:
        assert "| Numerics | mmseg 1.x OCRNet's: exchange units upsample nearest by the stride ratio" in card
        assert "OpenMMLab mmseg's OCRNet" in card and 'refuses this OCR model' in card
    folder = tmp_path / 'downloaded'
    folder.mkdir()
    weights = Path(shutil.copy(out / 'model.safetensors', folder))  # the weights alone, as hf_hub_download gives
    source = create_seg_model(SOURCES[layout])
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        expected = source(x)
        from_card = as_the_card_says(out, weights)
        assert isinstance(from_card, HRNetOCR) and relative_diff(from_card(x), expected) == 0
        assert relative_diff(create_seg_model(out / 'model.safetensors')(x), expected) == 0  # config.json beside
    if layout == 'mmseg':
        with pytest.raises(ValueError, match="without conv biases, as mmseg's OCRNet"):
            create_seg_model(weights)  # alone: which resizes is not in the weights
    assert main(['verify', str(out), '--against', str(SOURCES[layout])]) == 0
    assert capsys.readouterr().out.startswith('verify OK')


def test_official_ocr_cannot_be_converted_as_mmseg(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(['convert', str(SOURCES['official']), '--out', str(tmp_path / 'repo'), '--source', 'mmseg']) != 0
    error = capsys.readouterr().err.strip()
    assert 'in the official layout, not mmseg' in error and '\n' not in error
