"""hub_upload for OpenMMLab task checkpoints: mmpose (1.x ``head.final_layer``, 0.x ``keypoint_head.final_layer``) and
mmseg (HRNet + FCNHead) checkpoints become repos with the official keys whose config.json records the layout and what
the layout computes (mmseg's resizes), which load back to the source's outputs and which verify checks; a task
convert works out the checkpoint's architecture once.

The OpenMMLab checkpoints are written here from random official-layout weights, renaming keys in the direction
OpenMMLab's own code names them, independently of timm_hrnet's reader."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import safetensors
import torch
import yaml
from helpers import relative_diff
from hub_common import as_the_card_says, leftovers
from huggingface_hub import ModelCard
from task_reference import official_shapes, random_checkpoint, tiny_extra

import hub_upload.stage
import timm_hrnet.checkpoints.architecture
from hub_upload.__main__ import main
from hub_upload.batch import run_batch
from timm_hrnet.tasks.datasets import SEG_DATASETS
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tasks.segmentation import create_seg_model

pytestmark = pytest.mark.usefixtures('single_torch_thread')

IMAGE = ['--image-size', '64']
ODD_SIZE = (70, 100)  # not a multiple of 32: where mmseg's two-step resize and one resize give other numbers
_BN = re.compile(r'(^|\.)bn(\d)\.')  # the canonical bnN is OpenMMLab's normN


def _backbone(key: str) -> str:
    return 'backbone.' + _BN.sub(r'\1norm\2.', key)


def to_mmpose(state_dict: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """mmpose's TopdownPoseEstimator: the HRNet under ``backbone.``, the heatmap conv under ``{head}.final_layer``."""
    return {f'{head}.{k}' if k.startswith('final_layer.') else _backbone(k): v for k, v in state_dict.items()}


_MMSEG_HEAD = {'last_layer.0.': 'decode_head.convs.0.conv.', 'last_layer.1.': 'decode_head.convs.0.bn.',
               'last_layer.3.': 'decode_head.conv_seg.'}


def to_mmseg(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg's EncoderDecoder with an FCNHead (its conv has no bias: a BatchNorm follows) and a training-time
    auxiliary head, which is not part of the model."""
    converted = {}
    for key, value in state_dict.items():
        if key == 'last_layer.0.bias':
            continue
        head = next((prefix for prefix in _MMSEG_HEAD if key.startswith(prefix)), None)
        converted[_MMSEG_HEAD[head] + key[len(head):] if head else _backbone(key)] = value
    converted['auxiliary_head.conv_seg.weight'] = torch.zeros(19, 8, 1, 1)
    return converted


@pytest.fixture(scope='module')
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mmpose 1.x / 0.x checkpoints named as mmpose's model zoo names them (the crop size in the name), and an mmseg
    checkpoint carrying its class names in meta, as mmseg 1.x saves them."""
    folder = tmp_path_factory.mktemp('openmmlab')
    pose = random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17), seed=3)
    seg = random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19), seed=4)
    paths = dict(mmpose=folder / 'td-hm_hrnet-tiny_8xb64-210e_coco-256x192-0123abcd_20220909.pth',
                 mmpose_0x=folder / 'hrnet_tiny_coco_256x192-0123abcd_20200708.pth',
                 mmseg=folder / 'fcn_hr-tiny_4xb2-40k_cityscapes-512x1024-0123abcd_20200601.pth')
    torch.save({'meta': {'mmpose_version': '1.0.0'}, 'state_dict': to_mmpose(pose, 'head')}, paths['mmpose'])
    torch.save({'meta': {}, 'state_dict': to_mmpose(pose, 'keypoint_head')}, paths['mmpose_0x'])
    classes = list(SEG_DATASETS['cityscapes'].class_names)
    torch.save({'meta': {'dataset_meta': {'classes': classes}}, 'state_dict': to_mmseg(seg)}, paths['mmseg'])
    return paths


@pytest.fixture(scope='module')
def seg_repo(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('repos') / 'seg'
    assert main(['convert', str(sources['mmseg']), '--out', str(out), *IMAGE]) == 0
    return out


@pytest.mark.parametrize('name', ['mmpose', 'mmpose_0x'])
def test_mmpose_checkpoints_become_repos_that_load_back(
        sources: dict[str, Path], tmp_path: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'pose'
    assert main(['convert', str(sources[name]), '--out', str(out), *IMAGE]) == 0
    assert "input size 256x192 from the file name" in capsys.readouterr().out
    config = json.loads((out / 'config.json').read_text())
    assert (config['architecture'], config['source_layout'], config['input_size']) == ('hrnet_pose', 'mmpose',
                                                                                        [3, 256, 192])
    with safetensors.safe_open(out / 'model.safetensors', framework='pt') as f:
        metadata, keys = f.metadata(), set(f.keys())
    assert metadata['source_layout'] == 'mmpose' and metadata['task'] == 'pose'
    assert 'final_layer.weight' in keys and 'bn1.weight' in keys and not any(k.startswith('backbone.') for k in keys)
    # what the card says to run, on the weights alone, gives the source's outputs and decodes as mmpose does
    readme = (out / 'README.md').read_text()
    assert "timm_hrnet.create_pose_model(weights, input_size=(256, 192), codec='mmpose')" in readme
    assert 'model.safetensors config.json --local-dir' in readme  # the command line reads `codec` there
    repo = as_the_card_says(out, bare_weights(out, tmp_path))
    source = create_pose_model(sources[name])
    assert repo.codec.spec == source.codec.spec == 'mmpose' and repo.input_size == (256, 192)
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert relative_diff(repo(x), source(x)) == 0
    card = ModelCard.load(out / 'README.md').text
    assert "OpenMMLab mmpose's top-down heatmap HRNet" in card and 'a checkpoint in the mmpose layout' in card
    assert main(['verify', str(out), '--against', str(sources[name]), '--source', 'mmpose', *IMAGE]) == 0
    assert capsys.readouterr().out.startswith('verify OK (self-consistency only)')
    assert not leftovers(tmp_path)


def bare_weights(repo: Path, tmp_path: Path) -> Path:
    """The repo's model.safetensors alone in a folder, as `hf_hub_download` of that one file may leave it."""
    folder = tmp_path / 'downloaded'
    folder.mkdir()
    return Path(shutil.copy(repo / 'model.safetensors', folder))


def test_mmseg_checkpoint_becomes_a_repo_that_loads_back(seg_repo: Path, sources: dict[str, Path],
                                                         tmp_path: Path) -> None:
    config = json.loads((seg_repo / 'config.json').read_text())
    assert (config['architecture'], config['source_layout'], config['num_classes']) == ('hrnet_seg', 'mmseg', 19)
    assert config['align_corners'] is False and config['head_bias'] is False
    assert config['hrnet_spec']['upsample_by_stride'] is True and config['dataset'] == 'cityscapes'
    with safetensors.safe_open(seg_repo / 'model.safetensors', framework='pt') as f:
        keys = set(f.keys())
    assert 'last_layer.3.weight' in keys and 'last_layer.0.bias' not in keys
    assert not any(k.startswith(('backbone.', 'decode_head.', 'auxiliary_head.')) for k in keys)
    card = ModelCard.load(seg_repo / 'README.md')
    assert card.data.datasets == ['cityscapes'] and "layout='mmseg'" in card.text
    assert "OpenMMLab mmseg's HRNet + FCNHead" in card.text and 'mmsegmentation' in card.text

    x = torch.randn(1, 3, *ODD_SIZE)
    source = create_seg_model(sources['mmseg'])
    weights = bare_weights(seg_repo, tmp_path)
    plain = create_seg_model(weights, align_corners=False)
    with torch.no_grad():
        expected = source(x)
        assert relative_diff(as_the_card_says(seg_repo, weights)(x), expected) == 0
        assert relative_diff(plain(x), expected) > 1e-4  # why config.json must say how mmseg resizes
        assert relative_diff(create_seg_model(seg_repo / 'model.safetensors')(x), expected) == 0  # it is read there


def test_verify_checks_an_mmseg_repo_and_the_layout_its_config_records(
        seg_repo: Path, sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(['verify', str(seg_repo), '--against', str(sources['mmseg'])]) == 0  # at 256x200: no multiple of 32
    output = capsys.readouterr().out
    assert output.startswith('verify OK (self-consistency only)') and 'relative max diff 0 ' in output
    lost = tmp_path / 'lost'
    shutil.copytree(seg_repo, lost)
    config = json.loads((lost / 'config.json').read_text())
    (lost / 'config.json').write_text(json.dumps({**config, 'source_layout': 'official'}))
    assert main(['verify', str(lost), '--against', str(sources['mmseg']), *IMAGE]) == 1
    output = capsys.readouterr().out
    assert output.startswith('verify FAILED') and "config.json does not describe the source's model" in output
    assert 'source_layout' in output
    spec = {**config['hrnet_spec'], 'upsample_by_stride': False}  # the resizes lost: the model computes others
    (lost / 'config.json').write_text(json.dumps({**config, 'hrnet_spec': spec}))
    assert main(['verify', str(lost), '--against', str(sources['mmseg'])]) == 1
    output = capsys.readouterr().out
    assert output.startswith('verify FAILED')
    assert "config.json does not describe the source's model: hrnet_spec" in output
    assert main(['verify', str(seg_repo), '--against', str(sources['mmseg']), '--source', 'mmpose']) == 2
    assert 'whose sources come in the official or mmseg layout' in capsys.readouterr().err


def test_openmmlab_sources_refuse_what_does_not_fit_them_in_one_line(
        sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        ([str(sources['mmseg']), '--align-corners', 'true'], 'its model resizes with align_corners=False throughout'),
        ([str(sources['mmseg']), '--source', 'official'], 'is a segmentation checkpoint in the mmseg layout, not '
                                                          'official'),
        ([str(sources['mmseg']), '--source', 'mmpose'], '--source mmpose does not apply to segmentation'),
        ([str(sources['mmpose']), '--task', 'segmentation'], 'is an HRNet pose checkpoint, not a segmentation one'),
    ]
    for arguments, message in cases:
        assert main(['convert', *arguments, '--out', str(tmp_path / 'out')]) == 2, arguments
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], (arguments, err)
    assert not (tmp_path / 'out').exists() and not leftovers(tmp_path)


@pytest.fixture
def architecture_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every call of read_architecture, wherever a module looks it up, by the source it reads, split into those made
    while verifying a staged repo and the others (the conversion)."""
    original = timm_hrnet.checkpoints.architecture.read_architecture
    calls: dict[str, list[str]] = {'converting': [], 'verifying': []}
    phase = ['converting']

    def counting(state_dict, task, source='state dict', *args, **kwargs):
        calls[phase[0]].append(source)
        return original(state_dict, task, source, *args, **kwargs)

    patched = []
    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, '__dict__', {}).items()):
            if value is original:
                monkeypatch.setattr(module, name, counting)
                patched.append(module.__name__)
    assert 'timm_hrnet.checkpoints.reading' in patched and 'timm_hrnet.checkpoints' in patched, patched
    verify = hub_upload.stage.verify_dir

    def verifying(*args, **kwargs):
        phase[0] = 'verifying'
        try:
            return verify(*args, **kwargs)
        finally:
            phase[0] = 'converting'

    monkeypatch.setattr(hub_upload.stage, 'verify_dir', verifying)
    return calls


def test_a_pose_convert_works_out_the_architecture_once(
        sources: dict[str, Path], tmp_path: Path, architecture_reads: dict[str, list[str]]) -> None:
    """The CLI reads the file once (its task and the conversion both come from that read); verification reads the
    source again by its own path, once, and the staged weights."""
    source = f"'{sources['mmpose']}'"
    assert main(['convert', str(sources['mmpose']), '--out', str(tmp_path / 'pose'), *IMAGE]) == 0
    assert architecture_reads['converting'] == [source]
    assert architecture_reads['verifying'].count(source) == 1
    assert all('model.safetensors' in s for s in architecture_reads['verifying'] if s != source)


def test_a_seg_convert_works_out_the_architecture_once(
        sources: dict[str, Path], tmp_path: Path, architecture_reads: dict[str, list[str]]) -> None:
    """The same through a manifest, which names the mmseg layout."""
    manifest = tmp_path / 'mmseg.yaml'
    manifest.write_text(yaml.safe_dump(dict(repo_owner='someone', checkpoints=[
        dict(url=str(sources['mmseg']), task='segmentation', repo='seg', source='mmseg', metrics={'mIoU': 50.0})])))
    outcomes = run_batch(manifest, tmp_path / 'out', tmp_path / 'cache', verify_image_size=64, log=lambda line: None)
    assert [o.ok for o in outcomes] == [True], outcomes
    source = f"'{sources['mmseg']}'"
    assert architecture_reads['converting'] == [source]
    assert architecture_reads['verifying'].count(source) == 1
    assert json.loads((tmp_path / 'out' / 'seg' / 'config.json').read_text())['source_layout'] == 'mmseg'


def test_layout_names_spelled_out_for_a_light_cli_match_the_reader() -> None:
    from hub_upload.names import CLASSIFIER_SOURCES, TASK_LAYOUTS, TASK_SOURCES
    from hub_upload.task_repos import repo_layout
    from timm_hrnet.checkpoints import CANONICAL, LAYOUT_NAMES, MMPOSE, MMPRETRAIN, MMSEG, POSE, SEGMENTATION

    assert set(CLASSIFIER_SOURCES) == {'auto', *(name for name, layout in LAYOUT_NAMES.items()
                                                 if layout in (CANONICAL, MMPRETRAIN))}
    assert TASK_LAYOUTS == {POSE: (repo_layout(CANONICAL), MMPOSE), SEGMENTATION: (repo_layout(CANONICAL), MMSEG)}
    assert set(TASK_SOURCES) == {'auto', *(name for names in TASK_LAYOUTS.values() for name in names)}
