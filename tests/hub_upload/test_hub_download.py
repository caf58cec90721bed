"""Checkpoint URLs everywhere (timm-hrnet --checkpoint, hub_upload convert / batch): https only unless asked, one
verified download into the cache, a hash prefix identifies but does not authenticate; push pins what it checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from hub_common import FakeHfApi, serve, sha256, write_manifest
from PIL import Image
from small_checkpoints import SMALL_MODEL, SmallCheckpoints

import hub_upload.batch
import hub_upload.push
from hub_upload.__main__ import main as hub_main
from hub_upload.push import PushError, PushRefusedError, push_dir
from timm_hrnet.download import DownloadError, fetch, hash_from_name
from timm_hrnet.tools.cli import main as cli_main

pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.mark.parametrize('name, expected', [
    ('hrnet-w18_3rdparty_8xb32_in1k_20220120-0c10b180.pth', '0c10b180'),
    ('resnet18-f37072fd.pth', 'f37072fd'),
    (f'weights-{"ab" * 32}.safetensors', 'ab' * 32),
    ('hrnet_w18-20220120.pth', None),  # a date, not a hash
    ('hrnet_w18-deadbee.pth', None),  # 7 digits: too short to mean anything
    ('hrnet_w18.pth', None),
])
def test_the_hash_in_a_torch_hub_style_name(name: str, expected: str | None) -> None:
    assert hash_from_name(name) == expected


def test_plain_http_needs_a_flag_and_other_schemes_are_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match='refusing plain http:// download .* pass --allow-http'):
        fetch('http://127.0.0.1:9/w-deadbeef.pth', cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        fetch('ftp://127.0.0.1/w-deadbeef.pth', cache_dir=tmp_path)
    with pytest.raises(DownloadError, match='cannot download https://127.0.0.1:9/w-deadbeef.pth'):
        fetch('https://127.0.0.1:9/w-deadbeef.pth', cache_dir=tmp_path)  # https is taken; nothing listens there
    assert hub_main(['convert', 'http://127.0.0.1:9/w-deadbeef.pth', '--model', SMALL_MODEL, '--out',
                     str(tmp_path / 'out'), '--cache-dir', str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'refusing plain http://' in err[0]


def test_a_prefix_identifies_a_download_but_is_reported_as_such(tmp_path: Path) -> None:
    payload = b'not really a checkpoint, but hashed all the same' * 100
    digest = hashlib.sha256(payload).hexdigest()
    warnings: list[str] = []
    with serve(payload) as server:
        base = server.url
        by_prefix = fetch(f'{base}/w-{digest[:8]}.pth', cache_dir=tmp_path, allow_http=True, log=warnings.append)
        assert by_prefix.verified == 'prefix' and by_prefix.sha256 == digest
        assert len(warnings) == 1 and f'only the 8-hex-digit sha256 prefix {digest[:8]} (32 bits)' in warnings[0]
        assert digest in warnings[0]
        full = fetch(f'{base}/w.pth', digest, cache_dir=tmp_path, allow_http=True, log=warnings.append)
        assert full.verified == 'full' and len(warnings) == 1
        with pytest.raises(ValueError, match='no sha256 to check it against'):
            fetch(f'{base}/other.pth', cache_dir=tmp_path, allow_http=True, require_hash=True)
        unchecked = fetch(f'{base}/other.pth', cache_dir=tmp_path, allow_http=True, log=warnings.append)
        assert unchecked.verified == 'unchecked' and 'has no sha256 to be checked against' in warnings[-1]


@pytest.fixture(scope='module')
def three_class_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp('ck') / 'c.pth'
    torch.manual_seed(0)
    torch.save(timm.create_model(SMALL_MODEL, num_classes=3).state_dict(), path)
    return path.read_bytes()


def test_predict_and_validate_take_a_checkpoint_url_downloaded_once(
        three_class_checkpoint: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    for label in ('a', 'b'):
        (tmp_path / 'data' / label).mkdir(parents=True)
        Image.fromarray(np.full((40, 40, 3), 60 if label == 'a' else 200, np.uint8)).save(
            tmp_path / 'data' / label / 'x.png')
    image = str(tmp_path / 'data' / 'a' / 'x.png')
    common = ['--model', SMALL_MODEL, '--img-size', '32', '--device', 'cpu']
    digest = hashlib.sha256(three_class_checkpoint).hexdigest()
    with serve(three_class_checkpoint) as server:
        base = server.url
        url = f'{base}/hrnet_w18_small_3cls-{digest[:8]}.pth'
        assert cli_main(['predict', image, '--checkpoint', url, *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'refusing plain http://' in err[0], err
        assert cli_main(['predict', image, '--checkpoint', url, '--allow-http', '--json', *common]) == 0
        assert len(json.loads(capsys.readouterr().out)[0]['topk']) == 3
        results = tmp_path / 'results.json'
        assert cli_main(['validate', '--data-dir', str(tmp_path / 'data'), '--checkpoint', url, '--allow-http',
                         '--workers', '0', '--results-file', str(results), *common]) == 0
    assert server.ranges == [None]  # one download, then the cache
    assert json.loads(results.read_text())['num_images'] == 2


def test_convert_takes_a_url_and_records_it(small: SmallCheckpoints, tmp_path: Path, capsys) -> None:
    payload = small.canonical_pth.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    out = tmp_path / 'repo'
    with serve(payload) as server:
        base = server.url
        url = f'{base}/hrnet_w18_small.pth'
        convert = ['convert', url, '--model', SMALL_MODEL, '--out', str(out), '--allow-http', '--cache-dir',
                   str(tmp_path / 'cache'), '--image-size', '32']
        assert hub_main(convert) == 2  # nothing to check the download against
        assert 'no sha256 to check it against' in capsys.readouterr().err
        assert hub_main([*convert, '--sha256', digest]) == 0
        assert hub_main(['verify', str(out), '--against', url, '--allow-http', '--cache-dir', str(tmp_path / 'cache'),
                         '--image-size', '32']) == 0
    metadata = hub_upload.push.read_weights_metadata(out / 'model.safetensors')
    assert (metadata['source_url'], metadata['source_sha256'], metadata['source_sha256_check']) == (url, digest, 'full')
    assert f'[hrnet_w18_small.pth]({url})' in (out / 'README.md').read_text()


def _fake_repo(directory: Path, check: str) -> Path:
    """What push reads of a staged repo: its files and the weights' provenance metadata."""
    directory.mkdir()
    safetensors.torch.save_file({'w': torch.zeros(1)}, directory / 'model.safetensors',
                                metadata={'source_file': 'w-0c10b180.pth', 'source_sha256': '0c10b180' + '0' * 56,
                                          'source_sha256_check': check})
    (directory / 'config.json').write_text('{}')
    (directory / 'README.md').write_text("timm.create_model('hf-hub:someone/repo')")
    return directory


def test_push_refuses_a_source_identified_only_by_a_prefix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hub_upload.push, 'HfApi', lambda *a, **k: pytest.fail('refused before any request'))
    repo = _fake_repo(tmp_path / 'repo', 'prefix')
    with pytest.raises(PushRefusedError, match='checked only against a sha256 prefix; publishing needs its full'):
        push_dir(repo, 'someone/repo', dry_run=True)


def test_push_pins_the_commit_it_checked_and_fails_clearly_on_a_race(tmp_path: Path, monkeypatch) -> None:
    repo = _fake_repo(tmp_path / 'repo', 'full')
    api = FakeHfApi(['README.md'], race=True)
    monkeypatch.setattr(hub_upload.push, 'HfApi', api)
    with pytest.raises(PushError, match=r'changed while pushing \(it was at aaaaaaaaaaaa .*nothing was uploaded'):
        push_dir(repo, 'someone/repo')
    assert api.calls[-1][1]['parent_commit'] == 'a' * 40
    api = FakeHfApi(['README.md'])
    monkeypatch.setattr(hub_upload.push, 'HfApi', api)
    assert push_dir(repo, 'someone/repo') == 'https://hub/someone/repo/commit/1'


def test_private_on_an_existing_public_repo_is_an_error(tmp_path: Path, monkeypatch) -> None:
    repo = _fake_repo(tmp_path / 'repo', 'unchecked')
    public = FakeHfApi([], private=False)
    monkeypatch.setattr(hub_upload.push, 'HfApi', public)
    with pytest.raises(PushRefusedError, match='exists and is public; --private does not change that'):
        push_dir(repo, 'someone/repo', private=True)
    assert [name for name, _ in public.calls] == ['create_repo']
    new = FakeHfApi([], exists=False)
    monkeypatch.setattr(hub_upload.push, 'HfApi', new)
    assert push_dir(repo, 'someone/repo', private=True) and new.private


def test_batch_push_needs_full_hashes_before_anything_is_staged(
        small: SmallCheckpoints, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(hub_upload.batch, 'push_dir', lambda *a, **k: pytest.fail('nothing may be pushed'))
    named = tmp_path / f'small-{sha256(small.canonical_pth)[:8]}.pth'
    named.write_bytes(small.canonical_pth.read_bytes())
    manifest = write_manifest(tmp_path / 'm.toml', [dict(url=named.as_uri(), model=SMALL_MODEL, repo='r')])
    assert hub_main(['batch', str(manifest), '--out-root', str(tmp_path / 'out'), '--cache-dir',
                     str(tmp_path / 'cache'), '--push']) == 1
    output = capsys.readouterr().out
    assert 'publishing needs the full sha256' in output and sha256(small.canonical_pth) in output
    assert not (tmp_path / 'out').exists()
