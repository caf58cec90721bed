"""Facts in config.json and the card are the source's own: its evaluation protocol, its accuracy, its dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from hub_common import sha256, write_manifest
from huggingface_hub import ModelCard
from small_checkpoints import SMALL_MODEL, SmallCheckpoints

from hub_upload.__main__ import MANIFEST_DIR, main
from hub_upload.batch import load_manifest
from hub_upload.stage import Preprocessing, default_preprocessing

pytestmark = pytest.mark.usefixtures('single_torch_thread')

# mmpretrain's configs/hrnet/metafile.yml (the seed's table): name -> weights file, config, params, FLOPs, top-1, top-5
MMPRETRAIN_METAFILE = {
    'hrnet-w18_3rdparty_8xb32_in1k': ('hrnet-w18_3rdparty_8xb32_in1k_20220120-0c10b180.pth',
                                      'configs/hrnet/hrnet-w18_4xb32_in1k.py', 21295164, 4330397932, 76.75, 93.44),
    'hrnet-w30_3rdparty_8xb32_in1k': ('hrnet-w30_3rdparty_8xb32_in1k_20220120-8aa3832f.pth',
                                      'configs/hrnet/hrnet-w30_4xb32_in1k.py', 37708380, 8168305684, 78.19, 94.22),
    'hrnet-w32_3rdparty_8xb32_in1k': ('hrnet-w32_3rdparty_8xb32_in1k_20220120-c394f1ab.pth',
                                      'configs/hrnet/hrnet-w32_4xb32_in1k.py', 41228840, 8986267584, 78.44, 94.19),
    'hrnet-w40_3rdparty_8xb32_in1k': ('hrnet-w40_3rdparty_8xb32_in1k_20220120-9a2dbfc5.pth',
                                      'configs/hrnet/hrnet-w40_4xb32_in1k.py', 57553320, 12767574064, 78.94, 94.47),
    'hrnet-w44_3rdparty_8xb32_in1k': ('hrnet-w44_3rdparty_8xb32_in1k_20220120-35d07f73.pth',
                                      'configs/hrnet/hrnet-w44_4xb32_in1k.py', 67061144, 14963902632, 78.88, 94.37),
    'hrnet-w48_3rdparty_8xb32_in1k': ('hrnet-w48_3rdparty_8xb32_in1k_20220120-e555ef50.pth',
                                      'configs/hrnet/hrnet-w48_4xb32_in1k.py', 77466024, 17364014752, 79.32, 94.52),
    'hrnet-w64_3rdparty_8xb32_in1k': ('hrnet-w64_3rdparty_8xb32_in1k_20220120-19126642.pth',
                                      'configs/hrnet/hrnet-w64_4xb32_in1k.py', 128056104, 29002298752, 79.46, 94.65),
    'hrnet-w18_3rdparty_8xb32-ssld_in1k': ('hrnet-w18_3rdparty_8xb32-ssld_in1k_20220120-455f69ea.pth',
                                           'configs/hrnet/hrnet-w18_4xb32_in1k.py', 21295164, 4330397932, 81.06, 95.70),
    'hrnet-w48_3rdparty_8xb32-ssld_in1k': ('hrnet-w48_3rdparty_8xb32-ssld_in1k_20220120-d0459c38.pth',
                                           'configs/hrnet/hrnet-w48_4xb32_in1k.py', 77466024, 17364014752, 83.63,
                                           96.79),
}
# every one of those configs evaluates with configs/_base_/datasets/imagenet_bs32_pil_resize.py:
# ResizeEdge(scale=256, edge='short', backend='pillow') (bilinear by default), CenterCrop(224), ImageNet mean / std
MMPRETRAIN_EVALUATION = dict(input_size=(3, 224, 224), interpolation='bilinear', crop_pct=0.875, crop_mode='center',
                             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_every_shipped_entry_states_its_sources_own_protocol_and_numbers() -> None:
    entries = load_manifest(MANIFEST_DIR / 'mmpretrain_hrnet.toml')
    assert {e.display_name for e in entries} == set(MMPRETRAIN_METAFILE)
    for entry in entries:
        assert entry.source == 'mmpretrain' and entry.source_title == 'OpenMMLab mmpretrain model zoo'
        file, config, params, flops, top1, top5 = MMPRETRAIN_METAFILE[entry.display_name]
        assert (entry.file_name, entry.source_config, entry.params, entry.flops, entry.top1, entry.top5) == (
            file, config, params, flops, top1, top5), entry.display_name
        assert entry.dataset == 'imagenet-1k' and entry.expected_sha256 == file[-12:-4]
        base, origin = default_preprocessing(entry.model, entry.source)
        written = base.with_overrides(**entry.preprocessing_overrides()).as_cfg()
        assert written == MMPRETRAIN_EVALUATION, (entry.display_name, written)  # no 288 test size for the ssld pair
        assert origin.startswith("mmpretrain's evaluation pipeline")


@pytest.mark.parametrize('model, source, expected', [
    ('hrnet_w18', 'mmpretrain', dict(crop_pct=0.875, interpolation='bilinear')),  # not ms_aug_in1k's 0.95
    ('hrnet_w18_ssld', 'mmpretrain', dict(crop_pct=0.875, test_input_size=None)),  # not paddle's 288 test size
    ('hrnet_w18', 'official', dict(crop_pct=0.875, interpolation='bilinear')),
    ('hrnet_w18', 'canonical', dict(crop_pct=0.95)),  # timm's default tag: the layout does not tell the source
    ('hrnet_w18_ssld.paddle_in1k', 'mmpretrain', dict(test_input_size=(3, 288, 288), test_crop_pct=1.0)),  # a tag wins
    ('hrnet_w18_small', 'timm', dict(interpolation='bicubic')),
])
def test_the_source_brings_its_preprocessing(model: str, source: str, expected: dict) -> None:
    preprocessing, _ = default_preprocessing(model, source)
    assert {key: getattr(preprocessing, key) for key in expected} == expected


def test_an_mmpretrain_file_gets_mmpretrain_facts_and_a_manifest_names_the_publisher(
        small: SmallCheckpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'plain'
    assert main(['convert', str(small.mmpretrain_pth), '--model', SMALL_MODEL, '--out', str(out),
                 '--image-size', '32']) == 0  # hrnet_w18_small's default tag would say bicubic
    assert "preprocessing in config.json: mmpretrain's evaluation pipeline" in capsys.readouterr().out
    cfg = json.loads((out / 'config.json').read_text())['pretrained_cfg']
    assert (cfg['crop_pct'], cfg['interpolation'], 'test_input_size' in cfg) == (0.875, 'bilinear', False)
    card = (out / 'README.md').read_text()
    assert '| Source | a checkpoint in the mmpretrain layout |' in card and 'model zoo' not in card

    manifest = write_manifest(tmp_path / 'm.toml', [dict(
        url=str(small.mmpretrain_pth), sha256=sha256(small.mmpretrain_pth), model=SMALL_MODEL, repo='named',
        top1=72.5, top5=90.75, test_input_size=[3, 256, 256], test_crop_pct=1.0)],
        source='mmpretrain', source_title='OpenMMLab mmpretrain model zoo', dataset='imagenet-1k',
        results_url='https://github.com/open-mmlab/mmpretrain/tree/main/configs/hrnet')
    assert main(['batch', str(manifest), '--out-root', str(tmp_path), '--image-size', '32']) == 0
    named = tmp_path / 'named'
    card = ModelCard.load(named / 'README.md')
    assert '| Source | OpenMMLab mmpretrain model zoo, `hrnet-w18-small_mmpretrain` |' in card.text
    assert 'published accuracy measured at 256 with crop_pct 1.0' in card.text  # the entry's own protocol
    assert card.data.eval_results[0].source_name == 'OpenMMLab mmpretrain model zoo'
    cfg = json.loads((named / 'config.json').read_text())['pretrained_cfg']
    assert (cfg['test_input_size'], cfg['test_crop_pct'], cfg['crop_pct']) == ([3, 256, 256], 1.0, 0.875)


@pytest.fixture(scope='module')
def three_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('finetune') / 'hrnet_w18_small_3cls.pth'
    torch.manual_seed(0)
    torch.save(timm.create_model(SMALL_MODEL, num_classes=3).state_dict(), path)
    return path


def test_a_fine_tune_is_not_called_imagenet(three_class: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    convert = ['convert', str(three_class), '--model', SMALL_MODEL, '--image-size', '32']
    assert main([*convert, '--out', str(tmp_path / 'unstated')]) == 0
    card = ModelCard.load(tmp_path / 'unstated' / 'README.md')
    assert card.data.datasets is None and card.data.eval_results is None and 'ImageNet' not in card.text
    assert 'with 3 classes (the training data is not stated)' in card.text and '| Classes | 3 |' in card.text
    assert 'k=3)' in card.text  # the usage snippet's top-k fits the class count
    capsys.readouterr()

    for extra, problem in [(['--dataset', 'imagenet-1k'], 'so it was not trained on imagenet-1k'),
                           (['--num-classes', '10'], 'has a 3-class classifier, not the 10 classes stated')]:
        assert main([*convert, '--out', str(tmp_path / 'bad'), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0], err
        assert not (tmp_path / 'bad').exists()

    assert main([*convert, '--out', str(tmp_path / 'stated'), '--dataset', 'traffic-lights-3', '--num-classes',
                 '3']) == 0
    card = ModelCard.load(tmp_path / 'stated' / 'README.md')
    assert card.data.datasets == ['traffic-lights-3'] and 'trained on traffic-lights-3' in card.text


def test_preprocessing_of_an_unknown_tag_is_an_error() -> None:
    with pytest.raises(RuntimeError, match='Invalid pretrained tag'):
        Preprocessing.for_model('hrnet_w18.bogus')
