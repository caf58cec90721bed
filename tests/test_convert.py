"""Checkpoint conversion: every release layout, wrappers and prefixes, the reference fixtures, and clear errors.

The reference outputs of mmpretrain and the official code come from reference_sources.py: the committed fixtures
and ../shared/refdata (deselected where absent).

Synthetic checkpoints of every layout come from checkpoints.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from reference_sources import REFERENCE_SOURCES, ReferenceRun, reference_run
from small_checkpoints import (
    NECK_CONV_BIAS,
    SMALL_MODEL,
    SmallCheckpoints,
    assert_state_dicts_equal,
    canonical_to_mmpretrain,
)

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)
from timm_hrnet.convert import (
    CANONICAL,
    MMPRETRAIN,
    CheckpointMismatchError,
    canonicalize_on_load,
    checkpoint_filter_fn,
    convert_state_dict,
    detect_layout,
    load_checkpoint_file,
    resolve_layout,
)

pytestmark = pytest.mark.usefixtures('single_torch_thread')


# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module', params=REFERENCE_SOURCES)
def mmpretrain_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """An mmpretrain 1.2.0 hrnet-w18 checkpoint (HRFuseScales neck) and what mmpretrain computed with it."""
    return reference_run(request.param, 'mmpretrain', tmp_path_factory.mktemp('mmpretrain'))


@pytest.fixture(scope='module')
def mmpretrain_w18(mmpretrain_run: ReferenceRun) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(mmpretrain_run.checkpoint)


def _run_reference(model_name: str, checkpoint: Path | dict, images: torch.Tensor):
    model = timm.create_model(model_name, pretrained=False).eval()
    model.load_state_dict(convert_state_dict(checkpoint, model_name))
    branches = {}
    model.stage4.register_forward_hook(lambda module, inputs, output: branches.setdefault('out', output))
    with torch.no_grad():
        features = model.forward_features(images)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    return logits, pooled, branches['out']


def test_mmpretrain_fixture_reproduces_reference_outputs(mmpretrain_run: ReferenceRun, mmpretrain_w18: dict) -> None:
    logits, neck_feat, branches = _run_reference('hrnet_w18', mmpretrain_w18, mmpretrain_run.input)
    assert (logits - mmpretrain_run.outputs['logits']).abs().max() <= 1e-4
    assert (neck_feat - mmpretrain_run.outputs['neck_feat']).abs().max() <= 1e-4
    assert max(mmpretrain_run.branch_diffs(branches, 'backbone_feats')) <= 1e-4


@pytest.mark.parametrize('source, case', [('fixtures', '224x224'), ('fixtures', '160x288'),
                                          pytest.param('refdata', None, marks=pytest.mark.refdata)])
def test_official_fixture_reproduces_reference_outputs(source: str, case: str | None, tmp_path: Path) -> None:
    """cls_hrnet's logits and stage-4 outputs at the released 224x224 and a non-square size (the official code
    takes only multiples of 32: its exchange units upsample by a fixed factor)."""
    official = reference_run(source, 'cls', tmp_path, case)
    logits, _, branches = _run_reference(SMALL_MODEL, official.checkpoint, official.input)
    assert (logits - official.outputs['logits']).abs().max() <= 1e-4
    if 'branch_feats' in official.outputs:
        assert max(official.branch_diffs(branches)) <= 1e-4


def test_mmpretrain_fixture_at_a_non_square_size(tmp_path: Path) -> None:
    """mmpretrain too takes only multiples of 32 (the generator records its error at 225x250)."""
    run = reference_run('fixtures', 'mmpretrain', tmp_path, '160x288')
    logits, neck_feat, _ = _run_reference('hrnet_w18', run.checkpoint, run.input)
    assert (logits - run.outputs['logits']).abs().max() <= 1e-4
    assert (neck_feat - run.outputs['neck_feat']).abs().max() <= 1e-4


def test_mmpretrain_to_ssld_and_non_ssld_variants(mmpretrain_w18: dict) -> None:
    """Zero biases are filled only for variants whose neck convs have them; the ssld variants take the file as is."""
    with_bias = convert_state_dict(mmpretrain_w18, 'hrnet_w18')
    ssld = convert_state_dict(mmpretrain_w18, 'hrnet_w18_ssld')
    filled = sorted(k for k in with_bias if NECK_CONV_BIAS.match(k))
    assert filled == ['downsamp_modules.0.0.bias', 'downsamp_modules.1.0.bias', 'downsamp_modules.2.0.bias',
                      'final_layer.0.bias']
    assert all(not with_bias[k].any() for k in filled)
    assert sorted(set(with_bias) - set(ssld)) == filled and set(ssld) < set(with_bias)
    assert all(torch.equal(ssld[k], with_bias[k]) for k in ssld)
    assert all(v.dtype == torch.float32 for v in ssld.values() if v.is_floating_point())


def test_detect_layout(small: SmallCheckpoints) -> None:
    assert detect_layout(small.state_dict) == CANONICAL
    assert detect_layout(canonical_to_mmpretrain(small.state_dict)) == MMPRETRAIN
    assert detect_layout({f'module.{k}': v for k, v in small.state_dict.items()}) == CANONICAL
    with pytest.raises(ValueError, match='unknown checkpoint layout.*encoder.weight'):
        detect_layout({'encoder.weight': torch.zeros(1)})


@pytest.mark.parametrize('name, layout', [('official', CANONICAL), ('timm', CANONICAL), ('mmpretrain', MMPRETRAIN)])
def test_resolve_layout_names(name: str, layout: str) -> None:
    assert resolve_layout(name) == layout


def test_resolve_layout_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="unknown checkpoint layout 'mmpretrian'.*did you mean 'mmpretrain'"):
        resolve_layout('mmpretrian')


WRAPPERS = {
    'plain': lambda sd: sd,
    'state_dict': lambda sd: {'state_dict': sd, 'meta': {'epoch': 3}},
    'model': lambda sd: {'model': sd, 'optimizer': {'lr': 0.1}},
    'ddp_prefix': lambda sd: {'state_dict': {f'module.{k}': v for k, v in sd.items()}},
    'ema_preferred': lambda sd: {'state_dict_ema': sd, 'state_dict': {k: v + 1 for k, v in sd.items()}},
    'timm_train_args': lambda sd: {'state_dict': sd, 'args': argparse.Namespace(lr=0.1)},
}


@pytest.mark.parametrize('wrapper', list(WRAPPERS))
def test_training_checkpoint_wrappers_are_unwrapped(tmp_path: Path, wrapper: str) -> None:
    weights = {'conv1.weight': torch.arange(4.0), 'bn1.num_batches_tracked': torch.tensor(7)}
    path = tmp_path / 'checkpoint.pth'
    torch.save(WRAPPERS[wrapper](weights), path)
    loaded = load_checkpoint_file(path)
    assert list(loaded) == list(weights)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


@pytest.mark.parametrize('layout', ['canonical', 'mmpretrain'])
def test_pth_checkpoints_convert_back_exactly(small: SmallCheckpoints, tmp_path: Path, layout: str) -> None:
    source = small.state_dict if layout == 'canonical' else canonical_to_mmpretrain(small.state_dict)
    path = tmp_path / 'checkpoint.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in source.items()}}, path)
    converted = convert_state_dict(path, SMALL_MODEL)
    assert_state_dicts_equal(converted, small.state_dict)
    assert all(v.dtype == torch.float32 for v in converted.values() if v.is_floating_point())


def test_safetensors_and_in_memory_sources(small: SmallCheckpoints) -> None:
    assert_state_dicts_equal(convert_state_dict(small.canonical_safetensors, SMALL_MODEL), small.state_dict)
    assert_state_dicts_equal(
        convert_state_dict(canonical_to_mmpretrain(small.state_dict), SMALL_MODEL, layout='mmpretrain'),
        small.state_dict)
    assert list(load_checkpoint_file(small.mmpretrain_pth))[0].startswith('backbone.')


def test_missing_unmapped_and_misshaped_keys_are_named(small: SmallCheckpoints) -> None:
    broken = canonical_to_mmpretrain(small.state_dict)
    del broken['backbone.stage3.0.fuse_layers.1.0.0.0.weight']
    broken['neck.1.extra.weight'] = torch.zeros(3)
    broken['backbone.conv1.weight'] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(broken, SMALL_MODEL)
    message = str(info.value)
    assert 'stage3.0.fuse_layers.1.0.0.0.weight' in message and info.value.missing == [
        'stage3.0.fuse_layers.1.0.0.0.weight']
    assert 'neck.1.extra.weight' in message and info.value.unexpected == ['neck.1.extra.weight']
    assert 'conv1.weight' in info.value.mismatched and '[64, 3, 5, 5]' in message
    assert isinstance(info.value, ValueError)


def test_canonical_keys_unknown_to_the_variant_are_named(small: SmallCheckpoints) -> None:
    with pytest.raises(CheckpointMismatchError, match=r'unexpected.*fc\.weight') as info:
        convert_state_dict({**small.state_dict, 'fc.weight': torch.zeros(2, 2)}, SMALL_MODEL)
    assert info.value.unexpected == ['fc.weight'] and not info.value.missing


def test_allow_partial_keeps_only_matching_tensors(small: SmallCheckpoints) -> None:
    partial_source = {k: v for k, v in small.state_dict.items() if not k.startswith('classifier.')}
    with pytest.raises(CheckpointMismatchError, match='classifier.weight'):
        convert_state_dict(partial_source, SMALL_MODEL)
    converted = convert_state_dict({**partial_source, 'extra': torch.zeros(1)}, SMALL_MODEL, allow_partial=True)
    assert set(converted) == set(partial_source)


def test_other_class_count_is_kept(small: SmallCheckpoints) -> None:
    ten_classes = {**small.state_dict, 'classifier.weight': torch.randn(10, 2048), 'classifier.bias': torch.zeros(10)}
    converted = convert_state_dict(canonical_to_mmpretrain(ten_classes, torch.float32), SMALL_MODEL)
    assert converted['classifier.weight'].shape == (10, 2048)
    model = timm.create_model(SMALL_MODEL, num_classes=converted['classifier.weight'].shape[0])
    model.load_state_dict(converted)
    with pytest.raises(CheckpointMismatchError, match=r'classifier\.bias: checkpoint \[7\] vs model \[10\]') as info:
        convert_state_dict({**ten_classes, 'classifier.bias': torch.zeros(7)}, SMALL_MODEL)
    assert list(info.value.mismatched) == ['classifier.bias']
    with pytest.raises(CheckpointMismatchError, match=r'classifier\.weight: checkpoint \[10, 100\] vs model') as info:
        convert_state_dict({**ten_classes, 'classifier.weight': torch.zeros(10, 100)}, SMALL_MODEL)
    assert list(info.value.mismatched) == ['classifier.weight']


class NotAllowedByWeightsOnly:
    """A custom class in a checkpoint: unpickling it would run arbitrary code, so it must be refused."""


def test_pickle_needing_more_than_weights_only_is_refused(small: SmallCheckpoints, tmp_path: Path) -> None:
    path = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': small.state_dict, 'config': NotAllowedByWeightsOnly()}, path)
    with pytest.raises(ValueError, match=r"refusing to load '.*unsafe\.pth'.*weights_only.*NotAllowedByWeightsOnly"):
        load_checkpoint_file(path)
    with pytest.raises(ValueError, match='unsafe.pth'):
        convert_state_dict(path, SMALL_MODEL)


@pytest.mark.parametrize('name, content, error, pattern', [
    ('missing.pth', None, FileNotFoundError, "checkpoint file not found: '.*missing.pth'"),
    ('corrupt.pth', b'not a checkpoint', ValueError, "'.*corrupt.pth' is not a readable PyTorch checkpoint"),
    ('corrupt.safetensors', b'\x00' * 16, ValueError, "'.*corrupt.safetensors' is not a readable safetensors"),
    ('weights.npy', b'', ValueError, "unsupported checkpoint extension '.npy'"),
])
def test_unreadable_files_are_named(
        tmp_path: Path, name: str, content: bytes | None, error: type, pattern: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=pattern):
        load_checkpoint_file(path)


def test_non_tensor_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / 'optimizer_only.pth'
    torch.save({'epoch': 3, 'lr': 0.1}, path)
    with pytest.raises(ValueError, match='not a state dict of tensors.*epoch'):
        load_checkpoint_file(path)


def test_unknown_model_suggests_close_names(small: SmallCheckpoints) -> None:
    with pytest.raises(ValueError, match="unknown model 'hrnet_w81'.*hrnet_w18"):
        convert_state_dict(small.state_dict, 'hrnet_w81')


def test_filter_fn_renames_and_keeps_the_classifier(small: SmallCheckpoints) -> None:
    model = timm.create_model(SMALL_MODEL, pretrained=False)
    canonical = dict(small.state_dict)
    assert checkpoint_filter_fn(canonical, model) == canonical
    ten_classes = {**small.state_dict, 'classifier.weight': torch.zeros(10, 2048), 'classifier.bias': torch.zeros(10)}
    filtered = checkpoint_filter_fn(canonical_to_mmpretrain(ten_classes), model)
    assert sorted(filtered) == sorted(model.state_dict())
    assert filtered['classifier.weight'].shape == (10, 2048)
    assert not filtered['final_layer.0.bias'].any()


def test_pre_hook_converts_top_level_loads_only(small: SmallCheckpoints) -> None:
    model = timm.create_model(SMALL_MODEL, pretrained=False)
    model.register_load_state_dict_pre_hook(canonicalize_on_load)
    model.load_state_dict(canonical_to_mmpretrain(small.state_dict))
    assert_state_dicts_equal(model.state_dict(), small.state_dict)
    with pytest.raises(RuntimeError, match='backbone.conv1.weight'):  # a submodule load is never rewritten
        torch.nn.ModuleDict({'net': model}).load_state_dict(
            {f'net.{k}': v for k, v in canonical_to_mmpretrain(small.state_dict).items()})


def test_our_model_accepts_mmpretrain_state_dicts_directly(small: SmallCheckpoints) -> None:
    model = timm.create_model(SMALL_MODEL, pretrained=False)
    model.load_state_dict(canonical_to_mmpretrain(small.state_dict))
    assert_state_dicts_equal(model.state_dict(), small.state_dict)
