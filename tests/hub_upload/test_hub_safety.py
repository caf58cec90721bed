"""hub_upload touches only what it made: --force rules, the source is sacred, atomic replacement, names, flags, one
run at a time per output (the lock, raced by real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_common import leftovers, sha256, snapshot, write_manifest
from small_checkpoints import SMALL_MODEL, SmallCheckpoints

import hub_upload.batch
import hub_upload.safety
from hub_upload.__main__ import main
from hub_upload.batch import load_manifest
from hub_upload.lock import lock_path, target_lock
from hub_upload.safety import check_target
from hub_upload.stage import convert_to_dir

pytestmark = pytest.mark.usefixtures('single_torch_thread')
REPO_ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO_ROOT)}


@pytest.fixture
def staged(small: SmallCheckpoints, tmp_path: Path) -> Path:
    return convert_to_dir(small.canonical_pth, SMALL_MODEL, tmp_path / 'repo', verify_image_size=32).out_dir


def _convert(source: Path, out: Path, *extra: str) -> list[str]:
    return ['convert', str(source), '--model', SMALL_MODEL, '--out', str(out), '--image-size', '32', *extra]


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


def test_force_refuses_a_directory_hub_upload_did_not_make(
        small: SmallCheckpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    project = tmp_path / 'myproject'
    (project / 'src').mkdir(parents=True)
    (project / 'notes.md').write_text('my work')
    (project / 'src' / 'train.py').write_text('print(1)')
    before = snapshot(project)
    assert main(_convert(small.canonical_pth, project, '--force')) == 2
    assert 'was not staged by hub_upload' in _one_line_error(capsys)
    assert snapshot(project) == before and not leftovers(tmp_path)


def test_the_source_is_never_the_output(small: SmallCheckpoints, tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / 'ck.pth'
    checkpoint.write_bytes(small.canonical_pth.read_bytes())
    digest = sha256(checkpoint)
    assert main(_convert(checkpoint, checkpoint, '--force')) == 2
    assert 'is the source checkpoint' in _one_line_error(capsys)
    assert main(_convert(checkpoint, tmp_path, '--force')) == 2  # a directory holding the source
    assert 'holds the source checkpoint' in _one_line_error(capsys)
    assert sha256(checkpoint) == digest and sorted(p.name for p in tmp_path.iterdir()) == ['ck.pth']


def test_force_refuses_its_own_repo_once_changed_or_holding_the_source(
        staged: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = staged / 'model.safetensors'
    assert main(_convert(weights, staged, '--force')) == 2
    assert 'holds the source checkpoint' in _one_line_error(capsys)
    assert main(_convert(weights, tmp_path / 'other')) == 0  # reading from a staged repo is fine
    capsys.readouterr()
    other_weights = tmp_path / 'other' / 'model.safetensors'
    (staged / 'notes.txt').write_text('added by hand')
    assert main(_convert(other_weights, staged, '--force')) == 2
    assert 'holds files hub_upload did not write (notes.txt)' in _one_line_error(capsys)
    (staged / 'notes.txt').unlink()
    (staged / 'README.md').write_text('edited by hand')
    before = snapshot(staged)
    assert main(_convert(other_weights, staged, '--force')) == 2
    assert 'files changed since hub_upload wrote them (README.md)' in _one_line_error(capsys)
    assert snapshot(staged) == before


def test_replacement_puts_the_old_repo_back_when_the_final_rename_fails(
        staged: Path, small: SmallCheckpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(staged)
    renames = []
    real_rename = hub_upload.safety._rename

    def failing_second_rename(source: Path, destination: Path) -> None:
        renames.append((source.name, destination.name))
        if len(renames) == 2:
            raise OSError('simulated failure of the final rename')
        real_rename(source, destination)

    monkeypatch.setattr(hub_upload.safety, '_rename', failing_second_rename)
    with pytest.raises(OSError, match='simulated failure'):
        convert_to_dir(small.mmpretrain_pth, SMALL_MODEL, staged, force=True, verify_image_size=32)
    assert [destination for _, destination in renames] == ['repo'] * 3  # aside, in (failing), back
    assert snapshot(staged) == before and not leftovers(staged.parent)


@pytest.mark.parametrize('repo, problem', [
    ('someone/', "invalid repo name ''"),
    ('../evil', "invalid repo owner '..'"),
    ('a/b/c', 'expected ORG/NAME'),
    ('..', "invalid repo name '..'"),
    ('.hidden', "invalid repo name '.hidden'"),
])
def test_bad_repo_names_stop_the_manifest_before_anything_runs(
        small: SmallCheckpoints, tmp_path: Path, repo: str, problem: str) -> None:
    manifest = write_manifest(tmp_path / 'm.toml', [
        dict(url=str(small.canonical_pth), model=SMALL_MODEL, repo='good', sha256=sha256(small.canonical_pth)),
        dict(url=str(small.canonical_pth), model=SMALL_MODEL, repo=repo, sha256=sha256(small.canonical_pth)),
    ])
    with pytest.raises(ValueError, match='checkpoint #2: ') as error:
        load_manifest(manifest)
    assert problem in str(error.value) and len(str(error.value).splitlines()) == 1


def test_manifest_entries_are_checked_as_a_whole(small: SmallCheckpoints, tmp_path: Path) -> None:
    common = dict(url=str(small.canonical_pth), sha256=sha256(small.canonical_pth))
    cases = [
        (dict(model='hrnet_w19', repo='a'), "unknown model 'hrnet_w19'"),
        (dict(model=SMALL_MODEL, repo='a', top1='76.7'), "top1 must be a number in [0, 100], got '76.7'"),
        (dict(model=SMALL_MODEL, repo='a', crop_pct=0), 'crop_pct must be a number'),
        (dict(model=SMALL_MODEL, repo='a', test_input_size=[288, 288]), 'test_input_size must be [channels'),
        (dict(model=SMALL_MODEL, repo='a', sha256='xyz'), "invalid sha256 'xyz'"),
    ]
    for index, (entry, problem) in enumerate(cases):
        manifest = write_manifest(tmp_path / f'm{index}.toml', [{**common, **entry}])
        with pytest.raises(ValueError, match='checkpoint #1: ') as error:
            load_manifest(manifest)
        assert problem in str(error.value), str(error.value)
    manifest = write_manifest(tmp_path / 'twice.toml', [{**common, 'model': SMALL_MODEL, 'repo': 'same'}] * 2)
    with pytest.raises(ValueError, match="checkpoint #2: repo name 'same' is already used by checkpoint #1"):
        load_manifest(manifest)


@pytest.mark.parametrize('args, problem', [
    (['push', 'dir', '--repo-id', 'someone/'], "invalid repo name ''"),
    (['convert', 'x.pth', '--model', SMALL_MODEL, '--out', 'o', '--repo-id', '../x'], "invalid repo owner '..'"),
    (['batch', 'm.toml', '--repo-owner', '..'], "invalid repo owner '..'"),
    (['batch', 'm.toml', '--overwrite-weights'], '--overwrite-weights needs --push'),
    (['convert', 'x.pth', '--model', SMALL_MODEL, '--out', 'o', '--crop-pct', '0'], 'expected a number in (0, 1]'),
    (['convert', 'x.pth', '--model', SMALL_MODEL, '--out', 'o', '--image-size', '16'], 'at least 32'),
    (['convert', 'x.pth', '--model', SMALL_MODEL, '--out', 'o', '--sha256', 'beef'], 'expected 64 hex digits'),
    (['push', 'dir', '--repo-id', 'a/b', '--force'], 'unrecognized arguments: --force'),
])
def test_bad_arguments_fail_at_parse_time(args: list[str], problem: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and problem in capsys.readouterr().err


def test_restaging_and_overwriting_hub_weights_are_separate_flags(
        small: SmallCheckpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out_root = tmp_path / 'out'
    (out_root / 'mine').mkdir(parents=True)
    (out_root / 'mine' / 'keep.txt').write_text('not hub_upload\'s')
    digest = sha256(small.canonical_pth)
    manifest = write_manifest(tmp_path / 'm.toml', [
        dict(url=str(small.canonical_pth), model=SMALL_MODEL, repo='staged', sha256=digest),
        dict(url=str(small.canonical_pth), model=SMALL_MODEL, repo='mine', sha256=digest),
    ])
    batch = ['batch', str(manifest), '--out-root', str(out_root), '--cache-dir', str(tmp_path / 'c'),
             '--image-size', '32']
    assert main(batch) == 1
    first = snapshot(out_root / 'staged')
    assert main([*batch, '--restage']) == 1
    summary = capsys.readouterr().out
    mine_row = [line for line in summary.splitlines() if 'someone/mine' in line][-1]
    assert 'FAILED' in mine_row and 'was not staged by hub_upload' in mine_row
    assert (out_root / 'mine' / 'keep.txt').read_text() == 'not hub_upload\'s'
    assert snapshot(out_root / 'staged').keys() == first.keys() and not leftovers(out_root)

    pushed = []
    monkeypatch.setattr(hub_upload.batch, 'push_dir', lambda *a, **k: pushed.append(k) or 'https://hub/commit')
    assert main([*batch, '--push']) == 1  # 'mine' still fails; 'staged' is pushed without restaging
    assert pushed == [dict(overwrite_weights=False, log=pushed[0]['log'])]
    assert 'already staged, pushed https://hub/commit' in capsys.readouterr().out
    assert main([*batch, '--push', '--overwrite-weights']) == 1
    assert pushed[-1]['overwrite_weights'] is True


def test_a_locked_output_is_refused_naming_the_target_and_the_holder(
        small: SmallCheckpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'deep' / 'repo'
    with target_lock(out) as lock:  # held through another open file: flock refuses it as it would another process
        assert lock == lock_path(out) and lock.is_file()
        assert main(_convert(small.canonical_pth, out)) == 2
        error = _one_line_error(capsys)
        assert f"'{out}' is being written by another hub_upload run (pid {os.getpid()}" in error and str(lock) in error
        assert lock.is_file() and not out.exists()
    assert not (tmp_path / 'deep').exists()  # made for the lock, empty, removed with it
    assert main(_convert(small.canonical_pth, out)) == 0 and not leftovers(out.parent)


def test_a_lock_left_by_a_killed_run_is_taken_over(
        small: SmallCheckpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'repo'
    program = ('import os, signal, sys\n'
               'from pathlib import Path\n'
               'from hub_upload.lock import target_lock\n'
               'held = target_lock(Path(sys.argv[1]))\n'
               'held.__enter__()\n'
               'os.kill(os.getpid(), signal.SIGKILL)\n')
    killed = subprocess.Popen([sys.executable, '-c', program, str(out)], env=ENV, stderr=subprocess.PIPE, text=True)
    _, err = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    dead = _pid_in(lock_path(out))  # the lock file is left behind, naming the killed run
    assert dead == killed.pid
    assert main(_convert(small.canonical_pth, out)) == 0
    assert f"took over the lock '{lock_path(out)}' of pid {dead}, which is no longer running" in capsys.readouterr().err
    assert not leftovers(tmp_path) and (out / 'model.safetensors').is_file()


def _pid_in(lock: Path) -> int:
    return json.loads(lock.read_text())['pid']


# each run, once it holds the lock, says so and waits for the test's go (or two minutes): the other run is then sure
# to reach the lock while it is held, whatever the two processes' start-up times
_RACER = """
import os, sys, time
from pathlib import Path

import hub_upload.stage as stage

held, go = Path(sys.argv[1]), Path(sys.argv[2])
real = stage.recover_interrupted


def inside_the_lock(out_dir, log):
    (held / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    real(out_dir, log)


stage.recover_interrupted = inside_the_lock
from hub_upload.__main__ import main

sys.exit(main(sys.argv[3:]))
"""


def test_two_converts_racing_for_one_output_one_wins_and_the_repo_is_whole(
        small: SmallCheckpoints, tmp_path: Path) -> None:
    out, held, go = tmp_path / 'out' / 'repo', tmp_path / 'held', tmp_path / 'go'
    held.mkdir()
    runs = [subprocess.Popen([sys.executable, '-c', _RACER, str(held), str(go), *_convert(small.canonical_pth, out)],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 240
        while all(run.poll() is None for run in runs) and time.monotonic() < deadline:
            time.sleep(0.1)  # until the run that did not get the lock gives up
        go.touch()
        results = [(run, *run.communicate(timeout=300)) for run in runs]
    finally:
        for run in runs:
            run.kill()
    codes = sorted(run.returncode for run, _, _ in results)
    assert codes == [0, 2], [(run.returncode, err[-2000:]) for run, _, err in results]
    (winner, _, _), = [r for r in results if r[0].returncode == 0]
    (loser, _, loser_err), = [r for r in results if r[0].returncode == 2]
    assert [p.name for p in held.iterdir()] == [str(winner.pid)]  # the lock was held by one run only
    errors = [line for line in loser_err.strip().splitlines() if not line.startswith('warning: ')]
    assert len(errors) == 1 and errors[0].startswith(f"error: '{out}' is being written by another hub_upload run "
                                                     f'(pid {winner.pid}'), errors
    # the repo is whole: exactly the files hub_upload recorded, unchanged, and it loads and verifies
    assert sorted(p.name for p in out.iterdir()) == ['.hub_upload.json', 'README.md', 'config.json',
                                                     'model.safetensors']
    check_target(out, force=True)
    assert main(['verify', str(out), '--against', str(small.canonical_pth), '--image-size', '32']) == 0
    assert not leftovers(out.parent)
