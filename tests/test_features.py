"""HRNet as a backbone: features_only, forward_intermediates, pruning, output stride, necks, checkpointing, freezing."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import timm
import timm.models.hrnet as timm_builtin_hrnet
import torch
import torch.nn.functional as F
from helpers import assert_checkpointing_exact, features_model
from timm.utils import freeze
from timm.utils.model import freeze_batch_norm_2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints with timm)
from timm_hrnet import HRNet, HRNetFeatures
from timm_hrnet.necks import HRNetV2, HRNetV2p

NAME = 'hrnet_w18_small'
# width C of the highest-resolution branch; the branches have C, 2C, 4C, 8C channels
WIDTHS = {
    'hrnet_w18_small': 16, 'hrnet_w18_small_v2': 18, 'hrnet_w18': 18, 'hrnet_w30': 30, 'hrnet_w32': 32,
    'hrnet_w40': 40, 'hrnet_w44': 44, 'hrnet_w48': 48, 'hrnet_w64': 64, 'hrnet_w18_ssld': 18, 'hrnet_w48_ssld': 48,
}
INCRE_CHANNELS = [64, 128, 256, 512, 1024]  # stem, then the head's incre modules, the same for every width
ODD_SIZE = (77, 109)  # odd at every stride: each halving rounds up


def stride_sizes(size: tuple[int, int], reductions: list[int]) -> list[tuple[int, int]]:
    """Feature sizes of a network of stride-2, padding-1 3x3 convs: each halving rounds up."""
    return [(math.ceil(size[0] / r), math.ceil(size[1] / r)) for r in reductions]


@pytest.fixture(scope='module')
def odd_input() -> torch.Tensor:
    return torch.randn(1, 3, *ODD_SIZE, generator=torch.Generator().manual_seed(1))


def check_feature_info(model: nn.Module, channels: list[int], names: list[str]) -> None:
    assert isinstance(model, HRNetFeatures)
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.module_name() == names
    for module_name in names:
        model.get_submodule(module_name)  # every reported module exists


@pytest.mark.parametrize('name', sorted(WIDTHS))
def test_feature_info_branches_every_variant(name: str) -> None:
    with torch.device('meta'):
        model = timm.create_model(name, features_only=True, feature_location='')
    width, last_module = WIDTHS[name], len(model.stage4) - 1
    channels = [64, width, 2 * width, 4 * width, 8 * width]
    check_feature_info(model, channels, ['act1'] + [f'stage4.{last_module}.fuse_acts.{i}' for i in range(4)])


@pytest.mark.parametrize('name', ['hrnet_w18_small', 'hrnet_w64'])
def test_feature_info_incre(name: str) -> None:
    with torch.device('meta'):
        model = timm.create_model(name, features_only=True)
    check_feature_info(model, INCRE_CHANNELS, ['act1'] + [f'incre_modules.{i}' for i in range(4)])


def test_out_indices_subset_and_unknown_location() -> None:
    with torch.device('meta'):
        model = timm.create_model(NAME, features_only=True, out_indices=(2, 4))
    assert model.feature_info.channels() == [256, 1024]
    assert model.feature_info.reduction() == [8, 32]
    with pytest.raises(ValueError, match="feature_location must be 'incre' or ''"):
        timm.create_model(NAME, features_only=True, feature_location='stage')


@pytest.mark.parametrize('location', ['incre', ''])
@pytest.mark.parametrize('feature_cls', [None, 'getter', 'hook'])
def test_pretrained_features_equal_classifier_intermediates(
        classifier: HRNet, weights_file: Path, odd_input: torch.Tensor, location: str, feature_cls: str | None
) -> None:
    extra = dict(feature_cls=feature_cls) if feature_cls else {}
    model = features_model(weights_file, feature_location=location, **extra)
    reference = timm.create_model(NAME, feature_location=location)
    reference.load_state_dict(classifier.state_dict())
    with torch.no_grad():
        features = model(odd_input)
        expected = reference.eval().forward_intermediates(odd_input, intermediates_only=True)
    assert len(features) == 5
    for feat, ref, size in zip(features, expected, stride_sizes(ODD_SIZE, [2, 4, 8, 16, 32])):
        assert feat.shape[-2:] == size
        torch.testing.assert_close(feat, ref, rtol=0, atol=0)


def test_pretrained_out_indices_subset(classifier: HRNet, weights_file: Path, odd_input: torch.Tensor) -> None:
    model = features_model(weights_file, out_indices=(1, 3))
    assert 'incre_modules.3.0.conv1.weight' not in model.state_dict()  # pruned: index 4 is not asked for
    with torch.no_grad():
        features = model(odd_input)
        expected = classifier.forward_intermediates(odd_input, indices=[1, 3], intermediates_only=True)
    assert [f.shape[1] for f in features] == [128, 512]
    for feat, ref in zip(features, expected):
        torch.testing.assert_close(feat, ref, rtol=0, atol=0)


@pytest.mark.parametrize('location', ['incre', ''])
def test_matches_timm_builtin_features(classifier: HRNet, location: str) -> None:
    """timm's own HRNet features model, given the same weights, agrees on inputs that are multiples of 32."""
    ours = timm.create_model(NAME, features_only=True, feature_location=location).eval()
    theirs = timm_builtin_hrnet.hrnet_w18_small(features_only=True, feature_location=location).eval()
    assert not isinstance(theirs, HRNet)
    assert ours.load_state_dict(classifier.state_dict(), strict=False).missing_keys == []
    assert theirs.load_state_dict(classifier.state_dict(), strict=False).missing_keys == []
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_forward_intermediates_contract(classifier: HRNet, odd_input: torch.Tensor) -> None:
    with torch.no_grad():
        final, intermediates = classifier.forward_intermediates(odd_input)
        torch.testing.assert_close(final, classifier.forward_features(odd_input), rtol=0, atol=0)
        assert [f.shape[1] for f in intermediates] == INCRE_CHANNELS
        last_two = classifier.forward_intermediates(odd_input, indices=2, intermediates_only=True)
        negative = classifier.forward_intermediates(odd_input, indices=[-2, -1], intermediates_only=True)
        for a, b, c in zip(last_two, negative, intermediates[3:], strict=True):
            torch.testing.assert_close(a, c, rtol=0, atol=0)
            torch.testing.assert_close(b, c, rtol=0, atol=0)
        nhwc = classifier.forward_intermediates(odd_input, indices=[0, 2], output_fmt='NHWC', intermediates_only=True)
        for a, c in zip(nhwc, [intermediates[0], intermediates[2]], strict=True):
            torch.testing.assert_close(a, c.permute(0, 2, 3, 1), rtol=0, atol=0)
        stem_final, stem = classifier.forward_intermediates(odd_input, indices=[0], stop_early=True)
        torch.testing.assert_close(stem_final, intermediates[0], rtol=0, atol=0)
        assert len(stem) == 1
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NHWC'"):
        classifier.forward_intermediates(odd_input, output_fmt='NLC')
    with pytest.raises(AssertionError, match='out of range'):
        classifier.forward_intermediates(odd_input, indices=[5])


def test_prune_intermediate_layers(classifier: HRNet, odd_input: torch.Tensor) -> None:
    with torch.no_grad():
        expected = classifier.forward_intermediates(odd_input, intermediates_only=True)
        logits = classifier(odd_input)

        keep_head = copy.deepcopy(classifier)
        assert keep_head.prune_intermediate_layers(5, prune_head=False) == [0, 1, 2, 3, 4]
        torch.testing.assert_close(keep_head(odd_input), logits, rtol=0, atol=0)

        pruned = copy.deepcopy(classifier)
        assert pruned.prune_intermediate_layers([1, 2], prune_head=True) == [1, 2]
        keys = pruned.state_dict().keys()
        assert not any(k.startswith(('classifier', 'final_layer', 'downsamp_modules', 'incre_modules.2')) for k in keys)
        features = pruned.forward_intermediates(odd_input, indices=[1, 2], intermediates_only=True)
        for a, b in zip(features, expected[1:3], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        # the pruned model's features end at its last tap, described by num_features; later taps are gone
        torch.testing.assert_close(pruned.forward_features(odd_input), expected[2], rtol=0, atol=0)
        assert pruned.num_features == pruned.head_hidden_size == expected[2].shape[1]
        assert pruned(odd_input).shape == expected[2].shape  # pooling and classifier went with the head
        with pytest.raises(ValueError, match='pruned'):
            pruned.forward_intermediates(odd_input, indices=[3])
        pruned.reset_classifier(5, 'avg')
        assert pruned(odd_input).shape == (odd_input.shape[0], 5)

        stem_only = copy.deepcopy(classifier)
        stem_only.prune_intermediate_layers([0])
        assert sum(p.numel() for p in stem_only.parameters()) < 2000  # conv1 + bn1 only
        (stem,) = stem_only.forward_intermediates(odd_input, indices=[0], intermediates_only=True)
        torch.testing.assert_close(stem, expected[0], rtol=0, atol=0)
        torch.testing.assert_close(stem_only.forward_features(odd_input), expected[0], rtol=0, atol=0)
        assert stem_only.num_features == expected[0].shape[1]


def test_stop_early_ends_at_the_last_requested_tap(classifier: HRNet, odd_input: torch.Tensor) -> None:
    with torch.no_grad():
        taps = classifier.forward_intermediates(odd_input, intermediates_only=True)
        for i in range(len(taps)):
            final, selected = classifier.forward_intermediates(odd_input, indices=[i], stop_early=True)
            torch.testing.assert_close(selected[0], taps[i], rtol=0, atol=0)
            expected_final = classifier.forward_features(odd_input) if i == len(taps) - 1 else taps[i]
            torch.testing.assert_close(final, expected_final, rtol=0, atol=0)


@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_output_stride(weights_file: Path, odd_input: torch.Tensor, output_stride: int) -> None:
    model = features_model(weights_file, feature_location='', output_stride=output_stride)  # loads: shapes unchanged
    reductions = [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    assert model.feature_info.reduction() == reductions
    with torch.no_grad():
        features = model(odd_input)
    assert [f.shape[-2:] for f in features] == stride_sizes(ODD_SIZE, reductions)


@pytest.mark.parametrize('output_stride', [16, 8])
def test_output_stride_keeps_weight_shapes(classifier: HRNet, output_stride: int) -> None:
    dilated = timm.create_model(NAME, output_stride=output_stride)
    dilated.load_state_dict(classifier.state_dict(), strict=True)
    dilated_convs = [m for m in dilated.modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
    assert dilated_convs, 'the low-resolution branches should dilate'
    with torch.no_grad():
        assert dilated.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize('output_stride', [4, 64])
def test_output_stride_invalid(output_stride: int) -> None:
    with pytest.raises(ValueError, match=f'output_stride must be 8, 16 or 32, got {output_stride}'):
        timm.create_model(NAME, features_only=True, output_stride=output_stride)


@pytest.mark.parametrize(('size', 'output_stride'), [((513, 513), 32), ((64, 33), 16)])
def test_any_input_size(size: tuple[int, int], output_stride: int) -> None:
    model = timm.create_model(NAME, features_only=True, feature_location='', output_stride=output_stride).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    reductions = [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    assert [f.shape[-2:] for f in features] == stride_sizes(size, reductions)


def test_too_small_input_is_rejected() -> None:
    model = timm.create_model(NAME, features_only=True)
    with pytest.raises(ValueError, match='at least 32x32'):
        model(torch.randn(1, 3, 31, 64))


@pytest.mark.parametrize('selective', [False, True], ids=['full', 'selective'])
@pytest.mark.parametrize('location', ['incre', ''])
def test_grad_checkpointing_same_outputs_grads_and_bn_stats(location: str, selective: bool) -> None:
    torch.manual_seed(0)
    model = timm.create_model(NAME, features_only=True, feature_location=location)
    assert_checkpointing_exact(model, torch.randn(2, 3, 64, 64), selective)
    model.set_grad_checkpointing(True, selective=selective)
    stages = (model.stage2, model.stage3, model.stage4)
    assert all(stage.grad_checkpointing and stage.selective_recompute == selective for stage in stages)


def test_freeze_stem_and_layer1_for_finetuning() -> None:
    """timm.utils.freeze on our module names: parameters stop training, BatchNorm stats stop moving."""
    model = timm.create_model(NAME, features_only=True)
    frozen_names = ['conv1', 'bn1', 'conv2', 'bn2', 'layer1']
    freeze(model, frozen_names)
    assert isinstance(model.bn1, FrozenBatchNorm2d) and isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)
    for name, param in model.named_parameters():
        assert param.requires_grad == (name.split('.')[0] not in frozen_names), name
    before = copy.deepcopy(model.state_dict())
    sum(f.mean() for f in model.train()(torch.randn(2, 3, 64, 64))).backward()
    after = model.state_dict()
    frozen_stats, trained_stats = 'layer1.0.bn1.running_mean', 'stage2.0.branches.0.0.bn1.running_mean'
    assert torch.equal(before[frozen_stats], after[frozen_stats])
    assert not torch.equal(before[trained_stats], after[trained_stats])
    assert model.conv1.weight.grad is None and model.stage2[0].branches[0][0].conv1.weight.grad is not None


def test_freeze_all_batchnorm_keeps_eval_outputs(weights_file: Path) -> None:
    model = features_model(weights_file)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        frozen = freeze_batch_norm_2d(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
        for a, b in zip(frozen.train()(x), expected, strict=True):  # frozen BN ignores train mode
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())  # same BN, refactored math


def branch_features(width: int, size: tuple[int, int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    sizes = stride_sizes(size, [4, 8, 16, 32])
    return [torch.randn(1, width * 2**i, *s, generator=gen) for i, s in enumerate(sizes)]


def test_hrnetv2_neck_concatenates_at_highest_resolution() -> None:
    features = branch_features(18, ODD_SIZE)
    neck = HRNetV2([18, 36, 72, 144])
    out = neck(features)
    assert neck.out_channels == 270
    assert out.shape == (1, 270, *features[0].shape[-2:])
    torch.testing.assert_close(out[:, :18], features[0], rtol=0, atol=0)
    lowest = F.interpolate(features[3], size=features[0].shape[-2:], mode='bilinear', align_corners=False)
    torch.testing.assert_close(out[:, -144:], lowest, rtol=0, atol=0)
    constant = [torch.full_like(f, 3.0) for f in features]
    torch.testing.assert_close(neck(constant), torch.full_like(out, 3.0))  # bilinear keeps constants exactly


def test_hrnetv2p_neck_pyramid() -> None:
    features = branch_features(18, ODD_SIZE)
    neck = HRNetV2p([18, 36, 72, 144], out_channels=32, num_levels=5)
    levels = neck(features)
    assert neck.out_channels == 32
    assert [tuple(level.shape) for level in levels] == [
        (1, 32, *s) for s in stride_sizes(ODD_SIZE, [4, 8, 16, 32, 64])
    ]
    with pytest.raises(ValueError, match=r'channels \[18, 36, 72, 144\], got \[64, 128, 256, 512\]'):
        neck(branch_features(64, ODD_SIZE))


def test_necks_on_real_backbone(odd_input: torch.Tensor) -> None:
    body = timm.create_model(NAME, features_only=True, feature_location='', out_indices=(1, 2, 3, 4)).eval()
    with torch.no_grad():
        features = body(odd_input)
        concat = HRNetV2(body.feature_info.channels())(features)
        levels = HRNetV2p(body.feature_info.channels(), out_channels=16)(features)
    assert concat.shape == (1, 240, *stride_sizes(ODD_SIZE, [4])[0])
    assert [level.shape[-2:] for level in levels] == stride_sizes(ODD_SIZE, [4, 8, 16, 32, 64])


def test_raw_location_keeps_the_head_when_asked() -> None:
    model = timm.create_model(NAME, feature_location='').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        model.prune_intermediate_layers([1, 2, 3, 4], prune_head=False)
        assert torch.equal(model(x), logits)
        final, feats = model.forward_intermediates(x)
        assert final.shape == (1, 2048, 2, 2) and [f.shape[1] for f in feats] == [64, 16, 32, 64, 128]
