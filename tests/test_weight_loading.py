"""Loading weights the ways timm users do, offline: pretrained=True through a Hugging Face cache, hf-hub:, local-dir:,
pretrained_cfg_overlay=dict(file=...) and checkpoint_path=, for our package and for plain timm."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants
from small_checkpoints import SMALL_MODEL, SmallCheckpoints, assert_state_dicts_equal

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints)
from hub_upload.model_card import CardFacts
from hub_upload.stage import convert_to_dir

HUB_WEIGHTS_ID = 'timm/hrnet_w18_small.ms_in1k'  # where timm's pretrained cfg sends pretrained=True
CONVERTED_REPO_ID = 'someone/hrnet_w18_small.mmpretrain_test'


def write_hf_cache(cache_dir: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub's cache does: content-addressed blobs, a snapshot of symlinks, refs/main."""
    repo_root = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo_root / 'snapshots' / commit
    for directory in (repo_root / 'blobs', repo_root / 'refs', snapshot):
        directory.mkdir(parents=True, exist_ok=True)
    (repo_root / 'refs' / 'main').write_text(commit)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo_root / 'blobs' / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path('..') / '..' / 'blobs' / blob.name)


@pytest.fixture(scope='module')
def converted_repo(small: SmallCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo directory made by hub_upload from the mmpretrain-layout checkpoint."""
    out = tmp_path_factory.mktemp('repos') / 'hrnet_w18_small.mmpretrain_test'
    return convert_to_dir(  # the ms_in1k cfg: bilinear, crop 0.875, as mmpretrain evaluates
        small.mmpretrain_pth, f'{SMALL_MODEL}.ms_in1k', out,
        repo_id=CONVERTED_REPO_ID, facts=CardFacts(source='mmpretrain'), verify_image_size=64,
    ).out_dir


@pytest.fixture(scope='module')
def hf_cache(small: SmallCheckpoints, converted_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp('hf_cache')
    write_hf_cache(cache, HUB_WEIGHTS_ID, {'model.safetensors': small.canonical_safetensors})
    write_hf_cache(cache, CONVERTED_REPO_ID, {p.name: p for p in converted_repo.iterdir()})
    return cache


@pytest.fixture
def offline_hub(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub reads its env at import: patch the constants it consults on every call as well."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(hf_cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(hf_cache))
    return hf_cache


def test_pretrained_true_reads_the_hf_cache(offline_hub: Path, small: SmallCheckpoints) -> None:
    model = timm.create_model(f'{SMALL_MODEL}.ms_in1k', pretrained=True)
    assert type(model).__module__.startswith('timm_hrnet')
    assert_state_dicts_equal(model.state_dict(), small.state_dict)


def test_pretrained_true_with_new_head_keeps_the_backbone(offline_hub: Path, small: SmallCheckpoints) -> None:
    model = timm.create_model(f'{SMALL_MODEL}.ms_in1k', pretrained=True, num_classes=7)
    assert model.get_classifier().out_features == 7
    assert torch.equal(model.state_dict()['stage4.0.fuse_layers.3.0.0.0.weight'],
                       small.state_dict['stage4.0.fuse_layers.3.0.0.0.weight'])


def test_hf_hub_prefix_loads_a_hub_upload_repo(offline_hub: Path, converted_repo: Path) -> None:
    model = timm.create_model(f'hf-hub:{CONVERTED_REPO_ID}', pretrained=True)
    assert_state_dicts_equal(model.state_dict(), safetensors.torch.load_file(converted_repo / 'model.safetensors'))
    assert model.pretrained_cfg['interpolation'] == 'bilinear' and model.pretrained_cfg['crop_pct'] == 0.875


def test_local_dir_loads_a_hub_upload_repo(converted_repo: Path, small: SmallCheckpoints) -> None:
    model = timm.create_model(f'local-dir:{converted_repo}', pretrained=True)
    assert_state_dicts_equal(model.state_dict(), small.state_dict)
    features = timm.create_model(f'local-dir:{converted_repo}', pretrained=True, features_only=True)
    assert torch.equal(features.state_dict()['conv1.weight'], small.state_dict['conv1.weight'])


@pytest.mark.parametrize('kind', ['canonical_safetensors', 'canonical_pth', 'mmpretrain_pth'])
def test_pretrained_cfg_overlay_file_accepts_every_layout(small: SmallCheckpoints, kind: str) -> None:
    path = getattr(small, kind)
    model = timm.create_model(SMALL_MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_state_dicts_equal(model.state_dict(), small.state_dict)


def test_pretrained_cfg_overlay_mmpretrain_file_for_features_only(small: SmallCheckpoints) -> None:
    model = timm.create_model(
        SMALL_MODEL, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(small.mmpretrain_pth)))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], small.state_dict[k]) for k in loaded if k in small.state_dict)
    assert 'stage4.0.fuse_layers.3.0.0.0.weight' in loaded


@pytest.mark.parametrize('kind', ['canonical_safetensors', 'canonical_pth', 'mmpretrain_pth'])
def test_checkpoint_path_accepts_every_layout(small: SmallCheckpoints, kind: str) -> None:
    model = timm.create_model(SMALL_MODEL, checkpoint_path=str(getattr(small, kind)))
    assert_state_dicts_equal(model.state_dict(), small.state_dict)


PLAIN_TIMM_SCRIPT = textwrap.dedent(f'''
    import json, sys
    import safetensors.torch, timm, torch
    expected = {{name: safetensors.torch.load_file(path) for name, path in json.loads(sys.argv[1]).items()}}
    models = {{
        'pretrained': timm.create_model('hrnet_w18_small.ms_in1k', pretrained=True),
        'hf-hub': timm.create_model('hf-hub:{CONVERTED_REPO_ID}', pretrained=True),
        'local-dir': timm.create_model('local-dir:' + sys.argv[2], pretrained=True),
    }}
    assert not any(m.startswith('timm_hrnet') for m in sys.modules), 'plain timm must not import timm_hrnet'
    for name, model in models.items():
        assert type(model).__module__ == 'timm.models.hrnet', type(model)
        state = model.state_dict()
        want = expected[name]
        assert sorted(state) == sorted(want), name
        assert all(torch.equal(state[k], want[k]) for k in want), name
    print('plain timm loaded', sorted(models))
''')


def test_plain_timm_loads_our_files_without_our_package(
        hf_cache: Path, small: SmallCheckpoints, converted_repo: Path, tmp_path: Path) -> None:
    expected = {
        'pretrained': str(small.canonical_safetensors),
        'hf-hub': str(converted_repo / 'model.safetensors'),
        'local-dir': str(converted_repo / 'model.safetensors'),
    }
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(hf_cache), 'PYTHONPATH': '', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run(
        [sys.executable, '-c', PLAIN_TIMM_SCRIPT, json.dumps(expected), str(converted_repo)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plain timm loaded ['hf-hub', 'local-dir', 'pretrained']" in result.stdout


@pytest.mark.parametrize('create_kwargs', [dict(num_classes=10), dict(features_only=True)])
def test_incomplete_pretrained_weights_are_refused_by_name(tmp_path: Path, create_kwargs: dict) -> None:
    """timm loads non-strictly for another class count or a features model; a missing trunk key must still fail."""
    state = timm.create_model(SMALL_MODEL).state_dict()
    del state['stage3.0.fuse_layers.2.0.0.0.weight']
    path = tmp_path / 'incomplete.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=r'missing keys \(1\): stage3\.0\.fuse_layers\.2\.0\.0\.0\.weight'):
        timm.create_model(SMALL_MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **create_kwargs)


def test_foreign_pretrained_keys_are_refused_by_name(tmp_path: Path) -> None:
    state = timm.create_model(SMALL_MODEL).state_dict()
    state['stage2.0.attention.weight'] = torch.zeros(3)
    path = tmp_path / 'foreign.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=r'unexpected .*stage2\.0\.attention\.weight'):
        timm.create_model(SMALL_MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=3)


def test_features_model_drops_only_the_pruned_head(tmp_path: Path) -> None:
    classifier = timm.create_model(SMALL_MODEL).eval()
    path = tmp_path / 'full.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    features = timm.create_model(
        SMALL_MODEL, features_only=True, out_indices=(1, 2), pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        for got, want in zip(features(x), expected, strict=True):
            assert torch.equal(got, want)
