"""hub_upload: convert -> verify -> stage, the model card, push (dry run, refusals, unreachable Hub) and batch runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import timm
import torch
from hub_common import FakeHfApi, cache_entry, leftovers, serve, sha256, snapshot, write_manifest
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from small_checkpoints import (
    SMALL_MODEL,
    SmallCheckpoints,
    canonical_to_mmpretrain,
    random_state_dict,
)

import hub_upload.batch
import hub_upload.push
import hub_upload.stage
import hub_upload.verify
import timm_hrnet.download
from hub_upload.__main__ import MANIFEST_DIR, SOURCES, main
from hub_upload.batch import load_manifest
from hub_upload.model_card import CardFacts
from hub_upload.push import PushRefusedError, push_dir
from hub_upload.stage import VerificationError, convert_to_dir
from hub_upload.verify import VerifyReport
from timm_hrnet.convert import LAYOUT_NAMES
from timm_hrnet.download import HashMismatchError, fetch
from timm_hrnet.pretrained_cfgs import PAPER
from timm_hrnet.tools.model_table import count_params_and_macs

REPO_ID = 'someone/hrnet_w18_small.mmpretrain_test'
SOURCE_URL = 'https://example.org/hrnet-w18-small_mmpretrain.pth'


pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.fixture(scope='module')
def staged(small: SmallCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> Path:
    facts = CardFacts(
        source='mmpretrain', source_name='hrnet-w18-small_mmpretrain', source_url=SOURCE_URL, license='apache-2.0',
        top1=72.5, top5=90.75, source_params=13187464, source_flops=1611000000,
    )
    result = convert_to_dir(  # the ms_in1k tag's preprocessing (bilinear), not the default gluon tag's (bicubic)
        small.mmpretrain_pth, f'{SMALL_MODEL}.ms_in1k',
        tmp_path_factory.mktemp('repos') / 'hrnet_w18_small.mmpretrain_test',
        repo_id=REPO_ID, facts=facts, verify_image_size=32,
    )
    assert result.report.ok and result.report.max_abs_diff == 0 and result.architecture == SMALL_MODEL
    return result.out_dir


def test_staged_weights_are_canonical_float32_with_provenance(staged: Path, small: SmallCheckpoints) -> None:
    assert sorted(p.name for p in staged.iterdir()) == ['.hub_upload.json', 'README.md', 'config.json',
                                                        'model.safetensors']
    with safetensors.safe_open(staged / 'model.safetensors', framework='pt') as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert metadata['source_file'] == small.mmpretrain_pth.name
    assert metadata['source_sha256'] == sha256(small.mmpretrain_pth)
    assert metadata['source_layout'] == 'mmpretrain' and metadata['architecture'] == SMALL_MODEL
    assert metadata['source_sha256_check'] == 'unchecked'  # a local file: nothing to check it against
    assert sorted(tensors) == sorted(small.state_dict)
    assert all(torch.equal(tensors[k], small.state_dict[k]) for k in tensors)
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}
    assert not leftovers(staged.parent)


def test_config_is_timm_format_with_source_preprocessing(staged: Path) -> None:
    config = json.loads((staged / 'config.json').read_text())
    assert config['architecture'] == SMALL_MODEL and config['num_classes'] == 1000 and config['num_features'] == 2048
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 224, 224] and cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bilinear'
    assert cfg['mean'] == [0.485, 0.456, 0.406] and cfg['license'] == 'apache-2.0'
    assert cfg['origin_url'] == SOURCE_URL and 'hf_hub_id' not in cfg and 'tag' not in cfg
    assert cfg['paper_ids'] == 'arXiv:1908.07919' and cfg['paper_name'] == PAPER
    assert 'test_input_size' not in cfg and 'test_crop_pct' not in cfg
    model = timm.create_model(f'local-dir:{staged}', pretrained=False)
    assert timm.data.resolve_model_data_config(model)['crop_pct'] == 0.875


def test_model_card_parses_and_carries_results(staged: Path) -> None:
    card = ModelCard.load(staged / 'README.md')
    data = card.data
    assert isinstance(data, ModelCardData)
    assert data.library_name == 'timm' and data.license == 'apache-2.0' and data.datasets == ['imagenet-1k']
    assert 'image-classification' in data.tags and data.pipeline_tag == 'image-classification'
    results = {r.metric_name: r for r in data.eval_results}
    assert results['Top 1 Accuracy'].metric_value == 72.5 and results['Top 5 Accuracy'].metric_value == 90.75
    assert results['Top 1 Accuracy'].dataset_type == 'imagenet-1k'
    model_name, reparsed = model_index_to_eval_results(data.to_dict()['model-index'])
    assert model_name == 'hrnet_w18_small.mmpretrain_test' and len(reparsed) == 2
    text = card.text
    params, macs = count_params_and_macs(SMALL_MODEL, (3, 224, 224))
    assert f'| Params (M) | {params / 1e6:.2f} |' in text and f'| GMACs | {macs / 1e9:.2f} (at 224x224) |' in text
    assert f'[{PAPER}](https://arxiv.org/abs/1908.07919)' in text
    for expected in ('| Params (M) | 13.19 |', '| GMACs | 1.6', 'arxiv.org/abs/1908.07919', SOURCE_URL,
                     f"timm.create_model('hf-hub:{REPO_ID}', pretrained=True)", 'features_only=True',
                     '@article{', 'Transactions on Pattern Analysis and Machine Intelligence', '13,187,464'):
        assert expected in text, expected


def test_convert_cli_refuses_to_overwrite_without_force(
        staged: Path, small: SmallCheckpoints, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(staged)
    assert main(['convert', str(small.canonical_pth), '--model', SMALL_MODEL, '--out', str(staged)]) == 2
    assert 'already exists; to replace a repo hub_upload staged there, pass --force' in capsys.readouterr().err
    assert snapshot(staged) == before


def test_convert_cli_force_replaces_its_own_repo(small: SmallCheckpoints, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'repo'
    args = ['convert', str(small.canonical_safetensors), '--model', SMALL_MODEL, '--out', str(out),
            '--source', 'timm', '--image-size', '32']
    assert main(args) == 0
    first = snapshot(out)
    assert main([*args, '--license', 'apache-2.0', '--force']) == 0
    output = capsys.readouterr().out
    assert 'verify OK' in output and "through timm's built-in hrnet_w18_small" in output
    assert sorted(p.name for p in out.iterdir()) == ['.hub_upload.json', 'README.md', 'config.json',
                                                     'model.safetensors']
    assert ModelCard.load(out / 'README.md').data.license == 'apache-2.0' and snapshot(out) != first
    assert not leftovers(tmp_path)


def test_failed_conversion_writes_nothing(small: SmallCheckpoints, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'repo'
    assert main(['convert', str(small.canonical_pth), '--model', 'hrnet_w18', '--out', str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'does not fit hrnet_w18:' in err[0] and ' missing (' in err[0], err
    assert 'it is a hrnet_w18_small checkpoint: pass --model hrnet_w18_small' in err[0]
    assert len(err[0]) < 600
    assert not out.exists() and not leftovers(tmp_path)


def test_failed_verification_keeps_the_existing_dir(
        small: SmallCheckpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / 'repo'
    convert_to_dir(small.canonical_pth, SMALL_MODEL, out, verify_image_size=32)
    before = snapshot(out)

    def failing_verify(repo_dir, **kwargs) -> VerifyReport:
        assert (Path(repo_dir) / 'model.safetensors').is_file()  # verification runs on the complete staging dir
        return VerifyReport(Path(repo_dir), SMALL_MODEL, 'source', 'reference', True, max_abs_diff=0.5, atol=1e-4)

    monkeypatch.setattr(hub_upload.stage, 'verify_dir', failing_verify)
    with pytest.raises(VerificationError, match='max abs diff 0.5') as error:
        convert_to_dir(small.canonical_pth, SMALL_MODEL, out, force=True, verify_image_size=32)
    assert len(str(error.value).splitlines()) == 1 and 'nothing was written to' in str(error.value)
    assert snapshot(out) == before and not leftovers(tmp_path)


def test_verify_cli_passes_for_its_source_and_fails_for_another(
        staged: Path, small: SmallCheckpoints, tmp_path: Path, capsys) -> None:
    assert main(['verify', str(staged), '--against', str(small.mmpretrain_pth), '--image-size', '32']) == 0
    output = capsys.readouterr().out
    # no independent implementation of hrnet_w18_small in mmpretrain's layout: the report says what was checked
    assert 'verify OK (self-consistency only)' in output and 'max abs diff 0 ' in output
    other = tmp_path / 'other.pth'
    torch.save(canonical_to_mmpretrain(random_state_dict(SMALL_MODEL, seed=5)), other)
    assert main(['verify', str(staged), '--against', str(other), '--image-size', '32']) == 1
    output = capsys.readouterr().out
    assert 'verify FAILED' in output and 'max abs diff' in output and 'the repo records' in output


def test_push_dry_run_lists_files_and_touches_no_network(
        staged: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(hub_upload.push, 'HfApi', lambda *a, **k: pytest.fail('dry run must not create an HfApi'))
    assert main(['push', str(staged), '--repo-id', REPO_ID, '--revision', 'v1', '--dry-run']) == 0
    output = capsys.readouterr().out
    assert f'huggingface.co/{REPO_ID} (revision v1)' in output
    assert '.hub_upload.json' not in output  # the marker stays local
    for path in (p for p in staged.iterdir() if not p.name.startswith('.')):
        size = path.stat().st_size
        assert f'{path.name}' in output and f'{REPO_ID}/blob/v1/{path.name}' in output
        assert (f'{size} B' if size < 1024 else f'{size / 1024:.1f} KiB' if size < 1024 ** 2
                else f'{size / 1024 ** 2:.1f} MiB') in output
    assert 'warning' not in output
    assert main(['push', str(staged), '--repo-id', 'other/name', '--dry-run']) == 0
    assert "warning: the model card's usage snippets name another repo" in capsys.readouterr().out


def test_push_refuses_to_overwrite_remote_weights_unless_asked(staged: Path, monkeypatch) -> None:
    api = FakeHfApi(['.gitattributes', 'README.md', 'model.safetensors'], private=True)
    monkeypatch.setattr(hub_upload.push, 'HfApi', api)
    with pytest.raises(PushRefusedError, match=r'already holds weights \(model.safetensors\); pass --overwrite-w'):
        push_dir(staged, REPO_ID)
    assert [name for name, _ in api.calls] == ['create_repo']
    assert push_dir(staged, REPO_ID, overwrite_weights=True, private=True) == f'https://hub/{REPO_ID}/commit/1'
    upload = api.calls[-1][1]
    assert upload['folder_path'] == staged and sorted(upload['allow_patterns']) == [
        'README.md', 'config.json', 'model.safetensors']  # the hidden marker stays local
    assert upload['parent_commit'] == api.head
    assert api.calls[1] == ('create_repo', dict(repo_id=REPO_ID, private=True, exist_ok=True))


def test_push_to_unreachable_endpoint_fails_in_one_line(staged: Path, tmp_path: Path) -> None:
    before = snapshot(staged)
    env = {**os.environ, 'HF_ENDPOINT': 'http://127.0.0.1:9', 'HF_TOKEN': 'hf_not_a_real_token',
           'HF_HUB_OFFLINE': '0', 'HF_HUB_DISABLE_TELEMETRY': '1', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run(
        [sys.executable, '-m', 'hub_upload', 'push', str(staged), '--repo-id', REPO_ID],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: push of') and '127.0.0.1:9' in lines[0], result.stderr
    assert 'ConnectError' in lines[0] or 'Connection refused' in lines[0], lines[0]
    assert snapshot(staged) == before


def test_batch_continues_past_a_bad_hash_and_reports_it(
        small: SmallCheckpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    named = tmp_path / 'sources' / f'hrnet-w18-small_mm_20220120-{sha256(small.mmpretrain_pth)[:8]}.pth'
    named.parent.mkdir()
    named.write_bytes(small.mmpretrain_pth.read_bytes())
    manifest = write_manifest(tmp_path / 'manifest.toml', [
        dict(url=named.as_uri(), model=SMALL_MODEL, repo='small_from_name_hash'),
        dict(url=small.canonical_pth.as_uri(), model=SMALL_MODEL, repo='small_bad_hash', sha256='0' * 64),
        dict(url=small.canonical_safetensors.as_uri(), model=SMALL_MODEL, repo='small_full_hash',
             sha256=sha256(small.canonical_safetensors), top1=70.0, top5=89.0),
    ])
    out_root, cache = tmp_path / 'out', tmp_path / 'cache'
    code = main(['batch', str(manifest), '--out-root', str(out_root), '--cache-dir', str(cache), '--image-size', '64'])
    output = capsys.readouterr().out
    assert code == 1
    summary = output[output.index('source  '):]
    assert '2 ok, 1 failed' in summary
    bad_row = next(line for line in summary.splitlines() if 'small_bad_hash' in line)
    assert 'FAILED' in bad_row and 'HashMismatchError' in bad_row and '0' * 64 in bad_row
    assert sorted(p.name for p in out_root.iterdir()) == ['small_from_name_hash', 'small_full_hash']
    assert ModelCard.load(out_root / 'small_full_hash' / 'README.md').data.eval_results[0].metric_value == 70.0
    assert not list(cache.rglob(small.canonical_pth.name)) and not list(cache.rglob('*.part'))
    # a rerun finds the verified repos in place and only the bad source fails again
    assert main(['batch', str(manifest), '--out-root', str(out_root), '--cache-dir', str(cache)]) == 1
    assert capsys.readouterr().out.count('already staged') == 2


def test_fetch_resumes_a_partial_download_with_a_range_request(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    digest = hashlib.sha256(payload).hexdigest()
    with serve(payload) as server:
        base = server.url
        url = f'{base}/weights_20220120-{digest[:8]}.pth'
        partial = cache_entry(tmp_path, url).with_name(Path(url).name + '.part')
        partial.parent.mkdir(parents=True)
        partial.write_bytes(payload[:1_000_000])
        fetched = fetch(url, digest, tmp_path, allow_http=True)
        assert fetched.path.read_bytes() == payload and not partial.exists() and fetched.verified == 'full'
        with pytest.raises(HashMismatchError, match='does not match the expected deadbeef'):
            fetch(url.replace('.pth', '_copy.pth'), 'deadbeef', tmp_path, allow_http=True)
        assert not list(tmp_path.rglob('*_copy.pth*'))
        assert fetch(url, None, tmp_path, allow_http=True).path == fetched.path  # downloaded once, then cached


def test_shipped_manifest_lists_the_nine_mmpretrain_checkpoints() -> None:
    entries = load_manifest(MANIFEST_DIR / 'mmpretrain_hrnet.toml')
    assert len(entries) == 9 and len({e.repo_id for e in entries}) == 9
    by_name = {e.display_name: e for e in entries}
    w18 = by_name['hrnet-w18_3rdparty_8xb32_in1k']
    assert w18.url == ('https://download.openmmlab.com/mmclassification/v0/hrnet/'
                       'hrnet-w18_3rdparty_8xb32_in1k_20220120-0c10b180.pth')
    assert (w18.model, w18.expected_sha256, w18.top1, w18.top5, w18.params, w18.flops) == (
        'hrnet_w18', '0c10b180', 76.75, 93.44, 21295164, 4330397932)
    ssld = by_name['hrnet-w48_3rdparty_8xb32-ssld_in1k']
    assert (ssld.model, ssld.expected_sha256, ssld.top1, ssld.top5) == ('hrnet_w48_ssld', 'd0459c38', 83.63, 96.79)
    assert {e.model for e in entries} == {'hrnet_w18', 'hrnet_w30', 'hrnet_w32', 'hrnet_w40', 'hrnet_w44',
                                          'hrnet_w48', 'hrnet_w64', 'hrnet_w18_ssld', 'hrnet_w48_ssld'}
    assert all(timm.is_model(e.model) and e.source == 'mmpretrain' and e.license == 'apache-2.0' for e in entries)
    assert all((e.interpolation, e.crop_pct, tuple(e.input_size)) == ('bilinear', 0.875, (3, 224, 224))
               for e in entries)


def test_names_spelled_out_for_a_light_cli_match_the_originals() -> None:
    from timm.data.transforms import _str_to_pil_interpolation

    from hub_upload.__main__ import MIN_INPUT_SIZE
    from hub_upload.names import INTERPOLATIONS
    from timm_hrnet.hrnet import MIN_INPUT_SIZE as MODEL_MIN_INPUT_SIZE

    assert set(SOURCES) == {'auto', *LAYOUT_NAMES}
    assert set(INTERPOLATIONS) == set(_str_to_pil_interpolation) and MIN_INPUT_SIZE == MODEL_MIN_INPUT_SIZE


def test_manifest_unknown_keys_get_suggestions(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / 'typo.toml', [dict(url='x.pth', model=SMALL_MODEL, repo='r', sha265='00')])
    with pytest.raises(ValueError, match="unknown key.*'sha265' \\(did you mean 'sha256'\\?\\)"):
        load_manifest(manifest)


def test_convert_cli_writes_the_tags_registered_preprocessing_and_options_override_it(
        small: SmallCheckpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'tagged'
    assert main(['convert', str(small.canonical_pth), '--model', f'{SMALL_MODEL}.gluon_in1k', '--out', str(out),
                 '--image-size', '32']) == 0, capsys.readouterr().err
    cfg = json.loads((out / 'config.json').read_text())['pretrained_cfg']
    assert (cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == ([3, 224, 224], 0.875, 'bicubic')
    assert "timm_hrnet's pretrained cfg of hrnet_w18_small.gluon_in1k" in capsys.readouterr().out

    out = tmp_path / 'overridden'
    assert main(['convert', str(small.canonical_pth), '--model', f'{SMALL_MODEL}.gluon_in1k', '--out', str(out),
                 '--image-size', '32', '--input-size', '256', '--interpolation', 'bilinear', '--crop-pct', '0.9',
                 '--test-input-size', '320', '--test-crop-pct', '0.95']) == 0, capsys.readouterr().err
    config = json.loads((out / 'config.json').read_text())
    cfg = config['pretrained_cfg']
    assert config['architecture'] == SMALL_MODEL
    assert (cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == ([3, 256, 256], 0.9, 'bilinear')
    assert (cfg['test_input_size'], cfg['test_crop_pct']) == ([3, 320, 320], 0.95)
    assert cfg.get('pool_size') is None  # the registered (7, 7) belongs to 224
    card = (out / 'README.md').read_text()
    assert '(at 256x256)' in card and 'published accuracy measured at 320 with crop_pct 0.95' in card
    assert main(['convert', str(small.canonical_pth), '--model', f'{SMALL_MODEL}.bogus', '--out',
                 str(tmp_path / 'x')]) == 2
    assert 'Invalid pretrained tag (bogus)' in capsys.readouterr().err and not (tmp_path / 'x').exists()


def test_verify_names_a_missing_config_field(staged: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    broken = tmp_path / 'broken'
    broken.mkdir()
    for path in staged.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    config = json.loads((broken / 'config.json').read_text())
    del config['architecture']
    (broken / 'config.json').write_text(json.dumps(config))
    assert main(['verify', str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and "no 'architecture' field" in err[0], err

    def raise_key_error(*args, **kwargs):
        raise KeyError('num_features')

    monkeypatch.setattr(hub_upload.verify, 'verify_dir', raise_key_error)
    assert main(['verify', str(staged)]) == 2
    assert capsys.readouterr().err.strip() == "error: missing field 'num_features'"


def test_relative_manifest_paths_resolve_next_to_the_manifest_once(
        small: SmallCheckpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'x.pth').write_bytes(small.canonical_pth.read_bytes())
    write_manifest(tmp_path / 'sub' / 'm.toml', [
        dict(file='x.pth', model='hrnet_w18_ssld', repo='from_file', sha256='0' * 64),
        dict(url='x.pth', model='hrnet_w18_ssld', repo='from_url', sha256='0' * 64, crop_pct=0.9),
    ])
    monkeypatch.chdir(tmp_path)
    from_file, from_url = load_manifest('sub/m.toml')
    assert from_file.url == from_url.url == str(tmp_path / 'sub' / 'x.pth')
    assert Path(from_file.url).is_file()
    # what an entry states overrides the source's preprocessing; what it leaves out is None
    assert set(from_file.preprocessing_overrides().values()) == {None}
    assert from_url.preprocessing_overrides()['crop_pct'] == 0.9


def test_batch_hashes_each_checkpoint_once(
        small: SmallCheckpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = []

    def counting_sha256(path) -> str:
        hashed.append(Path(path).name)
        return sha256(Path(path))

    monkeypatch.setattr(timm_hrnet.download, 'file_sha256', counting_sha256)
    manifest = write_manifest(tmp_path / 'one.toml', [
        dict(url=str(small.canonical_pth), model=SMALL_MODEL, repo='once', sha256=sha256(small.canonical_pth))])
    outcomes = hub_upload.batch.run_batch(manifest, tmp_path / 'out', tmp_path / 'cache', verify_image_size=32,
                                          log=lambda line: None)
    assert [o.ok for o in outcomes] == [True], outcomes
    assert hashed == [small.canonical_pth.name]
    metadata = hub_upload.verify.read_weights_metadata(tmp_path / 'out' / 'once' / 'model.safetensors')
    assert metadata['source_sha256'] == sha256(small.canonical_pth) and metadata['source_sha256_check'] == 'full'
