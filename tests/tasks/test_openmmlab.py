"""OpenMMLab checkpoints compute what OpenMMLab computes: mmpose 1.3.2 top-down heatmap HRNet (1.x and 0.x key
layouts) and mmsegmentation 1.2.2 HRNet + FCNHead, against outputs of that code (tests/fixtures/openmmlab, made by
make_openmmlab_ref.py there: full depth, reduced widths, float16 weights, random BatchNorm statistics)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import OPENMMLAB_FIXTURES, openmmlab_fixture

from timm_hrnet.checkpoints import MMPOSE, MMSEG, read_checkpoint
from timm_hrnet.convert import CheckpointMismatchError
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tasks.segmentation import create_seg_model

FIXTURES = OPENMMLAB_FIXTURES
POSE = FIXTURES / 'mmpose_td-hm_hrnet_reduced.pth'
SEG = FIXTURES / 'mmseg_fcn_hr_reduced.pth'
pytestmark = pytest.mark.usefixtures('single_torch_thread')


def fixture(path: Path) -> Path:
    return openmmlab_fixture(path.name)


def reference(path: Path) -> dict:
    return torch.load(path.with_name(f'{path.stem}_reference.pt'), weights_only=True)


def pose_input(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, 256, 192, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('as_url', [False, True], ids=['path', 'file_url'])
def test_mmpose_1x_checkpoint_reproduces_mmpose(as_url: bool) -> None:
    path = fixture(POSE)
    model = create_pose_model(path.as_uri() if as_url else path)
    expected = reference(path)
    with torch.no_grad():
        heatmaps = model(pose_input(expected['seed']))
    assert heatmaps.shape == expected['heatmaps'].shape
    assert (heatmaps - expected['heatmaps']).abs().max().item() <= 1e-4


def test_mmpose_0x_layout_reproduces_mmpose() -> None:
    """mmpose 0.x names the head `keypoint_head.final_layer`; same network, same numbers."""
    path = fixture(POSE)
    state_dict = torch.load(path, weights_only=True)['state_dict']
    old = {k.replace('head.final_layer.', 'keypoint_head.final_layer.'): v for k, v in state_dict.items()}
    loaded = read_checkpoint(old)
    assert loaded.layout.name == MMPOSE
    model = create_pose_model(loaded)
    expected = reference(path)
    with torch.no_grad():
        heatmaps = model(pose_input(expected['seed']))
    assert (heatmaps - expected['heatmaps']).abs().max().item() <= 1e-4


@pytest.mark.parametrize('size', ['512x1024', '250x330'])
def test_mmseg_checkpoint_reproduces_mmseg(size: str) -> None:
    """The two-step resize of mmseg's exchange units and its bias-free head conv, also at a size that is not a
    multiple of 32 (where one resize would give other numbers)."""
    path = fixture(SEG)
    loaded = read_checkpoint(path)
    assert loaded.layout.name == MMSEG and loaded.class_names[:2] == ('road', 'sidewalk')
    model = create_seg_model(loaded)
    assert model.class_names == loaded.class_names and model.align_corners is False
    expected = reference(path)[size]
    height, width = (int(v) for v in size.split('x'))
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(expected['seed']))
    with torch.no_grad():
        logits = model(x)
    assert tuple(logits.shape) == tuple(expected['shape'])
    step = expected['step']
    assert (logits[..., ::step, ::step] - expected['sampled']).abs().max().item() <= 1e-4
    assert logits.double().sum().item() == pytest.approx(expected['sum'], rel=1e-5, abs=1e-2)
    assert logits.double().abs().sum().item() == pytest.approx(expected['abs_sum'], rel=1e-6)


def test_mmseg_align_corners_cannot_be_overridden() -> None:
    with pytest.raises(ValueError, match='align_corners=False throughout'):
        create_seg_model(fixture(SEG), align_corners=True)


def test_a_cascade_other_than_ocrnet_is_refused_by_name() -> None:
    """Two FCNHeads in a cascade: not OCRNet (tests/tasks/test_ocr.py loads that), refused rather than renamed."""
    state_dict = torch.load(fixture(SEG), weights_only=True)['state_dict']
    cascade = {k.replace('decode_head.', 'decode_head.1.'): v for k, v in state_dict.items()}
    cascade.update({k.replace('decode_head.', 'decode_head.0.'): v for k, v in state_dict.items() if 'decode' in k})
    with pytest.raises(ValueError, match='not OCRNet'):
        create_seg_model(cascade)


def test_a_key_from_another_network_is_named() -> None:
    state_dict = torch.load(fixture(POSE), weights_only=True)['state_dict']
    state_dict['backbone.stage4.0.extra_conv.weight'] = torch.zeros(1)
    with pytest.raises((CheckpointMismatchError, ValueError), match='extra_conv'):
        create_pose_model(state_dict)


def test_mmpose_checkpoints_decode_as_mmpose(tmp_path: Path) -> None:
    """Both mmpose layouts get mmpose 1.x's decoding rule; it survives our own files (config.json beside the
    converted weights, as train_pose and hub_upload write it)."""
    path = fixture(POSE)
    model = create_pose_model(path)
    assert model.codec.spec == 'mmpose' and read_checkpoint(path).codec == 'mmpose'
    state_dict = torch.load(path, weights_only=True)['state_dict']
    old = {k.replace('head.final_layer.', 'keypoint_head.final_layer.'): v for k, v in state_dict.items()}
    assert create_pose_model(old).codec.spec == 'mmpose'
    folder = tmp_path / 'repo'
    folder.mkdir()
    safetensors.torch.save_file(model.state_dict(), str(folder / 'model.safetensors'))  # the official keys
    assert create_pose_model(folder / 'model.safetensors').codec.spec == 'official'  # nothing says otherwise
    (folder / 'config.json').write_text(json.dumps(model.task_config()))
    again = create_pose_model(folder / 'model.safetensors')
    assert again.codec.spec == 'mmpose' and again.task_config() == model.task_config()


UDP_1X = 'td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192-73ede547_20220914.pth'
DARK_1X = 'td-hm_hrnet-w32_dark-8xb64-210e_coco-256x192-0e00bf12_20220914.pth'
DARK_0X = 'hrnet_w32_coco_256x192_dark-07f147eb_20200812.pth'


@pytest.mark.parametrize('name, codec', [(UDP_1X, 'udp'), (DARK_1X, 'dark'), (DARK_0X, 'dark')])
def test_udp_and_dark_checkpoints_are_known_by_name(name: str, codec: str, tmp_path: Path) -> None:
    """mmpose's DARK / UDP files have the plain model's tensors: their name tells the codec (the blur kernel stays
    mmpose's default, the config is not there to say otherwise)."""
    path = tmp_path / name
    path.write_bytes(fixture(POSE).read_bytes())
    loaded = read_checkpoint(path)
    assert (loaded.codec, loaded.codec_evidence) == (codec, f'its file name says {codec}')
    assert create_pose_model(path).codec.spec == codec


@pytest.mark.parametrize('config, codec', [
    ("codec = dict(type='UDPHeatmap', input_size=(192, 256), heatmap_size=(48, 64), sigma=2)", 'udp-mmpose1:11'),
    ("codec = dict(\n    type='MSRAHeatmap', sigma=2, unbiased=True)", 'dark:11'),
    ("codec = dict(type='MSRAHeatmap', sigma=3, unbiased=True, blur_kernel_size=17)", 'dark:17'),
    ({'model': {'test_cfg': {'flip_test': True, 'post_process': 'unbiased', 'modulate_kernel': 17}}}, 'dark:17'),
    ("test_cfg=dict(flip_test=True, post_process='default', shift_heatmap=False, use_udp=True)", 'udp-mmpose0:11'),
])
def test_udp_and_dark_checkpoints_are_known_by_meta(config: object, codec: str, tmp_path: Path) -> None:
    """The config mmengine (cfg) or mmcv (config) keeps in the meta names the codec and its blur kernel (mmpose's
    default 11 where it states none); the file name is plain."""
    state_dict = torch.load(fixture(POSE), weights_only=True)['state_dict']
    path = tmp_path / 'best_coco_AP_epoch_210.pth'
    torch.save({'meta': {'cfg' if isinstance(config, str) else 'config': config}, 'state_dict': state_dict}, path)
    loaded = read_checkpoint(path)
    assert loaded.codec == codec and loaded.codec_evidence.startswith('its meta config has ')
    assert create_pose_model(path).codec.spec == codec
    plain = "codec = dict(type='MSRAHeatmap', input_size=(192, 256), heatmap_size=(48, 64), sigma=2)"
    torch.save({'meta': {'cfg': plain}, 'state_dict': state_dict}, path)
    assert create_pose_model(path).codec.spec == 'mmpose'


def test_udp_combined_targets_are_refused(tmp_path: Path) -> None:
    """mmpose's udp-regress files predict three maps per joint (a heatmap and two offsets): not decoded."""
    path = tmp_path / 'td-hm_hrnet-w32_udp-regress-8xb64-210e_coco-256x192-9c0b77b4_20220926.pth'
    path.write_bytes(fixture(POSE).read_bytes())
    with pytest.raises(ValueError, match='UDP checkpoint with combined targets') as info:
        create_pose_model(path)
    assert '\n' not in str(info.value)


def test_mmseg_0x_class_names_from_meta_classes(tmp_path: Path) -> None:
    """mmseg 0.x (mmcv's save_checkpoint) keeps the class names in meta['CLASSES'], 1.x in meta.dataset_meta."""
    raw = torch.load(fixture(SEG), weights_only=True)
    names = raw['meta']['dataset_meta']['classes']
    path = tmp_path / 'fcn_hr18_512x1024_40k_cityscapes_20200601_014216-f196fb4e.pth'
    torch.save({'meta': {'CLASSES': names, 'PALETTE': [[128, 64, 128]] * len(names), 'mmseg_version': '0.30.0'},
                'state_dict': raw['state_dict']}, path)
    loaded = read_checkpoint(path)
    assert loaded.class_names == tuple(names)
    assert create_seg_model(loaded).class_names == tuple(names)
    torch.save({'meta': {'CLASSES': None}, 'state_dict': raw['state_dict']}, path)
    assert read_checkpoint(path).class_names is None
