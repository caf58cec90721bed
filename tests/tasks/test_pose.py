"""Pose models: the official pose_hrnet checkpoints load and compute what the official code computed, the released
W32 / W48 layouts match, and heatmap decoding, flip test, cropping and `predict` follow the official evaluation."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import assert_checkpointing_exact, openmmlab_fixture, relative_diff
from PIL import Image
from reference_sources import REFERENCE_SOURCES, ReferenceRun, reference_run
from task_reference import official_extra, official_forward, official_shapes, random_checkpoint, tiny_extra

from timm_hrnet import VARIANTS, HRNetPose, create_pose_model, optimize_for_inference
from timm_hrnet.checkpoints import POSE, read_architecture
from timm_hrnet.convert import CheckpointMismatchError
from timm_hrnet.hrnet import HRNetTrunk
from timm_hrnet.tasks import pose as pose_module
from timm_hrnet.tasks.datasets import COCO_KEYPOINTS, KeypointInfo
from timm_hrnet.tasks.pose import box_to_center_size, crop_boxes, decode_heatmaps, flip_back, get_max_preds

pytestmark = pytest.mark.usefixtures('single_torch_thread')

TOLERANCE = 1e-4  # relative max difference the issue allows; float32 rounding gives ~1e-7


@pytest.fixture(scope='module', params=REFERENCE_SOURCES)
def official(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """A reduced pose_hrnet checkpoint and the heatmaps the official code computed with it at 256x192."""
    return reference_run(request.param, 'pose', tmp_path_factory.mktemp('pose_official'))


@pytest.fixture(scope='module')
def official_model(official: ReferenceRun) -> HRNetPose:
    return create_pose_model(official.checkpoint)


@pytest.fixture(scope='module')
def tiny_checkpoint() -> dict[str, torch.Tensor]:
    return random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17))


def test_official_fixture_reproduced(official: ReferenceRun, official_model: HRNetPose) -> None:
    assert not official_model.training and not official_model.spec.multi_scale_output
    assert (official_model.num_joints, official_model.final_conv_kernel, official_model.in_chans) == (17, 1, 3)
    with torch.no_grad():
        heatmaps = official_model(official.input)
        branches = HRNetTrunk.forward(official_model, official.input)
    assert heatmaps.shape == (1, 17, 64, 48)
    assert len(branches) == 1  # the last module outputs the stride-4 branch only
    assert official.diff('output', heatmaps) <= TOLERANCE
    assert max(official.branch_diffs(branches)) <= TOLERANCE


def test_state_dict_is_the_official_layout(official: ReferenceRun, official_model: HRNetPose) -> None:
    official_keys = {k: tuple(v.shape) for k, v in torch.load(official.checkpoint, weights_only=True).items()}
    ours = {k: tuple(v.shape) for k, v in official_model.state_dict().items()}
    assert ours == official_keys == official_shapes(official.meta['extra'], 'pose', 17)


def test_reference_oracle_reproduces_fixture(official: ReferenceRun) -> None:
    """The oracle that stands in for the official code below is itself checked against the official output."""
    sd = {k: v.float() for k, v in torch.load(official.checkpoint, weights_only=True).items()}
    out = official_forward(sd, official.meta['extra'], 'pose', official.input)
    assert official.diff('output', out) <= TOLERANCE


@pytest.mark.parametrize('width', [32, 48])
def test_released_configurations(width: int) -> None:
    """pose_hrnet_w32/w48 (256x192 and 384x288 share the tensors): keys, shapes and the architecture read back."""
    shapes = official_shapes(official_extra(width, seg=False), 'pose', 17)
    meta_checkpoint = {k: torch.empty(s, device='meta') for k, s in shapes.items()}
    arch = read_architecture(meta_checkpoint, POSE)
    assert arch.spec == dataclasses.replace(VARIANTS[f'hrnet_w{width}'], multi_scale_output=False)
    assert (arch.in_chans, arch.num_outputs, arch.final_conv_kernel) == (3, 17, 1)
    model = HRNetPose(arch.spec, device='meta')
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    official_params = {32: 28.5, 48: 63.6}[width]  # the official README's #Params
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(official_params, abs=0.05)


def test_released_w32_matches_reference_numerically() -> None:
    shapes = official_shapes(official_extra(32, seg=False), 'pose', 17)
    sd = random_checkpoint(shapes, seed=3)
    model = create_pose_model(sd)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_diff(model(x), official_forward(sd, official_extra(32, seg=False), 'pose', x)) <= TOLERANCE


def test_checkpoint_wrappers_and_old_checkpoints(tiny_checkpoint: dict, tmp_path: Path) -> None:
    """DDP prefixes and {'state_dict': ...} wrappers load; BatchNorm counters absent from old files are filled;
    what we save (safetensors) loads back."""
    reference = create_pose_model(tiny_checkpoint)
    stripped = {f'module.{k}': v.half() for k, v in tiny_checkpoint.items() if not k.endswith('num_batches_tracked')}
    model = create_pose_model({'state_dict': stripped, 'epoch': torch.tensor(3)})
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert relative_diff(model(x), reference(x)) < 1e-2  # float16-rounded weights
    safetensors.torch.save_file(reference.state_dict(), str(tmp_path / 'model.safetensors'))
    reloaded = create_pose_model(tmp_path / 'model.safetensors')
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), reference.state_dict().values()))


def test_fine_tuning_head(tiny_checkpoint: dict) -> None:
    model = create_pose_model(tiny_checkpoint, num_joints=5)
    assert model.final_layer.out_channels == 5 and model.keypoint_info is None
    assert torch.equal(model.conv1.weight, tiny_checkpoint['conv1.weight'])
    assert model.final_layer.weight.std() < 0.01 and not model.final_layer.bias.any()  # the official head init


def test_wrong_checkpoints_are_named() -> None:
    classifier = {k: torch.empty(0) for k in ('conv1.weight', 'incre_modules.0.0.conv1.weight', 'classifier.weight')}
    with pytest.raises(ValueError, match=r'classification checkpoint.*timm.create_model'):
        create_pose_model(classifier)
    seg = random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19))
    with pytest.raises(ValueError, match='segmentation checkpoint.*create_seg_model'):
        create_pose_model(seg)
    with pytest.raises(ValueError, match='not an HRNet (pose or segmentation )?checkpoint'):
        create_pose_model({'fc.weight': torch.zeros(2, 2)})
    with pytest.raises(ValueError, match='conv1.weight has shape'):  # mmpose's layout, read as such, named
        create_pose_model({'backbone.conv1.weight': torch.zeros(1), 'head.final_layer.weight': torch.zeros(1)})


def test_mismatching_tensors_are_listed(tiny_checkpoint: dict) -> None:
    broken = dict(tiny_checkpoint)
    del broken['stage3.0.fuse_layers.2.0.0.0.weight']
    broken['transition1.0.1.running_var'] = torch.ones(3)
    with pytest.raises(CheckpointMismatchError) as info:
        create_pose_model(broken)
    assert info.value.missing == ['stage3.0.fuse_layers.2.0.0.0.weight']
    assert list(info.value.mismatched) == ['transition1.0.1.running_var']


def test_input_size_from_file_name(tiny_checkpoint: dict, tmp_path: Path) -> None:
    path = tmp_path / 'pose_hrnet_tiny_384x288.pth'
    torch.save(tiny_checkpoint, path)
    assert create_pose_model(path).input_size == (384, 288)
    assert create_pose_model(path, input_size=(64, 48)).input_size == (64, 48)
    assert create_pose_model(tiny_checkpoint).input_size == (256, 192)


def test_box_to_center_size_matches_official_rule() -> None:
    centers, sizes = box_to_center_size(torch.tensor([[10.0, 20.0, 30.0, 100.0], [0.0, 0.0, 300.0, 100.0]]), 0.75)
    assert centers.tolist() == [[25.0, 70.0], [150.0, 50.0]]
    assert sizes.tolist() == [[75 * 1.25, 100 * 1.25], [300 * 1.25, 400 * 1.25]]  # widened / heightened to 3:4


def test_crop_is_the_official_affine_warp() -> None:
    """Output pixel (u, v) samples centre + ((u, v) - size / 2) * box_width / output_width."""
    image = torch.zeros(1, 40, 30)
    image[0, 12, 10] = 1.0
    centers, sizes = torch.tensor([[20.0, 27.0]]), torch.tensor([[48.0, 64.0]])  # one image pixel per output pixel
    crop = crop_boxes(image, centers, sizes, (64, 48))
    assert crop.shape == (1, 1, 64, 48)
    assert crop[0, 0, 12 - 27 + 32, 10 - 20 + 24] == 1.0 and crop.sum() == 1.0
    coarse = crop_boxes(image, centers, sizes * 1.5, (64, 48))  # 1.5 pixels per output pixel: bilinear samples
    assert coarse[0, 0, 22, 17] == 0.5  # samples x = 20 + (17 - 24) * 1.5 = 9.5, y = 27 + (22 - 32) * 1.5 = 12


def test_max_preds_and_quarter_pixel_shift() -> None:
    heatmaps = torch.zeros(1, 3, 8, 6)
    heatmaps[0, 0, 4, 3] = 1.0
    heatmaps[0, 0, 4, 4], heatmaps[0, 0, 4, 2] = 0.5, 0.2  # larger right neighbour: +0.25 in x
    heatmaps[0, 0, 3, 3], heatmaps[0, 0, 5, 3] = 0.4, 0.1  # larger upper neighbour: -0.25 in y
    heatmaps[0, 1] = -1.0  # no positive response: (0, 0), as the official code masks it
    heatmaps[0, 2, 4, 1], heatmaps[0, 2, 4, 2] = 1.0, 0.5  # x = 1 is not inside 1 < x < w - 1: no shift
    coords, maxvals = get_max_preds(heatmaps)
    assert coords.tolist() == [[[3.0, 4.0], [0.0, 0.0], [1.0, 4.0]]]
    assert maxvals.tolist() == [[1.0, -1.0, 1.0]]
    identity_centers, identity_sizes = torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])  # heatmap = image
    keypoints, scores = decode_heatmaps(heatmaps, identity_centers, identity_sizes)
    assert keypoints.tolist() == [[[3.25, 3.75], [0.0, 0.0], [1.0, 4.0]]]
    plain, _ = decode_heatmaps(heatmaps, identity_centers, identity_sizes, post_process=False)
    assert plain.tolist() == coords.tolist()
    moved, _ = decode_heatmaps(heatmaps, torch.tensor([[100.0, 50.0]]), torch.tensor([[60.0, 80.0]]))
    assert moved[0, 0].tolist() == [100.0 + (3.25 - 3) * 10, 50.0 + (3.75 - 4) * 10]  # scale from the box width


def test_flip_test_is_the_official_one(tiny_checkpoint: dict) -> None:
    model = create_pose_model(tiny_checkpoint)
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        flipped = model(x.flip(3)).flip(3)
        for a, b in COCO_KEYPOINTS.flip_pairs:
            flipped[:, [a, b]] = flipped[:, [b, a]]
        flipped[:, :, :, 1:] = flipped.clone()[:, :, :, 0:-1]
        assert torch.allclose(model.forward_flip(x), (model(x) + flipped) * 0.5)
    swapped = flip_back(torch.arange(4.0).view(1, 2, 1, 2), [(0, 1)])
    assert torch.equal(swapped, torch.tensor([[[[3.0, 2.0]], [[1.0, 0.0]]]]))


def test_predict(tiny_checkpoint: dict) -> None:
    model = create_pose_model(tiny_checkpoint, input_size=(64, 48))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8))
    result = model.predict(image, boxes=[[5, 5, 40, 60], [20, 10, 30, 50]])
    assert result['keypoints'].shape == (2, 17, 2) and result['scores'].shape == (2, 17)
    assert result['keypoint_names'] == COCO_KEYPOINTS.keypoint_names
    whole = model.predict(image, flip_test=False)  # default box: the whole image
    assert whole['boxes'].tolist() == [[0.0, 0.0, 70.0, 90.0]]
    tensor_input = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert torch.equal(model.predict(tensor_input, flip_test=False)['keypoints'], whole['keypoints'])
    for mode in ('L', 'RGBA', 'P'):  # greyscale, alpha and palette images become RGB for a 3-channel model
        assert model.predict(image.convert(mode), flip_test=False)['keypoints'].shape == (1, 17, 2)
    with pytest.raises(ValueError, match='3-channel images, got a tensor with 4 channels'):
        model.predict(torch.rand(4, 60, 50))
    with pytest.raises(ValueError, match='positive width and height'):
        model.predict(image, boxes=[[0, 0, 0, 10]])
    with pytest.raises(ValueError, match=r'\(P, 4\)'):
        model.predict(image, boxes=[[0, 0, 10]])


def test_other_channel_counts() -> None:
    grey = random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 16, in_chans=1))
    model = create_pose_model(grey, input_size=(64, 64))
    assert model.in_chans == 1 and model.keypoint_info.name == 'mpii'
    assert model.predict(Image.new('RGB', (50, 40)))['keypoints'].shape == (1, 16, 2)  # RGB -> greyscale
    four = random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 3, in_chans=4))
    model = create_pose_model(four, input_size=(64, 48))
    with pytest.raises(ValueError, match=r'4-channel inputs: pass a \(4, H, W\) tensor'):
        model.predict(Image.new('RGB', (50, 40)))
    with pytest.raises(ValueError, match='no flip pairs known for 3 joints'):
        model.predict(torch.rand(4, 40, 50), flip_test=True)
    info = KeypointInfo('mine', ('a', 'b', 'c'), ((0, 2),), ((0, 1),))
    model.keypoint_info = info
    assert model.predict(torch.rand(4, 40, 50))['keypoint_names'] == ('a', 'b', 'c')
    with pytest.raises(ValueError, match='expects 4 input channels'):
        model(torch.rand(1, 3, 64, 48))


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_optimize_for_inference() -> None:
    shapes = official_shapes(tiny_extra(seg=False, final_conv_kernel=3), 'pose', 17)
    model = create_pose_model(random_checkpoint(shapes))
    assert model.final_conv_kernel == 3
    fused = optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = model(x)
        assert relative_diff(fused(x), expected) < 1e-5
        assert relative_diff(torch.jit.script(fused)(x), expected) < 1e-5
    assert type(fused).__name__ == 'InferenceOnlyHRNetPose'
    with pytest.raises(RuntimeError, match='inference-only'):
        fused.train()


@pytest.mark.parametrize('selective', [False, True], ids=['full', 'selective'])
def test_gradient_checkpointing_is_exact(tiny_checkpoint: dict, selective: bool) -> None:
    """The pose trunk ends in a single-output module; checkpointing it changes nothing but memory."""
    assert_checkpointing_exact(create_pose_model(tiny_checkpoint), torch.randn(2, 3, 64, 48), selective)


def test_training_step_and_task_config(tiny_checkpoint: dict) -> None:
    model = create_pose_model(tiny_checkpoint).train()
    model.set_grad_checkpointing()
    loss = model(torch.randn(2, 3, 64, 48)).square().mean()
    loss.backward()
    assert model.conv1.weight.grad is not None and model.final_layer.weight.grad.abs().sum() > 0
    config = json.loads(json.dumps(model.task_config()))
    assert config['task'] == 'pose' and config['num_joints'] == 17 and config['input_size'] == [3, 256, 192]
    assert config['flip_pairs'][0] == [1, 2] and config['architecture']['multi_scale_output'] is False


def _identity_decode(heatmaps: torch.Tensor, codec: str) -> torch.Tensor:
    """Keypoints in heatmap pixels: boxes the size of the heatmap, centred on it."""
    count, _, height, width = heatmaps.shape
    centers = torch.tensor([[width / 2, height / 2]]).expand(count, 2)
    sizes = torch.tensor([[float(width), float(height)]]).expand(count, 2)
    return decode_heatmaps(heatmaps, centers, sizes, codec=codec)[0]


def test_mmpose_decoding_rule_differs_at_the_border() -> None:
    """A peak next to the border: the official rule shifts neither axis, mmpose's shifts the axis whose neighbours
    exist; no positive value: official (0, 0), mmpose (-1, -1)."""
    heatmaps = torch.zeros(1, 5, 8, 6)
    h = heatmaps[0]
    h[0, 4, 1], h[0, 3, 1], h[0, 5, 1], h[0, 4, 2], h[0, 4, 0] = 1.0, 0.6, 0.2, 0.5, 0.3  # x = 1: mmpose moves y
    h[1, 1, 3], h[1, 1, 4], h[1, 1, 2], h[1, 0, 3], h[1, 2, 3] = 1.0, 0.5, 0.2, 0.1, 0.4  # y = 1: mmpose moves x
    h[2, 4, 5], h[2, 3, 5], h[2, 5, 5], h[2, 4, 4] = 1.0, 0.1, 0.4, 0.3  # last column: mmpose moves y
    h[3] = -1.0
    h[4, 4, 3], h[4, 4, 4], h[4, 3, 3] = 1.0, 0.5, 0.4  # inside: both rules agree
    official = _identity_decode(heatmaps, 'official')
    mmpose = _identity_decode(heatmaps, 'mmpose')
    assert official.tolist() == [[[1.0, 4.0], [3.0, 1.0], [5.0, 4.0], [0.0, 0.0], [3.25, 3.75]]]
    assert mmpose.tolist() == [[[1.0, 3.75], [3.25, 1.0], [5.0, 4.25], [-1.0, -1.0], [3.25, 3.75]]]
    with pytest.raises(ValueError, match="codec must be one of official, mmpose, dark, .*got 'darc'"):
        _identity_decode(heatmaps, 'darc')


def test_mmpose_decoding_equals_mmposes_own_code() -> None:
    """Peaks anywhere, the border rows and columns included, and heatmaps without a positive value, decoded by
    mmpose 1.3.2's `get_heatmap_maximum` + `refine_keypoints` (tests/fixtures/openmmlab/make_mmpose_decoding_ref.py)."""
    reference = np.load(openmmlab_fixture('mmpose_decoding.npz'))
    heatmaps = torch.from_numpy(reference['heatmaps'].astype(np.float32))
    ours = _identity_decode(heatmaps, 'mmpose')
    assert ours.tolist() == reference['keypoints'].tolist()
    assert not torch.equal(ours, _identity_decode(heatmaps, 'official'))  # the rules do differ on these


def test_codec_is_part_of_the_model(tiny_checkpoint: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_pose_model(tiny_checkpoint)
    assert model.codec.spec == 'official' and model.task_config()['codec'] == 'official'
    mmpose = create_pose_model(tiny_checkpoint, codec='mmpose')
    assert mmpose.codec.spec == 'mmpose' and mmpose.task_config()['codec'] == 'mmpose'
    with pytest.raises(ValueError, match='codec must be one of official, mmpose'):
        create_pose_model(tiny_checkpoint, codec='udb')
    seen = []

    def spy(*args: object, **kwargs: object):
        seen.append((args[4] if len(args) > 4 else kwargs.get('codec')).spec)
        return decode_heatmaps(*args, **kwargs)
    monkeypatch.setattr(pose_module, 'decode_heatmaps', spy)
    mmpose.predict(torch.rand(3, 40, 30), flip_test=False)
    assert seen == ['mmpose']


def test_exported_config_beside_the_weights(tiny_checkpoint: dict, tmp_path: Path) -> None:
    """config.json written by train_pose / hub_upload beside model.safetensors gives what the weights do not store:
    keypoint set, input size, codec; arguments win; a config.json of something else is ignored."""
    info = KeypointInfo('coco_like', COCO_KEYPOINTS.keypoint_names, COCO_KEYPOINTS.flip_pairs,
                        sigmas=(0.05,) * 17)
    model = create_pose_model(tiny_checkpoint, input_size=(64, 48), keypoint_info=info, codec='mmpose')
    folder = tmp_path / 'run'
    folder.mkdir()
    safetensors.torch.save_file(model.state_dict(), str(folder / 'model.safetensors'))
    config = dict(model.task_config(), keypoint_set=info.to_json(), weights='model.safetensors')
    (folder / 'config.json').write_text(json.dumps(config))
    loaded = create_pose_model(folder / 'model.safetensors')
    assert (loaded.keypoint_info, loaded.input_size, loaded.codec.spec) == (info, (64, 48), 'mmpose')
    stated = create_pose_model(folder / 'model.safetensors', input_size=(96, 64), codec='official')
    assert (stated.input_size, stated.codec.spec, stated.keypoint_info) == ((96, 64), 'official', info)
    # a hub_upload repo's config.json: no `weights`, a built-in set by name
    hub = {k: v for k, v in config.items() if k not in ('weights', 'keypoint_set')}
    (folder / 'config.json').write_text(json.dumps(hub))
    assert create_pose_model(folder / 'model.safetensors').keypoint_info == COCO_KEYPOINTS
    (folder / 'config.json').write_text(json.dumps(dict(config, weights='other.safetensors')))
    assert create_pose_model(folder / 'model.safetensors').codec.spec == 'official'  # describes another file
    for other in ({'model_type': 'bert'}, dict(config, task='segmentation')):
        (folder / 'config.json').write_text(json.dumps(other))
        assert create_pose_model(folder / 'model.safetensors').input_size == (256, 192)
    (folder / 'config.json').write_text('{"task": "pose",')  # no JSON: not ours either
    assert create_pose_model(folder / 'model.safetensors').input_size == (256, 192)
    (folder / 'config.json').write_text(json.dumps(dict(config, num_joints=5)))
    with pytest.raises(ValueError, match='config.json describes 5 joints, .*model.safetensors.* has 17'):
        create_pose_model(folder / 'model.safetensors')
    (folder / 'config.json').write_text(json.dumps(dict(config, codec='mmpose')))
    assert create_pose_model(folder / 'model.safetensors').codec.spec == 'mmpose'
    (folder / 'config.json').write_text(json.dumps(dict(config, codec='dark:4')))
    with pytest.raises(ValueError, match="config.json: codec: the blur kernel size must be a positive odd integer"):
        create_pose_model(folder / 'model.safetensors')
