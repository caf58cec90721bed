"""Pose codecs (timm_hrnet.tasks.pose_codecs): mmpose's DARK and UDP files load, and their keypoints equal mmpose's
(1.3.2's TopdownPoseEstimator.predict with the flip test, and 0.x's decoding functions), at 256x192 and 384x288;
the decoders, encoders and crop geometry against mmpose's own (tests/fixtures/openmmlab/make_mmpose_codec_ref.py);
codec specs and what contradicts a file are one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import openmmlab_fixture

from timm_hrnet.checkpoints import read_checkpoint
from timm_hrnet.tasks.pose import create_pose_model, crop_boxes
from timm_hrnet.tasks.pose_codecs import (
    DarkCodec,
    MMPoseCodec,
    OfficialCodec,
    UDPCodec,
    decode_heatmaps,
    gaussian_blur,
    parse_codec,
)

pytestmark = pytest.mark.usefixtures('single_torch_thread')
# measured max keypoint differences (px) when the fixtures were made are in tests/fixtures/openmmlab/README.md; the
# Newton step of DARK / UDP amplifies float32 rounding of the blur (OpenCV's float32 sums), hence not 0
PREDICT_TOLERANCE = 5e-3


def _cases() -> list[dict]:
    return json.loads(openmmlab_fixture('mmpose_codecs.json').read_text())['cases']


def _released_file(case: dict, tmp_path: Path, generation: int) -> Path:
    """The reduced network saved as mmpose releases a DARK / UDP file of this case: 1.x (head.*, mmengine's cfg
    text in the meta, v1 file name) or 0.x (keypoint_head.*, mmcv's config text, 0.x file name)."""
    raw = torch.load(openmmlab_fixture('mmpose_td-hm_hrnet_reduced.pth'), weights_only=True)
    (height, width), codec, kernel = case['input_size'], case['codec'], case['blur_kernel']
    if generation == 1:
        state_dict = raw['state_dict']
        kind = "type='UDPHeatmap'" if codec == 'udp' else "type='MSRAHeatmap', unbiased=True"
        stated = f', blur_kernel_size={kernel}' if kernel != 11 else ''  # mmpose 1.x configs leave the default
        meta = {'cfg': f"codec = dict({kind}, input_size=({width}, {height}), sigma={case['sigma']}{stated})\n"}
        name = f'td-hm_hrnet-w32_{codec}-8xb64-210e_coco-{height}x{width}-0e00bf12_20220914.pth'
    else:
        state_dict = {k.replace('head.', 'keypoint_head.', 1) if k.startswith('head.') else k: v
                      for k, v in raw['state_dict'].items()}
        test_cfg = (f"post_process='unbiased', shift_heatmap=True, modulate_kernel={kernel}" if codec == 'dark' else
                    f"post_process='default', shift_heatmap=False, target_type=target_type, modulate_kernel={kernel}, "
                    'use_udp=True')
        meta = {'config': f'model = dict(\n    test_cfg=dict(\n        flip_test=True,\n        {test_cfg}))\n'}
        name = f'hrnet_w32_coco_{height}x{width}_{codec}-aba0be42_20210220.pth'
    path = tmp_path / name
    torch.save({'meta': meta, 'state_dict': state_dict}, path)
    return path


@pytest.mark.parametrize('generation', [1, 0], ids=['mmpose1', 'mmpose0'])
@pytest.mark.parametrize('index', range(5), ids=['dark-256x192', 'dark-384x288-k11', 'dark-384x288-k17',
                                                 'udp-256x192', 'udp-384x288-k17'])
def test_dark_and_udp_files_give_mmposes_keypoints(index: int, generation: int, tmp_path: Path) -> None:
    """A released-style file loads with its codec (from the meta config: kernel and generation) and input size (from
    its name); the flip test and decoding give mmpose's keypoints and scores for the same crops and boxes."""
    case = _cases()[index]
    model = create_pose_model(_released_file(case, tmp_path, generation))
    codec = model.codec
    assert model.input_size == tuple(case['input_size'])
    assert isinstance(codec, DarkCodec if case['codec'] == 'dark' else UDPCodec)
    assert codec.kernel == case['blur_kernel'] and codec.shift_flip == case['shift_heatmap']
    if case['codec'] == 'udp':
        assert codec.mmpose0_blur == (generation == 0)
    crops = torch.randn(2, 3, *case['input_size'], generator=torch.Generator().manual_seed(case['seed']))
    with torch.no_grad():
        heatmaps = model.forward_flip(crops)
    keypoints, scores = decode_heatmaps(heatmaps, torch.tensor(case['centers']), torch.tensor(case['scales']),
                                        codec=codec)
    key = 'keypoints' if generation == 1 else 'mmpose0_keypoints'
    expected = torch.tensor(case[key])
    assert (keypoints - expected).abs().max().item() <= PREDICT_TOLERANCE
    expected_scores = torch.tensor(case['scores'] if generation == 1 else case['mmpose0_scores'])
    assert (scores - expected_scores).abs().max().item() <= 1e-5
    if case['codec'] == 'udp':  # the generations differ, by tens of pixels here: each file decodes by its own
        other = torch.tensor(case['mmpose0_keypoints' if generation == 1 else 'keypoints'])
        assert (keypoints - other).abs().max().item() > 1.0
    plain, _ = decode_heatmaps(heatmaps, torch.tensor(case['centers']), torch.tensor(case['scales']), codec='mmpose')
    assert (plain - expected).abs().max().item() > 0.1  # the plain rule would be wrong on these files


def test_predict_uses_the_codecs_crop_flip_and_decoding(tmp_path: Path) -> None:
    """`predict` on an image with a box is the codec's crop, the flip test without shift (UDP) and its decoding."""
    case = _cases()[3]
    model = create_pose_model(_released_file(case, tmp_path, 1))
    image = torch.rand(3, 200, 160, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[30.0, 20.0, 90.0, 150.0]])
    result = model.predict(image, box)
    centers, sizes = torch.tensor([[75.0, 95.0]]), torch.tensor([[150.0 * 1.25 * 0.75, 150.0 * 1.25]])
    crops = crop_boxes(image, centers, sizes, model.input_size, 'udp')
    with torch.no_grad():
        heatmaps = model.forward_flip(model.normalize(crops))
    keypoints, _ = decode_heatmaps(heatmaps, centers, sizes, codec=model.codec)
    assert torch.allclose(result['keypoints'], keypoints, atol=1e-4)


def _image_to_crop(center: torch.Tensor, origin: torch.Tensor, step: torch.Tensor) -> np.ndarray:
    """The (2, 3) matrix taking image points to crop pixels, from a codec's frame (crop = origin + (x - c) / step)."""
    scale, shift = 1 / step.numpy(), origin.numpy() - center.numpy() / step.numpy()
    return np.array([[scale[0], 0, shift[0]], [0, scale[1], shift[1]]])


@pytest.mark.parametrize('index', [0, 3], ids=['plain', 'udp'])
def test_crop_geometry_equals_mmposes_warp_matrix(index: int) -> None:
    """Crop pixel (u, v) maps to the image point mmpose's get_warp_matrix / get_udp_warp_matrix sends to it; the
    other rule's matrix differs."""
    case = _cases()[index]
    centers = torch.tensor(case['centers'], dtype=torch.float64)
    sizes = torch.tensor(case['scales'], dtype=torch.float64)
    for codec, same in (('udp', case['codec'] == 'udp'), ('official', case['codec'] != 'udp')):
        origin, step = parse_codec(codec).frame(sizes, tuple(case['input_size']))
        for center, box_step, matrix in zip(centers, step, case['warp_matrices']):
            close = np.allclose(_image_to_crop(center, origin, box_step), np.array(matrix), rtol=1e-5, atol=1e-4)
            assert close == same


# The UDP rules solve near-singular Hessians on these border peaks, which magnify float32 rounding that differs
# between CPUs (udp0_k5: within 1e-4 on an AVX-512 Xeon, 1.8e-4 off on AMD Zen 4); the rules differ by more than 10 px.
_DECODING_TOLERANCE = {'dark': 1e-5, 'dark0': 1e-5, 'udp': 1e-3, 'udp0': 1e-3}


@pytest.mark.parametrize('key', ['dark_k3', 'dark_k5', 'dark_k11', 'dark0_k3', 'dark0_k5', 'dark0_k11', 'udp_k3',
                                 'udp_k5', 'udp_k11', 'udp0_k3', 'udp0_k5'])
def test_decoders_equal_mmposes_on_border_peaks(key: str) -> None:
    """Peaks on every border, maps without a positive value: DARK (1.x and 0.x alike) and both UDP generations give
    mmpose's keypoints in heatmap pixels (refine_keypoints_dark / _dark_udp, 0.x's keypoints_from_heatmaps)."""
    reference = np.load(openmmlab_fixture('mmpose_codec_decoding.npz'))
    heatmaps = torch.from_numpy(np.load(openmmlab_fixture('mmpose_decoding.npz'))['heatmaps'].astype(np.float32))
    rule, kernel = key.split('_k')
    codec = parse_codec({'dark': 'dark', 'dark0': 'dark', 'udp': 'udp', 'udp0': 'udp-mmpose0'}[rule] + f':{kernel}')
    keypoints, _ = codec.locate(heatmaps)
    assert np.abs(keypoints.numpy() - reference[key]).max() <= _DECODING_TOLERANCE[rule]


def test_gaussian_blur_kernels_follow_opencv() -> None:
    """OpenCV's sigma-0 kernels: fixed ones up to 7, sigma 0.3 ((k - 1) / 2 - 1) + 0.8 above; zero or mirrored
    border; an impulse blurs into the kernel's outer product."""
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1
    blurred = gaussian_blur(impulse, 5)[0, 0, 8:13, 10]
    assert (blurred / 0.375).tolist() == pytest.approx([0.0625, 0.25, 0.375, 0.25, 0.0625])  # k[2] * k
    sigma = 0.3 * (8 - 1) + 0.8
    row = gaussian_blur(impulse, 17)[0, 0, 10]
    expected = np.exp(-(np.arange(21) - 10) ** 2 / (2 * sigma ** 2))
    assert (row / row[10])[2:19].numpy() == pytest.approx(expected[2:19], rel=1e-5)
    assert row[:2].abs().sum().item() == row[19:].abs().sum().item() == 0
    corner = torch.zeros(1, 1, 6, 6)
    corner[0, 0, 0, 0] = 1
    mirrored = gaussian_blur(corner, 3, border='reflect101')[0, 0]
    assert mirrored[0, 0].item() == pytest.approx(0.25) and mirrored.sum().item() == pytest.approx(9 / 16)


@pytest.mark.parametrize('name', ['dark', 'udp'])
def test_encoders_equal_mmposes_targets(name: str) -> None:
    """DARK's unrounded Gaussians and UDP's cut ones, joints inside, on the border and outside: mmpose's targets
    and weights."""
    reference = np.load(openmmlab_fixture('mmpose_codec_decoding.npz'))
    codec = parse_codec(name)
    scale = codec.heatmap_scale((64, 48), (16, 12))
    target, weights = codec.encode(reference['encode_joints'], reference['encode_visible'], (16, 12), scale, 2.0)
    np.testing.assert_allclose(target, reference[f'encode_{name}'], atol=1e-6)
    assert weights[:, 0].tolist() == reference[f'encode_{name}_weights'].tolist()


@pytest.mark.parametrize('spec, expected', [
    ('official', OfficialCodec()), ('MMPose', MMPoseCodec()), ('dark', DarkCodec()), ('dark:17', DarkCodec(17)),
    ('udp', UDPCodec()), ('udp-mmpose0:17', UDPCodec(17, True)), ('udp-mmpose1', UDPCodec(None, False)),
])
def test_codec_specs_round_trip(spec: str, expected: object) -> None:
    codec = parse_codec(spec)
    assert codec == expected and parse_codec(codec.spec) == codec


@pytest.mark.parametrize('spec, message', [
    ('dark:16', 'the blur kernel size must be a positive odd integer, got 16'),
    ('udp:x', 'the blur kernel size must be a positive odd integer'),
    ('official:3', 'official has no blur kernel'),
    ('simcc', 'codec must be one of official, mmpose, dark, udp'),
])
def test_bad_codec_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_codec(spec)
    assert '\n' not in str(info.value)


def test_a_codec_contradicting_the_file_is_a_one_line_error(tmp_path: Path) -> None:
    """DARK asked of a UDP file, or another blur kernel than its config states: refused naming both; a request
    that only completes what the file says, or any request for a file that says nothing, is taken."""
    dark17 = _released_file(_cases()[2], tmp_path, 0)
    assert read_checkpoint(dark17).codec == 'dark:17'
    for wrong, found in (('udp', 'dark:17'), ('dark:11', 'dark:17'), ('official', 'dark:17')):
        with pytest.raises(ValueError, match=f'is a {found} heatmap checkpoint .*codec {wrong} ') as info:
            create_pose_model(dark17, codec=wrong)
        assert '\n' not in str(info.value) and dark17.name in str(info.value)
    assert create_pose_model(dark17, codec='dark').codec == DarkCodec(17)
    udp = _released_file(_cases()[3], tmp_path, 0)
    with pytest.raises(ValueError, match='is a udp-mmpose0:11 heatmap checkpoint .*codec dark does not fit it'):
        create_pose_model(udp, codec='dark')
    plain = openmmlab_fixture('mmpose_td-hm_hrnet_reduced.pth')
    assert read_checkpoint(plain).codec_evidence is None
    assert create_pose_model(plain, codec='udp:17').codec == UDPCodec(17)
