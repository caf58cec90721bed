"""Faults: an interrupted download, a kill mid-replacement, a full disk, truncated and empty checkpoints, a manifest
with a bad entry. After each: no partial repo at the output, nothing of the user's deleted, one error line naming
the file."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hub_common import leftovers, serve, sha256, snapshot, write_manifest
from huggingface_hub import ModelCard
from small_checkpoints import SMALL_MODEL, SmallCheckpoints
from task_reference import official_shapes, random_checkpoint, tiny_extra

import timm_hrnet.download
from hub_upload.__main__ import main
from hub_upload.stage import convert_to_dir
from timm_hrnet.tools.cli import main as cli_main

pytestmark = pytest.mark.usefixtures('single_torch_thread')
REPO_ROOT = Path(__file__).resolve().parents[2]


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith('warning: ')]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A user's directory with their own files next to where repos are written."""
    (tmp_path / 'notes.md').write_text('mine')
    (tmp_path / 'project').mkdir()
    (tmp_path / 'project' / 'train.py').write_text('print(1)')
    return tmp_path


def _users_files_intact(workspace: Path) -> None:
    assert (workspace / 'notes.md').read_text() == 'mine'
    assert (workspace / 'project' / 'train.py').read_text() == 'print(1)'


def test_an_interrupted_download_resumes(
        small: SmallCheckpoints, workspace: Path, capsys: pytest.CaptureFixture) -> None:
    payload = small.canonical_pth.read_bytes()
    out, cache = workspace / 'repo', workspace / 'cache'
    with serve(payload, cut_after=len(payload) // 2) as server:
        url = f'{server.url}/hrnet_w18_small.pth'
        convert = ['convert', url, '--model', SMALL_MODEL, '--out', str(out), '--allow-http', '--cache-dir', str(cache),
                   '--sha256', hashlib.sha256(payload).hexdigest(), '--image-size', '32']
        assert main(convert) == 2
        error = _error_line(capsys)
        assert url in error and ('interrupted after' in error or 'stopped at' in error) and 'resume' in error
        parts = list(cache.rglob('*.part'))
        arrived = parts[0].stat().st_size
        assert len(parts) == 1 and 0 < arrived < len(payload)
        assert not out.exists() and not leftovers(workspace)
        assert main(convert) == 0
        assert server.ranges == [None, f'bytes={arrived}-']
    assert not list(cache.rglob('*.part')) and (out / 'model.safetensors').is_file()
    _users_files_intact(workspace)


def test_a_full_disk_while_downloading_keeps_what_arrived(
        small: SmallCheckpoints, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = small.canonical_pth.read_bytes()

    class FullDisk:
        def __init__(self, file) -> None:
            self.file, self.room = file, len(payload) // 3

        def write(self, data: bytes) -> int:
            if len(data) > self.room:
                self.file.write(data[:self.room])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.file.write(data)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

    monkeypatch.setattr(timm_hrnet.download, 'open', lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    with serve(payload) as server:
        url = f'{server.url}/hrnet_w18_small.pth'
        with pytest.raises(timm_hrnet.download.DownloadError) as error:
            timm_hrnet.download.fetch(url, cache_dir=workspace / 'cache', allow_http=True)
        message = str(error.value)
        assert 'hrnet_w18_small.pth.part' in message and 'No space left on device' in message
        monkeypatch.undo()
        fetched = timm_hrnet.download.fetch(url, hashlib.sha256(payload).hexdigest(), workspace / 'cache',
                                            allow_http=True)
        assert fetched.verified == 'full' and server.ranges[-1] == f'bytes={len(payload) // 3}-'
    _users_files_intact(workspace)


def test_a_kill_between_staging_and_the_final_rename_loses_nothing(
        small: SmallCheckpoints, workspace: Path, capsys: pytest.CaptureFixture) -> None:
    out = workspace / 'repo'
    convert_to_dir(small.canonical_pth, SMALL_MODEL, out, verify_image_size=32)
    before = snapshot(out)
    # the old repo has been renamed aside and the new one not yet moved in when SIGKILL arrives
    program = (
        'import os, signal, sys\n'
        'import hub_upload.safety as safety\n'
        'real, calls = safety._rename, []\n'
        'def rename(source, destination):\n'
        '    calls.append(source)\n'
        '    if len(calls) == 2:\n'
        '        os.kill(os.getpid(), signal.SIGKILL)\n'
        '    real(source, destination)\n'
        'safety._rename = rename\n'
        'from hub_upload.__main__ import main\n'
        'sys.exit(main(sys.argv[1:]))\n'
    )
    args = ['convert', str(small.mmpretrain_pth), '--model', SMALL_MODEL, '--out', str(out), '--force',
            '--image-size', '32']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO_ROOT)}
    killed = subprocess.run([sys.executable, '-c', program, *args], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not out.exists()  # no partial repo at --out: the old one waits beside it, whole
    displaced = [p for p in workspace.iterdir() if p.name.endswith('.replaced')]
    assert len(displaced) == 1 and snapshot(displaced[0] / 'repo') == before
    _users_files_intact(workspace)

    # the next run on that output puts the old repo back (and removes the killed run's staging) before anything else
    assert main(['convert', str(small.mmpretrain_pth), '--model', SMALL_MODEL, '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert f"restored '{out}' from an interrupted replacement" in err and 'already exists' in err
    assert snapshot(out) == before and not leftovers(workspace)


def test_a_full_disk_while_staging_leaves_the_old_repo(
        small: SmallCheckpoints, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = workspace / 'repo'
    convert_to_dir(small.canonical_pth, SMALL_MODEL, out, verify_image_size=32)
    before = snapshot(out)
    real_save = safetensors.torch.save_file

    def save_until_full(tensors, filename, metadata=None) -> None:
        real_save(tensors, filename, metadata=metadata)
        with open(filename, 'r+b') as f:
            f.truncate(4096)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, 'save_file', save_until_full)
    assert main(['convert', str(small.mmpretrain_pth), '--model', SMALL_MODEL, '--out', str(out), '--force',
                 '--image-size', '32']) == 2
    error = _error_line(capsys)
    assert "model.safetensors': No space left on device; nothing was written to" in error
    assert snapshot(out) == before and not leftovers(workspace)
    _users_files_intact(workspace)


def _full_disk_saving_weights(real_save):
    def save(tensors, filename, metadata=None) -> None:
        real_save(tensors, filename, metadata=metadata)
        with open(filename, 'r+b') as f:
            f.truncate(4096)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save


def _full_disk_in_safetensors(real_save):
    """safetensors' own writer reports a full disk as SafetensorError, not OSError."""
    def save(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b'\0' * 4096)
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')
    return save


def _full_disk_writing_the_card(real_save):
    def save(card, filepath) -> None:
        Path(filepath).write_text(str(card)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save


@pytest.fixture(scope='module')
def task_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random official pose (named with its crop size, as released) and segmentation checkpoints."""
    folder = tmp_path_factory.mktemp('task_sources')
    sources = dict(pose=folder / 'pose_hrnet_tiny_256x192.pth', seg=folder / 'seg_hrnet_tiny_cityscapes.pth')
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17)), sources['pose'])
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19)), sources['seg'])
    return sources


@pytest.mark.parametrize('task, fault, target, file_name, reason', [
    ('pose', _full_disk_saving_weights, safetensors.torch, 'save_file', 'model.safetensors'),
    ('seg', _full_disk_saving_weights, safetensors.torch, 'save_file', 'model.safetensors'),
    ('pose', _full_disk_in_safetensors, safetensors.torch, 'save_file', 'model.safetensors'),
    ('seg', _full_disk_writing_the_card, ModelCard, 'save', 'README.md'),
], ids=['pose-weights', 'seg-weights', 'pose-safetensors-error', 'seg-card'])
def test_a_full_disk_while_staging_a_task_repo_leaves_the_old_repo(
        task_sources: dict[str, Path], workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys, task: str, fault,
        target, file_name: str, reason: str) -> None:
    out = workspace / 'repo'
    convert = ['convert', str(task_sources[task]), '--out', str(out), '--image-size', '64']
    assert main(convert) == 0
    before = snapshot(out)
    capsys.readouterr()
    monkeypatch.setattr(target, file_name, fault(getattr(target, file_name)))
    assert main([*convert, '--force', '--license', 'apache-2.0']) == 2
    error = _error_line(capsys)
    assert f"cannot write '{workspace}" in error and f"{reason}': " in error and 'No space left on device' in error
    assert f"nothing was written to '{out}'" in error
    assert snapshot(out) == before and not leftovers(workspace)
    _users_files_intact(workspace)


@pytest.mark.parametrize('damage, problem', [
    (lambda data: data[:len(data) // 2], 'is truncated'),
    (lambda data: b'', 'is empty (0 bytes)'),
])
@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_and_empty_checkpoints_are_named_in_one_line(
        small: SmallCheckpoints, workspace: Path, capsys, damage, problem: str, suffix: str) -> None:
    source = small.canonical_pth if suffix == '.pth' else small.canonical_safetensors
    broken = workspace / f'broken{suffix}'
    broken.write_bytes(damage(source.read_bytes()))
    kept = broken.read_bytes()
    out = workspace / 'repo'
    assert main(['convert', str(broken), '--model', SMALL_MODEL, '--out', str(out)]) == 2
    error = _error_line(capsys)
    assert str(broken) in error and (problem in error or suffix == '.safetensors' and 'not a readable' in error)
    assert cli_main(['predict', str(REPO_ROOT / 'demo' / 'traffic_light.png'), '--model', SMALL_MODEL,
                     '--checkpoint', str(broken), '--device', 'cpu']) == 2
    assert str(broken) in _error_line(capsys)
    assert not out.exists() and broken.read_bytes() == kept and not leftovers(workspace)
    _users_files_intact(workspace)


def test_a_manifest_with_a_bad_entry_among_good_ones(
        small: SmallCheckpoints, workspace: Path, capsys: pytest.CaptureFixture) -> None:
    truncated = workspace / 'truncated.pth'
    truncated.write_bytes(small.canonical_pth.read_bytes()[:5000])
    good = dict(url=str(small.canonical_pth), model=SMALL_MODEL, sha256=sha256(small.canonical_pth))
    out_root, cache = workspace / 'out', workspace / 'cache'
    batch = ['batch', '--out-root', str(out_root), '--cache-dir', str(cache), '--image-size', '32']

    invalid = write_manifest(workspace / 'invalid.toml', [{**good, 'repo': 'a'}, {**good, 'repo': '../escape'},
                                                          {**good, 'repo': 'c'}])
    assert main([batch[0], str(invalid), *batch[1:]]) == 2  # checked as a whole: nothing runs
    error = _error_line(capsys)
    assert str(invalid) in error and 'checkpoint #2' in error and "'..'" in error
    assert not out_root.exists() and not cache.exists()

    mixed = write_manifest(workspace / 'mixed.toml', [
        {**good, 'repo': 'first'},
        dict(url=str(truncated), model=SMALL_MODEL, sha256=sha256(truncated), repo='broken'),
        {**good, 'repo': 'last'},
    ])
    assert main([batch[0], str(mixed), *batch[1:]]) == 1
    summary = capsys.readouterr().out
    broken_row = [line for line in summary.splitlines() if 'someone/broken' in line][-1]
    assert 'FAILED' in broken_row and str(truncated) in broken_row and 'is truncated' in broken_row
    assert sorted(p.name for p in out_root.iterdir()) == ['first', 'last'] and '2 ok, 1 failed' in summary
    _users_files_intact(workspace)
