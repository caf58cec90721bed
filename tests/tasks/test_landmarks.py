"""HRNetV2 face and hand landmark models (mmpose 1.x / 0.x, HRNet-Facial-Landmark-Detection) against outputs made
by running their own code (tests/fixtures/landmarks/README.md)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_data import make_pose_data

from timm_hrnet import optimize_for_inference
from timm_hrnet.tasks.datasets import COCO_KEYPOINTS, keypoints_for
from timm_hrnet.tasks.pose import create_pose_model, flip_order
from timm_hrnet.tasks.pose_codecs import decode_heatmaps
from timm_hrnet.tasks.training.pose_training import train_pose

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'landmarks'
MMPOSE_FILES = ('mmpose1_face_wflw_reduced', 'mmpose0_hand_onehand10k_reduced')
OFFICIAL = 'official_face_300w_reduced'


def _reference(name: str) -> dict:
    return torch.load(FIXTURES / f'{name}_reference.pt', weights_only=True)


def _inputs(reference: dict, size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(reference['seed']))


@pytest.mark.parametrize('name', [*MMPOSE_FILES, OFFICIAL])
def test_heatmaps_equal_reference(name):
    model = create_pose_model(FIXTURES / f'{name}.pth')
    reference = _reference(name)
    assert model.head_type == 'hrnetv2' and model.spec.upsample == 'bilinear'
    sizes = (256, 250) if name == OFFICIAL else (256,)  # mmpose's exchange units only run at multiples of 32
    for size in sizes:
        with torch.no_grad():
            heatmaps = model(_inputs(reference, size))[:, reference['channels']]
        expected = reference['heatmaps'] if name != OFFICIAL else reference[f'heatmaps_{size}']
        assert heatmaps.shape == expected.shape
        torch.testing.assert_close(heatmaps, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('name', MMPOSE_FILES)
def test_mmpose_flip_test_keypoints_equal_mmpose(name):
    """mmpose's TopdownPoseEstimator.predict (flip test, shift_heatmap, MSRAHeatmap) against the model's flip test
    and codec, with the keypoint set's flip pairs."""
    model = create_pose_model(FIXTURES / f'{name}.pth')
    reference = _reference(name)
    assert model.codec.spec == 'mmpose'
    assert flip_order(model.num_joints, model.keypoint_info.flip_pairs) == list(reference['flip_indices'])
    with torch.no_grad():
        heatmaps = model.forward_flip(_inputs(reference, 256))
    sizes = reference['box_sizes'][:, None].expand(-1, 2)
    keypoints, scores = decode_heatmaps(heatmaps, reference['centers'], sizes, True, model.codec)
    torch.testing.assert_close(keypoints, reference['keypoints'], atol=1e-3, rtol=0)
    torch.testing.assert_close(scores, reference['scores'], atol=1e-5, rtol=1e-4)


def test_official_face_decode_equals_decode_preds():
    """The official test's decode_preds (1-based argmax, quarter shift, + 0.5, integer transform_pixel)."""
    model = create_pose_model(FIXTURES / f'{OFFICIAL}.pth')
    reference = _reference(OFFICIAL)
    assert model.codec.spec == 'official-face' and not model.codec.flip_test_default
    with torch.no_grad():
        heatmaps = model(_inputs(reference, 256))
    sizes = (reference['scales'] * 200)[:, None].expand(-1, 2)
    keypoints, _ = decode_heatmaps(heatmaps, reference['centers'], sizes, True, model.codec)
    assert torch.equal(keypoints, reference['keypoints'])


def test_keypoint_sets_by_landmark_count():
    assert [keypoints_for(n).name for n in (98, 68, 29, 19, 21)] == ['wflw', '300w', 'cofw', 'aflw', 'hand']
    for count in (98, 68, 29, 19):  # mirroring twice gives every landmark back
        order = flip_order(count, keypoints_for(count).flip_pairs)
        assert [order[j] for j in order] == list(range(count)) and order != list(range(count))


def test_face_model_with_body_keypoints_is_one_line_error():
    with pytest.raises(ValueError, match=r"keypoint set 'coco' has 17 joints, the model 98") as error:
        create_pose_model(FIXTURES / 'mmpose1_face_wflw_reduced.pth', keypoint_info=COCO_KEYPOINTS)
    assert '\n' not in str(error.value)


def test_longer_mmpose_head_is_refused_by_name():
    """A 0.x head with two convs before the heatmaps (keypoint_head.final_layer.3 then a 1x1 conv, .6 the heatmap
    conv) is not the landmark head: refused, naming the extra layers, instead of loading as a different network."""
    state_dict = torch.load(FIXTURES / 'mmpose0_hand_onehand10k_reduced.pth', weights_only=True)['state_dict']
    state_dict = dict(state_dict)
    state_dict['keypoint_head.final_layer.6.weight'] = state_dict['keypoint_head.final_layer.3.weight']
    with pytest.raises(ValueError, match=r'keypoint_head\.final_layer\.6\.\*.*one 1x1 conv \+ BN \+ ReLU'):
        create_pose_model(state_dict)


def test_predict_draws_face_in_a_box():
    model = create_pose_model(FIXTURES / 'mmpose1_face_wflw_reduced.pth', input_size=(64, 64))
    image = torch.rand(3, 80, 96)
    result = model.predict(image, boxes=[[10, 8, 50, 60]])
    assert result['keypoints'].shape == (1, 98, 2) and result['keypoint_names'][0] == 'wflw_0'


def test_fused_and_scripted_landmark_model_equal_eager():
    model = create_pose_model(FIXTURES / f'{OFFICIAL}.pth')
    fused = optimize_for_inference(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.jit.script(fused)(x), expected, atol=1e-4, rtol=1e-4)


def test_train_pose_fine_tunes_a_landmark_checkpoint(tmp_path):
    """Another landmark count: the heatmap conv head.3 re-initialised, the rest loaded and trained; the result
    reloads as the same HRNetV2 landmark model."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=2)
    source = FIXTURES / 'mmpose0_hand_onehand10k_reduced.pth'
    initial = create_pose_model(source, num_joints=5)
    result = train_pose(ann_file, images, keypoints=keypoints, init=source, input_size=(64, 64), epochs=1,
                        batch_size=2, workers=0, progress=False, tensorboard=False, output_dir=str(tmp_path / 'run'))
    trained = create_pose_model(result.output_dir / 'model.safetensors')
    assert trained.head_type == 'hrnetv2' and trained.num_joints == 5 and trained.input_size == (64, 64)
    assert not torch.equal(trained.head[0].weight, initial.head[0].weight)  # trained, not only the new conv
    torch.testing.assert_close(initial.conv1.weight, create_pose_model(source).conv1.weight)


@pytest.mark.parametrize(('file_name', 'codec'), [
    ('hrnetv2_w18_wflw_256x256_dark-3f8e0c2c_20210125.pth', 'dark'),
    ('hrnetv2_w18_onehand10k_256x256_udp-0d1b515d_20210330.pth', 'udp-mmpose0'),
])
def test_landmark_codec_from_released_file_name(tmp_path, file_name, codec):
    """mmpose's DARK / UDP landmark files (0.x layout) decode by their codec, found from the name."""
    source = 'mmpose1_face_wflw_reduced' if 'wflw' in file_name else 'mmpose0_hand_onehand10k_reduced'
    path = tmp_path / file_name
    path.write_bytes((FIXTURES / f'{source}.pth').read_bytes())
    model = create_pose_model(path)
    assert model.codec.spec.split(':')[0] == codec and model.input_size == (256, 256)
