"""hub_upload for the task models: pose and segmentation checkpoints become repos that rebuild through timm_hrnet
(config.json, official keys, cards with the published results only when stated), verify catches a wrong tensor,
--force and the source rules hold, batch manifests describe task entries, and the shipped manifest is task_data's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
import yaml
from hub_common import leftovers, sha256, snapshot
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from reference_sources import REFERENCE_SOURCES, copy_checkpoint, reference_run

from hub_upload.__main__ import MANIFEST_DIR, SOURCES, main
from hub_upload.batch import load_manifest, run_batch
from hub_upload.model_card import TaskFacts
from hub_upload.names import CLASSIFICATION, TASK_ARCHITECTURES, TASK_SOURCES
from hub_upload.tasks import convert_task_to_dir
from timm_hrnet import checkpoints as tc
from timm_hrnet import create_pose_model, create_seg_model
from timm_hrnet.tasks.datasets import KEYPOINT_SETS, SEG_DATASETS

pytestmark = pytest.mark.usefixtures('single_torch_thread')

POSE_REPO = 'someone/hrnet_pose_small.coco'
RESULTS_URL = 'https://github.com/leoxiaobin/deep-high-resolution-net.pytorch'
IMAGE = ['--image-size', '64']  # verification input; the reduced models are checked in full below


def write_manifest(path: Path, entries: list[dict], **defaults: object) -> Path:
    """A YAML manifest (the same keys as TOML; metrics are a mapping)."""
    path.write_text(yaml.safe_dump(dict(repo_owner='someone', defaults=defaults, checkpoints=entries)))
    return path


@pytest.fixture(scope='module', params=REFERENCE_SOURCES)
def sources(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reduced official checkpoints, the pose one named as the releases are (the name carries the input size),
    and what the official code computed with them; the other files a test needs are kept in another folder."""
    written = tmp_path_factory.mktemp('reference')
    runs = {network: reference_run(request.param, network, written) for network in ('pose', 'seg', 'cls')}
    folder = tmp_path_factory.mktemp('downloads')
    pose = copy_checkpoint(runs['pose'], folder / 'pose_hrnet_small_256x192.pth')
    seg = copy_checkpoint(runs['seg'], folder / 'seg_hrnet_small_official_random.pth')
    unsized = copy_checkpoint(runs['pose'], written / 'pose_hrnet_small_official_random.pth')
    return dict(pose=pose, seg=seg, pose_unsized=unsized, classifier=runs['cls'].checkpoint, runs=runs)


@pytest.fixture(scope='module')
def pose_repo(sources: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    facts = TaskFacts(source_title='the official HRNet pose estimation release', results_url=RESULTS_URL,
                      metrics=(('AP', 74.4),), eval_split='val2017', eval_protocol='flip test')
    result = convert_task_to_dir(sources['pose'], tmp_path_factory.mktemp('repos') / 'pose', repo_id=POSE_REPO,
                                 facts=facts, verify_image_size=64, log=lambda message: None)
    assert result.report.ok and result.report.relative_diff == 0 and not result.report.independent
    assert (result.architecture, result.num_classes) == ('hrnet_pose', 17)
    assert result.preprocessing_origin == "input size 256x192 from the file name 'pose_hrnet_small_256x192.pth'"
    return result.out_dir


@pytest.fixture(scope='module')
def seg_repo(sources: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('repos') / 'seg'
    assert main(['convert', str(sources['seg']), '--out', str(out), *IMAGE]) == 0  # no results stated
    return out


def test_pose_repo_is_official_float32_weights_and_a_task_config(pose_repo: Path, sources: dict) -> None:
    assert sorted(p.name for p in pose_repo.iterdir()) == ['.hub_upload.json', 'README.md', 'config.json',
                                                           'model.safetensors']
    config = json.loads((pose_repo / 'config.json').read_text())
    assert (config['architecture'], config['task'], config['num_joints'], config['in_chans']) == (
        'hrnet_pose', 'pose', 17, 3)
    assert config['input_size'] == [3, 256, 192] and config['keypoints'] == 'coco' and config['heatmap_stride'] == 4
    assert config['hrnet_spec']['multi_scale_output'] is False and 'pretrained_cfg' not in config
    with safetensors.safe_open(pose_repo / 'model.safetensors', framework='pt') as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert (metadata['architecture'], metadata['task'], metadata['source_layout']) == ('hrnet_pose', 'pose', 'official')
    assert metadata['source_file'] == sources['pose'].name and metadata['source_sha256'] == sha256(sources['pose'])
    official = torch.load(sources['pose'], weights_only=True)
    assert sorted(tensors) == sorted(official)  # the official keys, nothing renamed
    assert all(torch.equal(tensors[k], official[k].float()) for k in tensors if official[k].is_floating_point())
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}
    assert not leftovers(pose_repo.parent)


def test_staged_repos_rebuild_and_reproduce_the_official_outputs(
        pose_repo: Path, seg_repo: Path, sources: dict) -> None:
    """What the cards tell users to run gives what the official code computed (the fixtures' reference outputs)."""
    config = json.loads((pose_repo / 'config.json').read_text())
    pose = create_pose_model(pose_repo / 'model.safetensors', input_size=tuple(config['input_size'][1:]))
    official = sources['runs']['pose']
    with torch.no_grad():
        assert official.diff('output', pose(official.input)) <= 1e-4
    assert pose.input_size == (256, 192)

    config = json.loads((seg_repo / 'config.json').read_text())
    assert (config['architecture'], config['task'], config['num_classes']) == ('hrnet_seg', 'segmentation', 19)
    assert config['align_corners'] is False and config['dataset'] == 'cityscapes'  # the Cityscapes configs' value
    seg = create_seg_model(seg_repo / 'model.safetensors', align_corners=config['align_corners'])
    official = sources['runs']['seg']
    with torch.no_grad():
        assert official.diff('output', seg(official.input)) <= 1e-4


def test_cards_carry_task_metadata_and_results_only_when_stated(pose_repo: Path, seg_repo: Path) -> None:
    card = ModelCard.load(pose_repo / 'README.md')
    data = card.data
    assert (data.pipeline_tag, data.library_name, data.license) == ('keypoint-detection', 'timm_hrnet', 'mit')
    assert {'keypoint-detection', 'hrnet', 'timm_hrnet'} <= set(data.tags) and data.datasets == ['coco']
    (result,) = data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_split) == ('keypoint-detection', 'coco', 'val2017')
    assert (result.metric_type, result.metric_value, result.metric_name) == ('AP', 74.4, 'AP (flip test)')
    assert result.source_url == RESULTS_URL
    name, reparsed = model_index_to_eval_results(data.to_dict()['model-index'])
    assert name == 'hrnet_pose_small.coco' and len(reparsed) == 1
    for expected in (f"hf_hub_download('{POSE_REPO}', 'model.safetensors')",
                     'timm_hrnet.create_pose_model(weights, input_size=(256, 192))', '--input-size 256x192',
                     'self-consistency', '| COCO | val2017 | AP | 74.4 | flip test |', 'arxiv.org/abs/1902.09212',
                     'booktitle={CVPR}'):
        assert expected in card.text, expected

    card = ModelCard.load(seg_repo / 'README.md')
    assert (card.data.pipeline_tag, card.data.datasets) == ('image-segmentation', ['cityscapes'])
    assert card.data.eval_results is None and 'model-index' not in card.content and '## Results' not in card.text
    for expected in ('timm_hrnet.create_seg_model(weights, align_corners=False)', '--align-corners false',
                     '| align_corners | False', 'self-consistency', 'YOUR_ORG/seg'):
        assert expected in card.text, expected


def test_verify_passes_for_the_source_and_fails_on_a_planted_tensor(
        seg_repo: Path, sources: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(['verify', str(seg_repo), '--against', str(sources['seg']), *IMAGE]) == 0
    output = capsys.readouterr().out
    assert output.startswith('verify OK (self-consistency only)') and 'relative max diff 0 ' in output
    assert main(['verify', str(seg_repo), *IMAGE]) == 0 and 'vs its own weights' in capsys.readouterr().out

    planted = tmp_path / 'planted'
    shutil.copytree(seg_repo, planted)
    weights = planted / 'model.safetensors'
    with safetensors.safe_open(weights, framework='pt') as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    # one tensor deep in the trunk (all its centre taps: a single weight can sit on a channel ReLU left at zero)
    tensors['stage3.0.branches.1.0.conv1.weight'][:, :, 1, 1] += 0.5
    safetensors.torch.save_file(tensors, weights, metadata=metadata)
    assert main(['verify', str(planted), '--against', str(sources['seg']), *IMAGE]) == 1
    output = capsys.readouterr().out
    assert output.startswith('verify FAILED (self-consistency only)') and 'relative max diff' in output

    config = json.loads((seg_repo / 'config.json').read_text())
    shutil.copyfile(seg_repo / 'model.safetensors', weights)
    (planted / 'config.json').write_text(json.dumps({**config, 'dataset': 'lip'}))
    assert main(['verify', str(planted), *IMAGE]) == 1
    assert 'config.json does not match what its weights build: dataset' in capsys.readouterr().out
    assert main(['verify', str(seg_repo), '--atol', '0.1']) == 2
    assert '--atol applies to classifier repos' in capsys.readouterr().err


def test_force_replaces_only_an_unchanged_task_repo_and_never_the_source(
        sources: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'pose'
    args = ['convert', str(sources['pose']), '--out', str(out), *IMAGE]
    assert main(args) == 0
    first = snapshot(out)
    assert main(args) == 2 and 'already exists; to replace a repo hub_upload staged there' in capsys.readouterr().err
    assert main([*args, '--force', '--license', 'apache-2.0', '--rtol', '1e-5']) == 0
    assert ModelCard.load(out / 'README.md').data.license == 'apache-2.0' and snapshot(out) != first
    (out / 'README.md').write_text('edited by hand\n')
    edited = snapshot(out)
    assert main([*args, '--force']) == 2
    assert 'has files changed since hub_upload wrote them (README.md)' in capsys.readouterr().err
    assert snapshot(out) == edited
    holder = sources['pose'].parent
    before = snapshot(holder)
    assert main(['convert', str(sources['pose']), '--out', str(holder), '--force']) == 2
    assert 'holds the source checkpoint' in capsys.readouterr().err and snapshot(holder) == before
    assert not leftovers(tmp_path)


def test_convert_refuses_what_it_cannot_state_in_one_line(
        sources: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pose = sources['pose_unsized']  # no size in its name
    seg = sources['seg']
    state_dict = torch.load(seg, weights_only=True)
    odd = tmp_path / 'seg_7_classes.pth'  # no released model has 7 classes: align_corners is unknown
    torch.save({**state_dict, 'last_layer.3.weight': state_dict['last_layer.3.weight'][:7],
                'last_layer.3.bias': state_dict['last_layer.3.bias'][:7]}, odd)
    classifier = sources['classifier']
    cases = [
        ([str(pose)], 'does not say the input size it was trained at'),
        ([str(sources['pose']), '--model', 'hrnet_w18'], 'is an HRNet pose checkpoint'),
        ([str(sources['pose']), '--align-corners', 'true'], '--align-corners does not apply to pose checkpoints'),
        ([str(sources['pose']), '--metric', 'mIoU=50'], "mIoU: not a pose metric"),
        ([str(seg), '--crop-pct', '0.9', '--atol', '1'], '--crop-pct, --atol do not apply to segmentation'),
        ([str(seg), '--input-size', '256x192'], '--input-size applies to pose checkpoints'),
        ([str(seg), '--task', 'pose'], 'is an HRNet segmentation checkpoint, not a pose one'),
        ([str(seg), '--dataset', 'ade20k'], 'has 19 classes, ade20k has 150'),
        ([str(odd)], 'pass --align-corners true|false'),
        ([str(odd), '--metric', 'mIoU=50', '--align-corners', 'true'], 'results need the dataset'),
        ([str(classifier)], 'is a classification checkpoint: pass --model'),
        ([str(classifier), '--model', 'hrnet_w18_small', '--metric', 'AP=1'], '--metric does not apply to classif'),
    ]
    for arguments, message in cases:
        assert main(['convert', *arguments, '--out', str(tmp_path / 'out')]) == 2, arguments
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], (arguments, err)
    assert not (tmp_path / 'out').exists() and not leftovers(tmp_path)


def test_batch_stages_task_entries_from_a_checkpoint_dir(
        sources: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_manifest(tmp_path / 'tasks.yaml', [
        dict(file=sources['pose'].name, task='pose', repo='pose_small', input_size=[3, 256, 192], dataset='coco',
             metrics={'AP': 74.4}, eval_split='val2017', results_url=RESULTS_URL),
        dict(file=sources['seg'].name, task='segmentation', repo='seg_small', align_corners=False, num_classes=19,
             dataset='cityscapes', metrics={'mIoU': 80.9}, eval_protocol='single scale, no flip'),
    ], source='official', license='mit')
    out_root = tmp_path / 'out'
    code = main(['batch', str(manifest), '--checkpoint-dir', str(sources['pose'].parent), '--out-root', str(out_root),
                 '--cache-dir', str(tmp_path / 'cache'), *IMAGE])
    output = capsys.readouterr().out
    assert code == 0, output
    assert '2 ok, 0 failed' in output and output.count('relative max diff 0 (self-consistency only)') == 2
    seg_card = ModelCard.load(out_root / 'seg_small' / 'README.md').data
    assert seg_card.eval_results[0].metric_value == 80.9 and seg_card.eval_results[0].metric_type == 'mIoU'
    assert json.loads((out_root / 'pose_small' / 'config.json').read_text())['input_size'] == [3, 256, 192]
    # no sha256 stated: staging records the file's digest, publishing is refused before anything is pushed
    outcomes = run_batch(manifest, out_root, tmp_path / 'cache', push=True, checkpoint_dir=sources['pose'].parent,
                         log=lambda line: None)
    assert [o.ok for o in outcomes] == [False, False]
    assert 'the manifest states no sha256' in outcomes[0].detail and sha256(sources['pose']) in outcomes[0].detail
    # without --checkpoint-dir the files are looked for next to the manifest
    code = main(['batch', str(manifest), '--out-root', str(tmp_path / 'other'), '--cache-dir', str(tmp_path)])
    assert code == 1 and 'pass --checkpoint-dir' in capsys.readouterr().out


@pytest.mark.parametrize('entry, message', [
    (dict(task='pose', model='hrnet_w18'), 'model do(es) not apply to a pose entry'),
    (dict(task='segmentation', crop_pct=0.9), 'crop_pct do(es) not apply'),
    (dict(task='segmentation', input_size=[3, 64, 64]), 'input_size do(es) not apply'),
    (dict(task='pose', align_corners=True), 'align_corners must be true or false on a segmentation entry'),
    (dict(task='segmentation', metrics={'AP': 1.0}), "'AP' is not a segmentation metric"),
    (dict(task='segmentation', metrics={'mIoU': 101}), 'metrics.mIoU must be a number in [0, 100]'),
    (dict(task='segmentation', source='mmpretrain'), 'source must be one of auto, official'),
    (dict(task='depth'), 'task must be one of classification, pose, segmentation'),
    (dict(model='hrnet_w18', metrics={'AP': 1.0}), 'metrics do(es) not apply to a classifier entry'),
    (dict(task='pose', url='https://example.org/pose.pth'), 'has no sha256'),
])
def test_manifest_task_entries_are_checked(tmp_path: Path, entry: dict, message: str) -> None:
    manifest = write_manifest(tmp_path / 'm.yaml', [dict(file='x.pth', repo='r', **entry)])
    with pytest.raises(ValueError, match=re.escape(message)):
        load_manifest(manifest)


# The official READMEs: pose_hrnet COCO val2017 AP (detected boxes, flip test); HRNetV2-W48 segmentation mIoU
PUBLISHED = {
    'pose_hrnet_w32_256x192.pth': ('coco', 74.4), 'pose_hrnet_w32_384x288.pth': ('coco', 75.8),
    'pose_hrnet_w48_256x192.pth': ('coco', 75.1), 'pose_hrnet_w48_384x288.pth': ('coco', 76.3),
    'hrnet_cs_8090_torch11.pth': ('cityscapes', 80.9), 'hrnet_lip_5583_torch04.pth': ('lip', 55.83),
    'hrnet_pascal_ctx_5410_torch11.pth': ('pascal_context_59', 54.1),
    'hrnet_ade20k_4312_torch04.pth': ('ade20k', 43.1), 'hrnet_cocostuff_3617_torch04.pth': ('cocostuff', 36.2),
}


def test_shipped_task_manifest_states_the_releases_as_task_data_knows_them(tmp_path: Path) -> None:
    entries = load_manifest(MANIFEST_DIR / 'official_pose_seg.toml', checkpoint_dir=tmp_path)
    assert {e.file_name for e in entries} == set(PUBLISHED) and len({e.repo_id for e in entries}) == len(entries)
    for entry in entries:
        dataset, value = PUBLISHED[entry.file_name]
        assert entry.url == str(tmp_path / entry.file_name) and entry.sha256 is None  # files the user downloads
        assert entry.dataset == dataset and entry.license == 'mit' and entry.source == 'official', entry.file_name
        assert entry.eval_split and entry.eval_protocol and entry.results_url and entry.source_config
        if entry.task == 'pose':
            assert entry.metrics == (('AP', value),) and KEYPOINT_SETS[dataset].num_joints == 17
            height, width = map(int, re.search(r'(\d+)x(\d+)', entry.file_name).groups())
            assert entry.input_size == (3, height, width) and f'{height}x{width}' in entry.source_config
            assert 'flip test' in entry.eval_protocol
        else:
            assert entry.task == 'segmentation' and entry.metrics == (('mIoU', value),)
            assert entry.num_classes == SEG_DATASETS[dataset].num_classes
            assert entry.align_corners == SEG_DATASETS[dataset].align_corners, entry.file_name


def test_names_spelled_out_for_a_light_cli_match_the_task_modules() -> None:
    assert set(TASK_ARCHITECTURES) == {tc.POSE, tc.SEGMENTATION} and CLASSIFICATION == tc.CLASSIFICATION
    assert set(TASK_SOURCES) <= set(SOURCES)
