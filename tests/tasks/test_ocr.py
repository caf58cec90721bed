"""HRNet + OCR computes what its own code computes: the official seg_hrnet_ocr (HRNet-OCR branch; _torch11 and
_torch04 files) and mmseg 1.2.2's OCRNet, against outputs of that code (tests/fixtures/ocr, made by
make_ocr_ref.py there: random weights and BatchNorm statistics, 512x1024 and 250x330); bad OCR files are refused
in one line; the fused model and its exports give the same logits."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from helpers import relative_diff

from timm_hrnet import optimize_for_inference
from timm_hrnet.checkpoints import MMSEG, OCR, SEGMENTATION, read_architecture, read_checkpoint
from timm_hrnet.checkpoints.layouts import to_canonical_keys
from timm_hrnet.tasks.base import resize
from timm_hrnet.tasks.segmentation import HRNetOCR, HRNetSeg, create_seg_model

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'ocr'
OFFICIAL = FIXTURES / 'official_ocr_reduced.pth'
MMSEG_OCR = FIXTURES / 'mmseg_ocrnet_hr_reduced.pth'
SIZES = ['512x1024', '250x330']
pytestmark = pytest.mark.usefixtures('single_torch_thread')


def reference(path: Path) -> dict:
    return torch.load(path.with_name(f'{path.stem}_reference.pt'), weights_only=True)


def fixture_input(size: str, seed: int) -> torch.Tensor:
    height, width = (int(v) for v in size.split('x'))
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def assert_matches(output: torch.Tensor, expected: dict, name: str) -> float:
    """The sampled logits within 1e-4, the full output's sums as the reference's; returns the max abs diff."""
    assert tuple(output.shape) == tuple(expected[f'{name}_shape'])
    step = expected['step'] * (4 if name == 'resized' else 1)
    diff = (output[..., ::step, ::step] - expected[f'{name}_sampled']).abs().max().item()
    assert diff <= 1e-4, f'{name}: {diff}'
    assert output.double().sum().item() == pytest.approx(expected[f'{name}_sum'], rel=1e-5, abs=1e-2)
    assert output.double().abs().sum().item() == pytest.approx(expected[f'{name}_abs_sum'], rel=1e-6)
    return diff


def torch04(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A _torch04 file: the same tensors without BatchNorm step counters (InPlaceABNSync keeps none)."""
    return {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}


@pytest.fixture(scope='module')
def official_state() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL, weights_only=True)


@pytest.fixture(scope='module')
def mmseg_state() -> dict[str, torch.Tensor]:
    return torch.load(MMSEG_OCR, weights_only=True)['state_dict']


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('release', ['torch11', 'torch04'])
def test_official_ocr_reproduces_the_official_code(size: str, release: str, official_state: dict) -> None:
    model = create_seg_model(OFFICIAL if release == 'torch11' else torch04(official_state))
    assert isinstance(model, HRNetOCR) and isinstance(model, HRNetSeg)
    assert model.align_corners is True and not model.spec.upsample_by_stride and model.head_bias
    assert model.num_classes == 19 and model.dataset.name == 'cityscapes' and model.ocr_channels == (16, 8)
    expected = reference(OFFICIAL)[size]
    with torch.no_grad():
        logits, aux = model(fixture_input(size, expected['seed']), aux=True)
    assert_matches(logits, expected, 'logits')
    assert_matches(aux, expected, 'aux')


@pytest.mark.parametrize('size', SIZES)
def test_mmseg_ocrnet_reproduces_mmseg(size: str) -> None:
    """mmseg's two-step exchange-unit resize, align_corners False, bias-free head convs, also after its final
    resize (`encode_decode`)."""
    loaded = read_checkpoint(MMSEG_OCR)
    assert loaded.layout.name == MMSEG and loaded.architecture.head == OCR and not loaded.unmapped
    model = create_seg_model(loaded)
    assert model.align_corners is False and model.spec.upsample_by_stride and not model.head_bias
    assert model.class_names == loaded.class_names and model.class_names[:2] == ('road', 'sidewalk')
    expected = reference(MMSEG_OCR)[size]
    x = fixture_input(size, expected['seed'])
    with torch.no_grad():
        logits, aux = model(x, aux=True)
        resized = model.logits_at_input_size(x)
    assert_matches(logits, expected, 'logits')
    assert_matches(aux, expected, 'aux')
    assert_matches(resized, expected, 'resized')


def test_the_fixtures_tell_the_two_codes_apart(mmseg_state: dict) -> None:
    """The mmseg weights run with the official code's resizes (one bilinear resize, align_corners True) give other
    logits: the fixtures would catch a model computing the wrong code's numerics."""
    mmseg_model = create_seg_model(mmseg_state)
    spec = dataclasses.replace(mmseg_model.spec, upsample_by_stride=False, align_corners=True)
    official_numerics = HRNetOCR(spec, 19, mmseg_model.ocr_channels, head_bias=False).eval()
    official_numerics.load_state_dict(mmseg_model.state_dict())
    x = fixture_input('250x330', 1)
    with torch.no_grad():
        assert relative_diff(official_numerics(x), mmseg_model(x)) > 1e-2


def test_predict_uses_the_ocr_logits() -> None:
    model = create_seg_model(OFFICIAL)
    image = torch.rand(3, 70, 90)
    result = model.predict(image)
    with torch.no_grad():
        logits = model.logits_at_input_size(model.normalize(image).unsqueeze(0))
    assert torch.equal(result['labels'], logits[0].argmax(0))
    _, aux = model(model.normalize(image).unsqueeze(0), aux=True)
    assert not torch.equal(resize(aux, (70, 90), True)[0].argmax(0), result['labels'])  # not the auxiliary map


def test_fine_tuning_reinitialises_both_class_convs(official_state: dict) -> None:
    model = create_seg_model(OFFICIAL, num_classes=5)
    assert model.cls_head.out_channels == 5 and model.aux_head[3].out_channels == 5
    assert torch.equal(model.conv3x3_ocr[0].weight, official_state['model.conv3x3_ocr.0.weight'].float())
    assert model.cls_head.weight.std() < 0.01  # the official init, std 0.001


def test_task_config_names_the_head() -> None:
    config = create_seg_model(MMSEG_OCR).task_config()
    assert config['head'] == 'ocr' and config['ocr_channels'] == [16, 8] and config['head_bias'] is False


# --- bad input: one line naming the file and what is missing ---

def _one_line_error(source, match: str) -> str:
    with pytest.raises(ValueError, match=match) as error:
        create_seg_model(source)
    assert '\n' not in str(error.value)
    return str(error.value)


def test_truncated_official_head_is_named(official_state: dict, tmp_path: Path) -> None:
    truncated = {k: v for k, v in official_state.items() if not k.startswith('model.cls_head.')}
    path = tmp_path / 'hrnet_ocr_cs_8162_torch11.pth'
    torch.save(truncated, path)
    message = _one_line_error(path, 'truncated OCR head: missing the OCR class conv')
    assert str(path) in message and 'cls_head.weight' in message
    no_block = {k: v for k, v in official_state.items() if '.f_up.' not in k}
    _one_line_error(no_block, 'missing the object attention block')


def test_truncated_mmseg_head_is_named(mmseg_state: dict) -> None:
    truncated = {k: v for k, v in mmseg_state.items() if 'object_context_block.bottleneck' not in k}
    _one_line_error(truncated, 'truncated OCR head: missing the OCR fusion conv')


def test_auxiliary_only_checkpoints_are_refused(official_state: dict, mmseg_state: dict, tmp_path: Path) -> None:
    official_aux = {k: v for k, v in official_state.items()
                    if not k.startswith(('model.conv3x3_ocr', 'model.ocr_distri_head', 'model.cls_head'))}
    _one_line_error(official_aux, 'only the auxiliary head')
    mmseg_aux = {k: v for k, v in mmseg_state.items() if not k.startswith('decode_head.1.')}
    path = tmp_path / 'ocrnet_aux.pth'
    torch.save({'state_dict': mmseg_aux}, path)
    assert str(path) in _one_line_error(path, 'missing the OCRHead, decode_head.1')


def test_another_mmseg_cascade_is_refused(mmseg_state: dict) -> None:
    not_ocr = {k: v for k, v in mmseg_state.items() if 'object_context_block' not in k}
    _one_line_error(not_ocr, 'not OCRNet')


def test_official_ocr_read_as_mmseg_is_refused(official_state: dict) -> None:
    """Forcing mmseg's layout on official tensors (as a repo recording that layout would) is refused: the
    official head's conv biases do not exist in mmseg's OCRNet."""
    canonical = read_checkpoint(OFFICIAL).state_dict
    with pytest.raises(ValueError, match="read as mmseg's OCRNet, but its aux_head.0 / conv3x3_ocr.0 convs have"):
        read_architecture(canonical, SEGMENTATION, 'official file', MMSEG)


def test_mmseg_ocr_in_official_keys_needs_its_config(mmseg_state: dict) -> None:
    """The reverse: mmseg's OCRNet renamed to the official keys and loaded as an official file would resize as the
    official code does; without the config.json that says how it resizes, it is refused."""
    canonical, unmapped = to_canonical_keys(
        {k: v for k, v in mmseg_state.items()}, MMSEG)
    assert not unmapped
    _one_line_error(canonical, "without conv biases, as mmseg's OCRNet")


def test_a_dataset_of_another_class_count_is_named() -> None:
    """The class count is the tensors': a file of 19 classes asked to be PASCAL-Context (60) is an error naming
    it (as the official README's 60-class OCR row, which links a 59-class file, would be)."""
    with pytest.raises(ValueError, match=r"official_ocr_reduced.pth' has 19 classes .*'pascal_context' 60"):
        create_seg_model(OFFICIAL, dataset='pascal_context')
    assert create_seg_model(OFFICIAL, dataset='pascal_context', num_classes=60).num_classes == 60


def test_mismatched_class_counts_are_named(official_state: dict) -> None:
    other = dict(official_state)
    other['model.aux_head.3.weight'] = other['model.aux_head.3.weight'][:5]
    other['model.aux_head.3.bias'] = other['model.aux_head.3.bias'][:5]
    _one_line_error(other, 'the auxiliary head has 5 classes, the OCR head 19')


# --- fused inference and export ---

@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_fused_ocr_is_exact_and_pickles() -> None:
    model = create_seg_model(MMSEG_OCR)
    fused = optimize_for_inference(model)
    assert not [n for n, m in fused.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    x = fixture_input('250x330', 3)
    with torch.no_grad():
        expected = model(x)
        assert relative_diff(fused(x), expected) < 1e-5
        assert relative_diff(fused.to(memory_format=torch.channels_last)(x), expected) < 1e-5
        assert relative_diff(torch.jit.script(fused)(x), expected) < 1e-5
        assert relative_diff(pickle.loads(pickle.dumps(fused))(x), expected) < 1e-5
    with pytest.raises(RuntimeError, match='inference-only'):
        fused.train()


@pytest.mark.parametrize('fmt', ['onnx', 'openvino'])
def test_ocr_exports_with_dynamic_size(fmt: str, tmp_path: Path) -> None:
    """Checked in the runtime at the export size and at sizes that are no multiple of 32 (250x330, 97x161)."""
    pytest.importorskip('onnxruntime' if fmt == 'onnx' else 'openvino')
    from timm_hrnet.export import export
    report = export(create_seg_model(OFFICIAL), tmp_path / 'ocr', fmt, input_size=(128, 256))
    sizes = [c.size for c in report.checks]
    assert (128, 256) in sizes and (250, 330) in sizes
    assert max(c.max_rel_diff for c in report.checks) < 1e-4
    assert min(c.agreement for c in report.checks) > 0.999


# --- the command line: segment (folder) and evaluate-seg run the OCR logits ---

def test_segment_and_evaluate_seg_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    import numpy as np
    from PIL import Image

    from timm_hrnet.tools.cli import main
    rng = np.random.default_rng(0)
    for sub in ('images', 'labels'):
        (tmp_path / sub).mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / 'images' / f'{k}.png')
        Image.fromarray(rng.integers(0, 19, (40, 48)).astype(np.uint8), mode='L').save(tmp_path / 'labels' / f'{k}.png')
    out = tmp_path / 'out'
    assert main(['segment', str(tmp_path / 'images'), '--checkpoint', str(OFFICIAL), '--out', str(out)]) == 0
    capsys.readouterr()
    model = create_seg_model(OFFICIAL)
    labels = model.predict(Image.open(tmp_path / 'images' / '0.png'))['labels']
    saved = json.loads((out / '0.json').read_text())
    assert saved['classes'] and all(  # the OCR logits' label map, as predict gives it
        entry['fraction'] == pytest.approx((labels == entry['label']).float().mean().item(), abs=1e-5)
        for entry in saved['classes'])
    assert main(['evaluate-seg', '--checkpoint', str(MMSEG_OCR), '--images', str(tmp_path / 'images'), '--labels',
                 str(tmp_path / 'labels'), '--no-progress', '--scales', '0.75,1.0', '--flip', '--window', '32x32',
                 '--json']) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics['num_images'] == 2 and 0.0 <= metrics['mIoU'] <= 1.0
