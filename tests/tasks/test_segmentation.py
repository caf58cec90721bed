"""Segmentation models: the official seg_hrnet checkpoints load and compute what the official code computed, at
any input size and for the released W48 layouts; align_corners defaults, flip / multi-scale / sliding-window
inference, and the fused model."""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import assert_checkpointing_exact, relative_diff
from PIL import Image
from reference_sources import REFERENCE_SOURCES, ReferenceRun, reference_run
from task_reference import official_extra, official_forward, official_shapes, random_checkpoint, tiny_extra

from timm_hrnet import VARIANTS, HRNetSeg, create_seg_model, optimize_for_inference
from timm_hrnet.checkpoints import SEGMENTATION, read_architecture, read_checkpoint
from timm_hrnet.hrnet import HRNetTrunk
from timm_hrnet.tasks.datasets import SEG_DATASETS

pytestmark = pytest.mark.usefixtures('single_torch_thread')

TOLERANCE = 1e-4  # relative max difference the issue allows; float32 rounding gives ~1e-7


@pytest.fixture(scope='module', params=REFERENCE_SOURCES)
def official(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """A reduced seg_hrnet checkpoint and the logits the official code computed with it (fixtures: 512x1024)."""
    return reference_run(request.param, 'seg', tmp_path_factory.mktemp('seg_official'))


@pytest.fixture(scope='module')
def official_state_dict(official: ReferenceRun) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in torch.load(official.checkpoint, weights_only=True).items()}


@pytest.fixture(scope='module')
def official_model(official: ReferenceRun) -> HRNetSeg:
    return create_seg_model(official.checkpoint, align_corners=official.meta['align_corners'])


@pytest.fixture(scope='module')
def tiny_checkpoint() -> dict[str, torch.Tensor]:
    return random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 20))


def stride4(size: tuple[int, ...]) -> tuple[int, int]:
    return (size[-2] + 3) // 4, (size[-1] + 3) // 4


def test_official_fixture_reproduced(official: ReferenceRun, official_model: HRNetSeg) -> None:
    assert not official_model.training and official_model.spec.upsample == 'bilinear'
    assert (official_model.num_classes, official_model.align_corners) == (19, False)
    with torch.no_grad():
        logits = official_model(official.input)
        branches = HRNetTrunk.forward(official_model, official.input)
    assert logits.shape == (1, 19, *stride4(official.input.shape))
    assert official.diff('output', logits) <= TOLERANCE
    assert max(official.branch_diffs(branches)) <= TOLERANCE


@pytest.mark.parametrize('case', ['250x330', '250x330_align_corners'])
def test_official_outputs_at_sizes_not_multiples_of_32(case: str, tmp_path: Path) -> None:
    """What the official code computed at 250x330 (its exchange units resize to the target's actual size), with
    align_corners False (the released configs) and True (the config default)."""
    official = reference_run('fixtures', 'seg', tmp_path, case)
    model = create_seg_model(official.checkpoint, align_corners=official.outputs['align_corners'])
    with torch.no_grad():
        logits = model(official.input)
    assert logits.shape == (1, 19, 63, 83)
    assert official.diff('output', logits) <= TOLERANCE


def test_state_dict_is_the_official_layout(official_state_dict: dict, official: ReferenceRun,
                                           official_model: HRNetSeg) -> None:
    official_keys = {k: tuple(v.shape) for k, v in official_state_dict.items()}
    ours = {k: tuple(v.shape) for k, v in official_model.state_dict().items()}
    assert ours == official_keys == official_shapes(official.meta['extra'], 'seg', 19)


def test_reference_oracle_reproduces_fixture(official_state_dict: dict, official: ReferenceRun) -> None:
    """The oracle that stands in for the official code below is itself checked against the official output."""
    out = official_forward(official_state_dict, official.meta['extra'], 'seg', official.input)
    assert official.diff('output', out) <= TOLERANCE


@pytest.mark.parametrize(('size', 'align_corners'), [((70, 100), False), ((97, 131), False), ((64, 96), True)])
def test_any_input_size_and_align_corners(official_state_dict: dict, official: ReferenceRun, size: tuple[int, int],
                                          align_corners: bool) -> None:
    """The official code runs on any size (exchange units resize to the target's actual size): so do we."""
    model = create_seg_model(official.checkpoint, align_corners=align_corners)
    x = torch.randn(1, 3, *size)
    expected = official_forward(official_state_dict, official.meta['extra'], 'seg', x, align_corners)
    with torch.no_grad():
        logits = model(x)
        upsampled = model.logits_at_input_size(x)
    assert logits.shape[-2:] == expected.shape[-2:] == stride4(size)
    assert relative_diff(logits, expected) <= TOLERANCE
    assert upsampled.shape == (1, 19, *size)


@pytest.mark.parametrize('num_classes', [19, 20])  # Cityscapes and LIP: the same W48 network
def test_released_configurations(num_classes: int) -> None:
    shapes = official_shapes(official_extra(48, seg=True), 'seg', num_classes)
    meta_checkpoint = {f'model.{k}': torch.empty(s, device='meta') for k, s in shapes.items()}
    meta_checkpoint['loss.criterion.weight'] = torch.empty(num_classes, device='meta')  # as the official files
    loaded = read_checkpoint(meta_checkpoint)
    assert loaded.dropped == ('loss.criterion.weight',) and 'conv1.weight' in loaded.state_dict
    assert loaded.task == SEGMENTATION and loaded.architecture == read_architecture(loaded.state_dict, SEGMENTATION)
    arch = loaded.architecture
    assert arch.spec == dataclasses.replace(VARIANTS['hrnet_w48'], upsample='bilinear')
    assert (arch.in_chans, arch.num_outputs, arch.final_conv_kernel) == (3, num_classes, 1)
    model = HRNetSeg(arch.spec, num_classes, device='meta')
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert sum(v.numel() for v in model.parameters()) / 1e6 == pytest.approx(65.8, abs=0.1)  # the official 65.8M


def test_released_w48_matches_reference_numerically() -> None:
    """Full-size W48 with random weights against the oracle, on one small input that is not a multiple of 32."""
    extra = official_extra(48, seg=True)
    sd = random_checkpoint(official_shapes(extra, 'seg', 19), seed=5)
    model = create_seg_model({f'model.{k}': v for k, v in sd.items()})
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        assert relative_diff(model(x), official_forward(sd, extra, 'seg', x, align_corners=False)) <= TOLERANCE


def test_align_corners_default() -> None:
    def checkpoint(classes: int) -> dict[str, torch.Tensor]:
        return random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', classes))

    assert create_seg_model(checkpoint(19)).align_corners is False  # Cityscapes config
    ade = create_seg_model(checkpoint(150))
    assert ade.align_corners is True and ade.dataset.name == 'ade20k'  # ADE20K keeps the code's default, True
    with pytest.raises(ValueError, match='7 classes.*pass align_corners'):
        create_seg_model(checkpoint(7))
    custom = create_seg_model(checkpoint(7), align_corners=True)
    assert custom.dataset is None and custom.class_names[6] == 'class_6' and len(custom.palette) == 7
    tuned = create_seg_model(checkpoint(19), num_classes=7)  # the trunk's training set decides: Cityscapes, False
    assert tuned.align_corners is False and tuned.last_layer[3].out_channels == 7


def test_wrong_checkpoints_are_named(tiny_checkpoint: dict) -> None:
    pose = random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17))
    with pytest.raises(ValueError, match='pose checkpoint.*create_pose_model'):
        create_seg_model(pose)
    classifier = {k: torch.empty(0) for k in ('conv1.weight', 'incre_modules.0.0.conv1.weight', 'classifier.weight')}
    with pytest.raises(ValueError, match='classification checkpoint'):
        create_seg_model(classifier)
    mmseg = {'backbone.conv1.weight': torch.zeros(1), 'decode_head.conv_seg.weight': torch.zeros(1)}
    with pytest.raises(ValueError, match='conv1.weight has shape'):  # mmseg's layout, read as such, named
        create_seg_model(mmseg)
    with pytest.raises(ValueError, match='missing the OCRHead'):  # OCRNet's first head alone
        create_seg_model({'backbone.conv1.weight': torch.zeros(1), 'decode_head.0.conv_seg.weight': torch.zeros(1)})
    unlike = dict(tiny_checkpoint)
    for key in [k for k in unlike if k.startswith('stage4.1.branches.3.0.')]:
        unlike[key.replace('branches.3.0.', 'branches.3.1.')] = unlike[key]
    with pytest.raises(ValueError, match='modules of one stage must be alike'):
        create_seg_model(unlike)


def test_config_beside_the_weights(tmp_path: Path) -> None:
    """config.json written by train_seg / hub_upload beside model.safetensors gives what the weights do not store:
    align_corners, the label set, mmseg's two-step resizes; arguments win; a config.json of something else, or no
    JSON, is ignored; one stating another class count is an error."""
    model = create_seg_model(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 3)), align_corners=True)
    folder = tmp_path / 'run'
    folder.mkdir()
    weights = folder / 'model.safetensors'
    safetensors.torch.save_file(model.state_dict(), str(weights))
    spec = {**dataclasses.asdict(model.spec), 'upsample_by_stride': True}
    config = dict(model.task_config(), architecture=spec, dataset='shapes', class_names=['a', 'b', 'c'],
                  palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]], weights='model.safetensors')
    (folder / 'config.json').write_text(json.dumps(config))
    loaded = create_seg_model(weights)  # 3 classes: no released default, the config's True
    assert (loaded.align_corners, loaded.class_names, loaded.palette[1]) == (True, ('a', 'b', 'c'), (255, 0, 0))
    assert loaded.spec.upsample_by_stride and loaded.stage2[0].stride_factors == [[0, 2], [0, 0]]
    stated = create_seg_model(weights, align_corners=False, dataset='cityscapes', num_classes=19)
    assert stated.align_corners is False and stated.dataset.name == 'cityscapes'
    for other in ({'model_type': 'bert'}, dict(config, task='pose')):
        (folder / 'config.json').write_text(json.dumps(other))
        with pytest.raises(ValueError, match='3 classes.*pass align_corners'):
            create_seg_model(weights)
    (folder / 'config.json').write_text('{"task": "segmentation",')
    assert create_seg_model(weights, align_corners=True).dataset is None
    (folder / 'config.json').write_text(json.dumps(dict(config, num_classes=5)))
    with pytest.raises(ValueError, match='config.json describes 5 classes, .*model.safetensors has 3'):
        create_seg_model(weights)


@pytest.mark.parametrize('selective', [False, True], ids=['full', 'selective'])
def test_gradient_checkpointing_is_exact(tiny_checkpoint: dict, selective: bool) -> None:
    assert_checkpointing_exact(create_seg_model(tiny_checkpoint), torch.randn(2, 3, 64, 80), selective)


def test_fine_tuning_classes(tiny_checkpoint: dict) -> None:
    model = create_seg_model(tiny_checkpoint, num_classes=3, align_corners=False)
    assert model.last_layer[3].out_channels == 3
    assert torch.equal(model.last_layer[0].weight, tiny_checkpoint['last_layer.0.weight'])
    assert model.last_layer[3].weight.std() < 0.01


def test_predict(tiny_checkpoint: dict) -> None:
    model = create_seg_model(tiny_checkpoint)  # 20 classes: LIP, align_corners False
    assert model.dataset.name == 'lip' and model.class_names[14] == 'left arm'
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (75, 90, 3), dtype=np.uint8))
    plain = model.predict(image)
    assert plain['labels'].shape == plain['scores'].shape == (75, 90)
    with torch.no_grad():
        expected = model.logits_at_input_size(model_input(model, image)).argmax(1)[0]
    assert torch.equal(plain['labels'], expected)  # single scale, no flip: the official test's argmax
    assert torch.equal(model.predict(image, window=(75, 90))['labels'], plain['labels'])  # one tile: the same
    tiled = model.predict(image, window=(40, 48), scales=(0.75, 1.0), flip=True)
    assert tiled['labels'].shape == (75, 90) and 0 < tiled['scores'].min() <= tiled['scores'].max() <= 1
    small = model.predict(Image.new('L', (20, 12)))  # greyscale, and smaller than the network's 32x32 minimum
    assert small['labels'].shape == (12, 20)
    with pytest.raises(ValueError, match='window must be at least 32x32'):
        model.predict(image, window=(16, 16))


def model_input(model: HRNetSeg, image: Image.Image) -> torch.Tensor:
    mean, std = torch.tensor(model.mean).view(3, 1, 1), torch.tensor(model.std).view(3, 1, 1)
    return ((torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255 - mean) / std).unsqueeze(0)


def test_flip_swaps_left_and_right_classes(tiny_checkpoint: dict) -> None:
    model = create_seg_model(tiny_checkpoint)
    probs = torch.arange(20.0).view(20, 1, 1).expand(20, 2, 3).clone()
    probs[:, :, 0] = -1.0
    unflipped = model._unflip(probs)
    assert unflipped[:, 0, 2].tolist() == [-1.0] * 20  # mirrored back
    assert unflipped[14:, 0, 0].tolist() == [15.0, 14.0, 17.0, 16.0, 19.0, 18.0]  # LIP's left/right parts swapped


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_optimize_for_inference(official: ReferenceRun) -> None:
    """Bilinear exchange units and the conv-BN-ReLU-conv head fuse; any size still matches; TorchScript compiles."""
    model = create_seg_model(official.checkpoint)
    fused = optimize_for_inference(model)
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        expected = model(x)
        assert relative_diff(fused(x), expected) < 1e-5
        assert relative_diff(torch.jit.script(fused)(x), expected) < 1e-5
    assert type(fused).__name__ == 'InferenceOnlyHRNetSeg'
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def test_optimize_for_inference_of_the_mmseg_exchange_units(tiny_checkpoint: dict) -> None:
    """mmseg's two-step resize (upsample by the stride ratio, then to the target size) survives fusing, at a size
    where the two steps give other numbers than one resize; the fused model pickles whole."""
    arch = read_checkpoint(tiny_checkpoint).architecture
    spec = dataclasses.replace(arch.spec, upsample_by_stride=True)
    model = HRNetSeg(spec, 20, head_bias=False).eval()
    one_step = HRNetSeg(arch.spec, 20, head_bias=False).eval()
    one_step.load_state_dict(model.state_dict())
    fused = optimize_for_inference(model)
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        expected = model(x)
        assert relative_diff(one_step(x), expected) > 1e-4  # the two rules differ here, so the check below can fail
        assert relative_diff(fused(x), expected) < 1e-5
        assert relative_diff(torch.jit.script(fused)(x), expected) < 1e-5
        assert relative_diff(pickle.loads(pickle.dumps(fused))(x), expected) < 1e-5


def test_datasets_and_task_config(tiny_checkpoint: dict) -> None:
    for info in SEG_DATASETS.values():
        assert len(info.class_names) == len(info.palette) == len(set(info.class_names)) == info.num_classes
    model = create_seg_model(tiny_checkpoint)
    config = json.loads(json.dumps(model.task_config()))
    assert config['task'] == 'segmentation' and config['num_classes'] == 20 and config['align_corners'] is False
    assert config['dataset'] == 'lip' and config['architecture']['upsample'] == 'bilinear'
