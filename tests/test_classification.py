"""inference_model decoding and input types, get_model's mmpretrain-name table and unknown-name suggestions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from reference_sources import REFERENCE_SOURCES, reference_run
from timm.data import ImageNetInfo, create_transform, resolve_data_config

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints with timm)
from timm_hrnet.checkpoints import read_checkpoint
from timm_hrnet.classification import (
    MMPRETRAIN_NAMES,
    UnknownModelError,
    UnreadableImageError,
    get_model,
    inference_model,
    load_model,
    resolve_model_name,
)

SMALL_INPUT = dict(input_size=(3, 64, 64))


pytestmark = pytest.mark.usefixtures('single_torch_thread')


EXPECTED_MMPRETRAIN = {
    'hrnet-w18_3rdparty_8xb32_in1k': 'hrnet_w18.ms_in1k',
    'hrnet-w30_3rdparty_8xb32_in1k': 'hrnet_w30.ms_in1k',
    'hrnet-w32_3rdparty_8xb32_in1k': 'hrnet_w32.ms_in1k',
    'hrnet-w40_3rdparty_8xb32_in1k': 'hrnet_w40.ms_in1k',
    'hrnet-w44_3rdparty_8xb32_in1k': 'hrnet_w44.ms_in1k',
    'hrnet-w48_3rdparty_8xb32_in1k': 'hrnet_w48.ms_in1k',
    'hrnet-w64_3rdparty_8xb32_in1k': 'hrnet_w64.ms_in1k',
    'hrnet-w18_3rdparty_8xb32-ssld_in1k': 'hrnet_w18_ssld.paddle_in1k',
    'hrnet-w48_3rdparty_8xb32-ssld_in1k': 'hrnet_w48_ssld.paddle_in1k',
}


@pytest.fixture(scope='module')
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('hrnet_w18_small', pretrained_cfg_overlay=SMALL_INPUT).eval()


@pytest.fixture(scope='module')
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(60, 70), (80, 64)]):
        path = folder / f'image{i}.png'
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _reference_scores(model: torch.nn.Module, path: str) -> torch.Tensor:
    """Softmax computed straight from timm's transform, independently of inference_model."""
    transform = create_transform(**resolve_data_config(model=model))
    with torch.no_grad():
        return model(transform(Image.open(path).convert('RGB')).unsqueeze(0)).softmax(-1)[0]


def test_single_path_gives_one_decoded_dict(model: torch.nn.Module, image_paths: list[str]) -> None:
    result = inference_model(model, image_paths[0], topk=4)
    reference = _reference_scores(model, image_paths[0])
    torch.testing.assert_close(result['pred_scores'], reference, rtol=1e-4, atol=1e-6)
    assert result['pred_scores'].shape == (1000,)
    assert result['pred_label'] == int(reference.argmax())
    assert result['pred_class'] == ImageNetInfo().index_to_description(result['pred_label'])
    assert result['pred_score'] == pytest.approx(float(reference.max()), rel=1e-4)
    assert len(result['topk']) == 4
    scores = [score for _, _, score in result['topk']]
    assert scores == sorted(scores, reverse=True)
    assert result['topk'][0] == (result['pred_label'], result['pred_class'], result['pred_score'])
    assert [label for label, _, _ in result['topk']] == reference.topk(4).indices.tolist()


def test_input_types_agree_and_lists_give_lists(model: torch.nn.Module, image_paths: list[str]) -> None:
    from_paths = inference_model(model, image_paths)
    assert isinstance(from_paths, list) and len(from_paths) == 2
    pil_images = [Image.open(path) for path in image_paths]
    arrays = [np.asarray(image.convert('RGB')) for image in pil_images]
    transform = create_transform(**resolve_data_config(model=model))
    batch = torch.stack([transform(image.convert('RGB')) for image in pil_images])
    for other in (inference_model(model, pil_images), inference_model(model, arrays), inference_model(model, batch)):
        assert [r['pred_label'] for r in other] == [r['pred_label'] for r in from_paths]
        for mine, theirs in zip(other, from_paths, strict=True):
            torch.testing.assert_close(mine['pred_scores'], theirs['pred_scores'], rtol=1e-4, atol=1e-6)
    assert isinstance(inference_model(model, arrays[0]), dict)
    assert isinstance(inference_model(model, batch[0]), dict)


def test_label_names_from_pretrained_cfg_and_topk_clamped() -> None:
    names = ['cat', 'dog', 'cow']
    model = timm.create_model(
        'hrnet_w18_small', num_classes=3, pretrained_cfg_overlay=dict(**SMALL_INPUT, label_names=names)
    )
    model.train()
    result = inference_model(model, np.full((64, 64, 3), 128, dtype=np.uint8), topk=5)
    assert model.training, 'inference_model must restore the train/eval mode'
    assert len(result['topk']) == 3
    assert sorted(name for _, name, _ in result['topk']) == sorted(names)
    assert result['pred_class'] == names[result['pred_label']]
    assert float(result['pred_scores'].sum()) == pytest.approx(1.0, abs=1e-5)


def test_unreadable_image_error_names_the_path(model: torch.nn.Module, tmp_path) -> None:
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8\xff\xe0 definitely not a jpeg')
    with pytest.raises(UnreadableImageError, match='broken.jpg'):
        inference_model(model, [str(broken)])


@pytest.mark.parametrize('mmpretrain_name', sorted(EXPECTED_MMPRETRAIN))
def test_mmpretrain_name_maps_to_registered_weights(mmpretrain_name: str) -> None:
    timm_name = resolve_model_name(mmpretrain_name)
    assert timm_name == EXPECTED_MMPRETRAIN[mmpretrain_name]
    assert timm_name in timm.list_pretrained(), f'{timm_name} has no pretrained cfg registered'
    assert timm.models.get_pretrained_cfg(timm_name).num_classes == 1000


def test_mmpretrain_table_is_exactly_the_nine_names() -> None:
    assert MMPRETRAIN_NAMES == EXPECTED_MMPRETRAIN


def test_get_model_builds_our_variant_for_an_mmpretrain_name() -> None:
    with torch.device('meta'):
        model = get_model('hrnet-w18_3rdparty_8xb32-ssld_in1k')
    reference = timm.create_model('hrnet_w18_ssld.paddle_in1k', pretrained=False)
    assert type(model) is type(reference)
    assert model.pretrained_cfg['architecture'] == 'hrnet_w18_ssld'
    assert model.pretrained_cfg['tag'] == 'paddle_in1k'
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


@pytest.mark.parametrize('name, suggestion', [
    ('hrnet_w81', 'hrnet_w18'),
    ('hrnet_w18.ms_in1kk', 'hrnet_w18.ms_in1k'),
    ('hrnet-w18_3rdparty_in1k', 'hrnet-w18_3rdparty_8xb32_in1k'),
])
def test_unknown_name_lists_close_matches(name: str, suggestion: str) -> None:
    with pytest.raises(UnknownModelError, match='did you mean') as error:
        get_model(name)
    assert suggestion in str(error.value)


def test_timm_names_with_and_without_tag_pass_through() -> None:
    assert resolve_model_name('hrnet_w18_small') == 'hrnet_w18_small'
    assert resolve_model_name('hrnet_w18.ms_in1k') == 'hrnet_w18.ms_in1k'


@pytest.mark.parametrize('source', REFERENCE_SOURCES)
def test_extract_feat_mapping_documented_in_tools_md(source: str, tmp_path: Path) -> None:
    """mmpretrain extract_feat(stage='backbone') == features_only(feature_location=''), stage='neck' == pre_logits."""
    from timm_hrnet.convert import convert_state_dict

    reference = reference_run(source, 'mmpretrain', tmp_path)
    state_dict = convert_state_dict(reference.checkpoint, 'hrnet_w18')
    image = reference.input
    with torch.device('meta'):  # no random init: every tensor is assigned from the checkpoint
        model = get_model('hrnet-w18_3rdparty_8xb32_in1k')
        backbone = get_model('hrnet-w18_3rdparty_8xb32_in1k', features_only=True, feature_location='',
                             out_indices=(1, 2, 3, 4))
    model.load_state_dict(state_dict, assign=True)
    backbone_keys = set(backbone.state_dict())
    backbone.load_state_dict({k: v for k, v in state_dict.items() if k in backbone_keys}, assign=True)
    model.eval(), backbone.eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(image), pre_logits=True)
        branches = backbone(image)
    torch.testing.assert_close(pooled, reference.outputs['neck_feat'], rtol=1e-4, atol=1e-4)
    assert len(branches) == 4
    assert max(reference.branch_diffs(branches, 'backbone_feats')) <= 1e-4


def test_topk_below_one_is_a_value_error(model: torch.nn.Module, image_paths: list[str]) -> None:
    with pytest.raises(ValueError, match='topk must be at least 1'):
        inference_model(model, image_paths[0], topk=0)


@pytest.mark.parametrize('name', ['hf-hub:someone/hrnet_w18_small.ft', 'local-dir:/models/hrnet_w18_small_10cls'])
def test_source_prefixed_names_pass_through(name: str) -> None:
    assert resolve_model_name(name) == name


@pytest.mark.parametrize('name, problem', [('ftp:host/hrnet', 'Unknown model source'), ('org/hrnet', 'hf-hub:')])
def test_bad_source_prefix_or_bare_repo_id_is_unknown_model(name: str, problem: str) -> None:
    with pytest.raises(UnknownModelError, match=problem):
        resolve_model_name(name)


def test_local_dir_model_loads_with_and_without_checkpoint(tmp_path: Path) -> None:
    """A local-dir repo (model.safetensors + config.json) loads as it is, and takes a checkpoint of another class count
    (the classifier found through the pretrained cfg's `classifier` name)."""
    torch.manual_seed(0)
    saved = timm.create_model('hrnet_w18_small', num_classes=3, pretrained_cfg_overlay=SMALL_INPUT).eval()
    timm.models.save_for_hf(saved, tmp_path / 'repo', safe_serialization=True)
    loaded = load_model(f'local-dir:{tmp_path / "repo"}')
    assert loaded.num_classes == 3
    assert tuple(loaded.pretrained_cfg['input_size']) == SMALL_INPUT['input_size']  # config.json gives a list
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)

    other = timm.create_model('hrnet_w18_small', num_classes=5)
    torch.save(other.state_dict(), tmp_path / 'five.pth')
    for checkpoint in (tmp_path / 'five.pth', read_checkpoint(tmp_path / 'five.pth')):  # a path or the value read
        fine_tuned = load_model(f'local-dir:{tmp_path / "repo"}', checkpoint)
        assert fine_tuned.num_classes == 5
        torch.testing.assert_close(fine_tuned.classifier.weight, other.classifier.weight, rtol=0, atol=0)


@pytest.mark.parametrize('kwargs', [dict(features_only=True), dict(num_classes=0)])
def test_a_model_without_a_classifier_is_refused_by_name(kwargs: dict) -> None:
    model = timm.create_model('hrnet_w18_small', pretrained_cfg_overlay=SMALL_INPUT, **kwargs).eval()
    with pytest.raises(ValueError, match='inference_model needs a classifier'):
        inference_model(model, torch.zeros(3, 64, 64))
